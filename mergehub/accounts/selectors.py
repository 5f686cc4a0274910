"""Reads for teams and memberships. Everything the web app shows is scoped through these."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from .models import Membership, Team, role_at_least


def teams_for(user) -> QuerySet[Team]:
    """The teams ``user`` belongs to (none for anonymous users)."""
    if not getattr(user, "is_authenticated", False):
        return Team.objects.none()
    return Team.objects.filter(memberships__user=user).distinct()


def membership_for(*, user, team: Team) -> Membership | None:
    if not getattr(user, "is_authenticated", False):
        return None
    return Membership.objects.filter(user=user, team=team).first()


def has_role(*, user, team: Team, role: str) -> bool:
    """True when ``user`` is a member of ``team`` with at least ``role`` (viewer < member < admin)."""
    membership = membership_for(user=user, team=team)
    return membership is not None and role_at_least(membership.role, role)


def get_team_for(*, user, slug: str) -> Team:
    """The team with ``slug`` if ``user`` belongs to it; Http404 otherwise (existence is not leaked)."""
    team = teams_for(user).filter(slug=slug).first()
    if team is None:
        raise Http404("No such team.")
    return team


def members_of(*, user, team: Team) -> QuerySet[Membership]:
    """The memberships of ``team``, visible to its own members only."""
    if membership_for(user=user, team=team) is None:
        raise Http404("No such team.")
    return Membership.objects.filter(team=team).select_related("user")
