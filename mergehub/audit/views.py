"""A team's audit log page, for its admins. Thin: the reads are in selectors.py."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from mergehub.accounts.selectors import get_team_for
from mergehub.ui.pagination import paginate

from . import selectors
from .models import AuditEvent

FILTER_MAX_CHARS = 150  # an actor name is at most this long


@login_required
def audit_log(request, slug):
    """The team's events, newest first; ``?action=`` and ``?actor=`` filter them. Another team's
    log is a 404 (get_team_for), a non-admin member's a 403 (the selector)."""
    team = get_team_for(user=request.user, slug=slug)
    action = request.GET.get("action", "")
    if action not in AuditEvent.Action.values:
        action = ""  # a stale or hand-edited filter shows everything rather than failing
    actor = request.GET.get("actor", "").strip()[:FILTER_MAX_CHARS]
    events = selectors.audit_events_for(user=request.user, team=team, action=action, actor=actor)
    filters = {"action": action, "actor": actor}
    pages = paginate(request, events, filters=filters)
    return render(request, "audit/log.html", {
        "team": team, "events": pages["page_obj"], **pages, "filters": filters,
        "actions": AuditEvent.Action.choices, "actors": selectors.actor_names_in(team=team)})
