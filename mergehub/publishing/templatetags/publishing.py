"""The run report's "Get the model" panel: {% load publishing %}{% publishing_panel run request.user %}."""

from __future__ import annotations

from django import template

from .. import selectors

register = template.Library()


@register.inclusion_tag("publishing/_panel.html", takes_context=True)
def publishing_panel(context, run, user):
    """The run's published files with their downloads, the push form and the push history (the
    report's view has checked that ``user`` may see ``run``)."""
    return {"run": run, **selectors.panel(run=run, user=user), "csrf_token": context.get("csrf_token")}
