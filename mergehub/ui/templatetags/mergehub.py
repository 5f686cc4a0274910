"""Template filters: {% load mergehub %} then {{ n|bytes }}, {{ s|seconds }}, {{ a|percent_of:b }}."""

from django import template

from ..formatting import human_bytes, human_seconds, percent

register = template.Library()


# A variable missing from the context reaches a filter as "" (Django's string_if_invalid): a
# report whose metrics lack a figure shows "—" for it.

@register.filter(name="bytes")
def bytes_filter(value):
    return human_bytes(None if value == "" else value)


@register.filter(name="seconds")
def seconds_filter(value):
    return human_seconds(None if value == "" else value)


@register.filter(name="percent_of")
def percent_of(part, whole):
    return percent(part, whole)


@register.filter(name="get")
def get_item(mapping, key):
    """{{ dict|get:key }} for keys that are not valid template identifiers."""
    try:
        return mapping.get(key)
    except AttributeError:
        return None


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
