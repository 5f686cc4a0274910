"""``{% review_panel run state %}``: a run report's review section (``state``, optional: the run's
review state, when the page has read it); ``{{ text|markdown }}``: a comment
rendered safely (mergehub/reviews/markdown.py); ``{% review_badge state %}``: a state's badge;
``{% awaiting_review_notice team %}``: the dashboard's count of runs awaiting the user's review."""

from django import template

from .. import markdown as markdown_rendering
from ..models import ReviewState
from ..selectors import awaiting_review
from ..selectors import review_panel as panel_of

register = template.Library()


@register.inclusion_tag("reviews/_panel.html", takes_context=True)
def review_panel(context, run, state=None):
    request = context["request"]
    # a comment refused by the service comes back in the box (views.review keeps it)
    draft = request.session.pop("review_draft", "") if hasattr(request, "session") else ""
    return {**panel_of(user=request.user, run=run, state=state), "run": run, "draft": draft,
            "csrf_token": context.get("csrf_token"), "user": request.user}


@register.inclusion_tag("reviews/_awaiting.html", takes_context=True)
def awaiting_review_notice(context, team):
    """The dashboard's line "N runs await review" (nothing when none do)."""
    return {"count": awaiting_review(user=context["request"].user, team=team)}


@register.inclusion_tag("reviews/_badge.html")
def review_badge(state):
    state = state or ReviewState.NOT_REQUESTED.value
    return {"state": state, "label": ReviewState(state).label}


@register.filter
def markdown(text):
    return markdown_rendering.render(text)
