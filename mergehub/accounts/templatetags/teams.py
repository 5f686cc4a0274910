"""{% load teams %} then {% team_switcher %}: the current team, and a switcher when the user
belongs to several (templates/accounts/_team_switcher.html)."""

from django import template

from ..current_team import current_team
from ..selectors import teams_for

register = template.Library()


@register.inclusion_tag("accounts/_team_switcher.html", takes_context=True)
def team_switcher(context):
    request = context["request"]
    return {"request": request, "teams": list(teams_for(request.user).order_by("name")),
            "current": current_team(request), "csrf_token": context.get("csrf_token")}
