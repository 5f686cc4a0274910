"""Reads for the audit log: a team's events, for its admins only, newest first, filtered."""

from __future__ import annotations

from django.db.models import QuerySet

from mergehub.accounts.models import Role, Team
from mergehub.accounts.services import require_role

from .models import AuditEvent


def audit_events_for(*, user, team: Team, action: str | None = None, actor: str | None = None) -> QuerySet[AuditEvent]:
    """``team``'s events, newest first, for one of its admins (PermissionDenied for anyone else).
    ``action``: one ``AuditEvent.Action`` value; ``actor``: the name of who acted (as recorded,
    so a deleted account's events can still be found). An empty filter is no filter."""
    require_role(user=user, team=team, role=Role.ADMIN, action="read the audit log")
    events = AuditEvent.objects.filter(team=team)
    if action:
        events = events.filter(action=action)
    if actor:
        events = events.filter(actor_name=actor)
    return events.order_by("-created_at", "-pk")


def actor_names_in(*, team: Team) -> list[str]:
    """The names of everyone who acted in ``team``'s log, for the actor filter (callers check the role)."""
    return list(AuditEvent.objects.filter(team=team).order_by("actor_name")
                .values_list("actor_name", flat=True).distinct())
