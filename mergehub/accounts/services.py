"""Writes for teams and memberships."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from .models import ROLE_ORDER, Membership, Role, Team
from .selectors import has_role


def require_role(*, user, team: Team, role: str, action: str) -> None:
    """PermissionDenied unless ``user`` has at least ``role`` in ``team``."""
    if not has_role(user=user, team=team, role=role):
        raise PermissionDenied(f"You need the {role} role in {team.name} to {action}.")


@transaction.atomic
def create_team(*, name: str, owner) -> Team:
    """Create a team; ``owner`` becomes its admin."""
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Give the team a name."})
    slug = slugify(name)
    if not slug:
        raise ValidationError({"name": "The name needs at least one letter or digit."})
    if Team.objects.filter(name__iexact=name).exists() or Team.objects.filter(slug=slug).exists():
        raise ValidationError({"name": f"A team named {name!r} already exists; choose another name."})
    try:
        with transaction.atomic():
            team = Team.objects.create(name=name, slug=slug)
    except IntegrityError:
        raise ValidationError({"name": f"A team named {name!r} already exists; choose another name."}) from None
    Membership.objects.create(user=owner, team=team, role=Role.ADMIN)
    return team


@transaction.atomic
def add_member(*, team: Team, user, role: str, by) -> Membership:
    """Add ``user`` to ``team`` with ``role`` (or change their role). Only team admins may."""
    require_role(user=by, team=team, role=Role.ADMIN, action="manage members")
    if role not in ROLE_ORDER:
        raise ValidationError({"role": f"Unknown role {role!r}; choose one of {', '.join(ROLE_ORDER)}."})
    membership, created = Membership.objects.get_or_create(user=user, team=team, defaults={"role": role})
    if not created and membership.role != role:
        if membership.role == Role.ADMIN and _admin_count(team) == 1:
            raise ValidationError({"role": "A team needs at least one admin; promote someone else first."})
        membership.role = role
        membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def remove_member(*, team: Team, user, by) -> None:
    require_role(user=by, team=team, role=Role.ADMIN, action="manage members")
    membership = Membership.objects.filter(team=team, user=user).first()
    if membership is None:
        raise ValidationError(f"{user} is not a member of {team.name}.")
    if membership.role == Role.ADMIN and _admin_count(team) == 1:
        raise ValidationError("A team needs at least one admin; promote someone else first.")
    membership.delete()


def _admin_count(team: Team) -> int:
    """Admins of ``team``, their rows locked (FOR UPDATE cannot wrap COUNT on PostgreSQL)."""
    return len(Membership.objects.select_for_update().filter(team=team, role=Role.ADMIN).values_list("pk", flat=True))
