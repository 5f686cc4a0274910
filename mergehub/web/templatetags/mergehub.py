"""Template filters: {% load mergehub %} then {{ n|bytes }}, {{ s|seconds }}, {{ a|percent_of:b }}."""

from django import template

from ..formatting import human_bytes, human_seconds, percent
from ..reports import base_only

register = template.Library()


@register.filter(name="bytes")
def bytes_filter(value):
    return human_bytes(value)


@register.filter(name="seconds")
def seconds_filter(value):
    return human_seconds(value)


@register.filter(name="percent_of")
def percent_of(part, whole):
    return percent(part, whole)


@register.filter(name="base_only_warning")
def base_only_warning(plan):
    """{{ plan|base_only_warning }}: why this plan's merge would equal the base, or None."""
    return base_only(plan)


@register.filter(name="get")
def get_item(mapping, key):
    """{{ dict|get:key }} for keys that are not valid template identifiers."""
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.inclusion_tag("web/_team_switcher.html", takes_context=True)
def team_switcher(context):
    """The current team, and a switcher when the user belongs to several."""
    from mergehub.accounts.selectors import teams_for

    from ..teams import current_team

    request = context["request"]
    return {"request": request, "teams": list(teams_for(request.user).order_by("name")),
            "current": current_team(request), "csrf_token": context.get("csrf_token")}


@register.filter(name="sig")
def significant(value, digits=4):
    """A float with ``digits`` significant digits ('—' for None)."""
    if value is None or value == "":
        return "—"
    try:
        return f"{float(value):.{int(digits)}g}"
    except (TypeError, ValueError):
        return str(value)


@register.filter(name="subtract")
def subtract(a, b):
    try:
        return a - b
    except TypeError:
        return None
