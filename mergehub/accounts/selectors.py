"""Reads for teams and memberships. Everything the web app shows is scoped through these."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Count, QuerySet
from django.http import Http404

from .models import Membership, Team, role_at_least


def teams_for(user) -> QuerySet[Team]:
    """The teams ``user`` belongs to (none for anonymous users)."""
    if not getattr(user, "is_authenticated", False):
        return Team.objects.none()
    return Team.objects.filter(memberships__user=user).distinct()


def memberships_of(*, user) -> QuerySet[Membership]:
    """``user``'s own memberships, by team name, each with its team's ``member_count`` (the teams page)."""
    if not getattr(user, "is_authenticated", False):
        return Membership.objects.none()
    return (Membership.objects.filter(user=user).select_related("team")
            .annotate(member_count=Count("team__memberships")).order_by("team__name"))


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


def get_membership(*, user, team: Team, pk: int) -> Membership:
    """Membership ``pk`` of ``team``, for one of the team's members; Http404 for anyone else and
    for a membership of another team (the same answer as for an id that was never used)."""
    membership = members_of(user=user, team=team).filter(pk=pk).first()
    if membership is None:
        raise Http404("No such team.")
    return membership


def users_matching(identifier: str) -> list:
    """The active accounts an invitation for ``identifier`` may mean: the one whose username it
    is (exactly); failing that, those whose email address it is (letter case aside). Several
    accounts may share an address, so the caller decides what several means."""
    identifier = (identifier or "").strip()
    if not identifier:
        return []
    users = get_user_model().objects.filter(is_active=True)
    by_name = users.filter(username=identifier).first()
    if by_name is not None:
        return [by_name]
    if "@" not in identifier:
        return []
    return list(users.filter(email__iexact=identifier).order_by("pk")[:2])
