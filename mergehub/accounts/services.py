"""Writes for teams and memberships: team self-service (create a team, invite, change roles,
remove members, leave) and the team's review policy.

The rules: any signed-in user may create a team and becomes its admin; only a team's admins
manage its members; a team always keeps at least one admin, so no removal, role change or
leaving takes away its last one. Each write is one transaction in which the team's admin rows
are locked while they are counted, so two admins demoting (or removing) each other at the same
moment cannot leave a team without one.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from mergehub.audit.models import AuditEvent
from mergehub.audit.services import record

from .models import ROLE_ORDER, Membership, Role, Team
from .selectors import has_role, users_matching

NAME_MAX = Team._meta.get_field("name").max_length
# Routes under /teams/ that are not teams: a team with one of these slugs would be unreachable.
RESERVED_SLUGS = frozenset({"switch"})


def require_role(*, user, team: Team, role: str, action: str) -> None:
    """PermissionDenied unless ``user`` has at least ``role`` in ``team``."""
    if not has_role(user=user, team=team, role=role):
        raise PermissionDenied(f"You need the {role} role in {team.name} to {action}.")


@transaction.atomic
def create_team(*, name: str, owner) -> Team:
    """Create a team named ``name`` (its address, the slug, is made from the name); ``owner``
    becomes its admin."""
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Give the team a name."})
    if len(name) > NAME_MAX:
        raise ValidationError({"name": f"A team name has at most {NAME_MAX} characters; this one has {len(name)}."})
    slug = slugify(name)
    if not slug:
        raise ValidationError({"name": "The name needs at least one letter from A to Z or a digit: "
                                       "the team's address (/teams/<address>/) is made from them."})
    if slug in RESERVED_SLUGS:
        raise ValidationError({"name": f"The name {name!r} would give the team the address /teams/{slug}/, "
                                       "which the site uses itself; choose another name."})
    taken = ValidationError({"name": f"A team named {name!r} already exists; choose another name."})
    if Team.objects.filter(name__iexact=name).exists():
        raise taken
    if Team.objects.filter(slug=slug).exists():
        raise ValidationError({"name": f"A team with the address /teams/{slug}/ already exists (names that differ "
                                       "only in letter case, spaces or punctuation share an address); "
                                       "choose another name."})
    try:
        with transaction.atomic():
            team = Team.objects.create(name=name, slug=slug)
    except IntegrityError:  # created by someone else since the checks above
        raise taken from None
    Membership.objects.create(user=owner, team=team, role=Role.ADMIN)
    record(team=team, actor=owner, action=AuditEvent.Action.TEAM_CREATED, target=team)
    return team


@transaction.atomic
def invite_member(*, team: Team, username: str, role: str, by) -> Membership:
    """Add the existing account named ``username`` (or whose email address it is) to ``team``
    with ``role``. Only team admins may; someone already in the team is an error (their role
    is changed with ``change_role``)."""
    require_role(user=by, team=team, role=Role.ADMIN, action="invite members")
    _check_role(role)
    username = (username or "").strip()
    if not username:
        raise ValidationError({"username": "Enter the username or the email address of an existing account."})
    users = users_matching(username)
    if not users:
        raise ValidationError({"username": f"No user named {username!r} or with that email address; "
                                           "ask them to get an account first, then invite them."})
    if len(users) > 1:
        raise ValidationError({"username": f"Several accounts use the email address {username!r}; "
                                           "invite by username instead."})
    user = users[0]
    already = ValidationError({"username": f"{user.get_username()} is already a member of {team.name}; "
                                           "change their role in the members list instead."})
    if Membership.objects.filter(team=team, user=user).exists():
        raise already
    try:
        with transaction.atomic():
            membership = Membership.objects.create(user=user, team=team, role=role)
    except IntegrityError:  # added by another admin since the check above
        raise already from None
    _record_member(membership, by, AuditEvent.Action.MEMBER_ADDED, {"role": role})
    return membership


@transaction.atomic
def change_role(*, membership: Membership, role: str, by) -> Membership:
    """Give the member of ``membership`` the role ``role``. Only team admins may, and never
    to the team's last admin."""
    team = membership.team
    require_role(user=by, team=team, role=Role.ADMIN, action="change members' roles")
    _check_role(role)
    current = Membership.objects.select_for_update().filter(pk=membership.pk).select_related("user").first()
    if current is None:
        raise ValidationError(f"{membership.user.get_username()} is no longer a member of {team.name}.")
    if current.role == role:
        return current
    name = current.user.get_username()
    if current.role == Role.ADMIN:
        _keep_an_admin(team, f"{name} is the last admin of {team.name}, and a team needs at least one admin: "
                             f"make another member an admin first, then change {name}'s role.", field="role")
    was, current.role = current.role, role
    current.save(update_fields=["role"])
    _record_member(current, by, AuditEvent.Action.MEMBER_ROLE_CHANGED, {"from": was, "to": role})
    return current


@transaction.atomic
def remove_member(*, team: Team, user, by) -> None:
    """Take ``user`` out of ``team``. Only team admins may, and never the team's last admin."""
    require_role(user=by, team=team, role=Role.ADMIN, action="remove members")
    membership = Membership.objects.select_for_update().filter(team=team, user=user).first()
    if membership is None:
        raise ValidationError(f"{user.get_username()} is not a member of {team.name}.")
    if membership.role == Role.ADMIN:
        name = user.get_username()
        _keep_an_admin(team, f"{name} is the last admin of {team.name}, and a team needs at least one admin: "
                             f"make another member an admin first, then remove {name}.")
    membership.delete()
    _record_member(membership, by, AuditEvent.Action.MEMBER_REMOVED, {"role": membership.role})


@transaction.atomic
def leave_team(*, team: Team, user) -> None:
    """``user`` leaves ``team`` (any member may), unless they are its last admin."""
    membership = Membership.objects.select_for_update().filter(team=team, user=user).first()
    if membership is None:
        raise ValidationError(f"You are not a member of {team.name}.")
    if membership.role == Role.ADMIN:
        if Membership.objects.filter(team=team).count() == 1:
            message = (f"You are the only member of {team.name}, and a team needs at least one admin: invite "
                       "someone and make them an admin first, then leave (or ask a site admin to delete the team).")
        else:
            message = (f"You are the last admin of {team.name}, and a team needs at least one admin: "
                       "make another member an admin first, then leave.")
        _keep_an_admin(team, message)
    membership.delete()
    _record_member(membership, user, AuditEvent.Action.MEMBER_LEFT, {"role": membership.role})


@transaction.atomic
def set_review_policy(*, team: Team, allow_self_approval: bool, by) -> Team:
    """Whether authors may approve their own runs in ``team`` (mergehub/reviews). Team admins only."""
    require_role(user=by, team=team, role=Role.ADMIN, action="change the team's review policy")
    current = Team.objects.select_for_update().get(pk=team.pk)
    if current.allow_self_approval != allow_self_approval:
        current.allow_self_approval = allow_self_approval
        current.save(update_fields=["allow_self_approval"])
        record(team=current, actor=by, action=AuditEvent.Action.TEAM_SETTINGS_CHANGED, target=current,
               details={"allow_self_approval": allow_self_approval})
    return current


@transaction.atomic
def add_member(*, team: Team, user, role: str, by) -> Membership:
    """Make ``user`` a member of ``team`` with ``role``, whether or not they already are one
    (for scripts; the team page invites with ``invite_member``). Only team admins may."""
    require_role(user=by, team=team, role=Role.ADMIN, action="manage members")
    _check_role(role)
    membership = Membership.objects.filter(user=user, team=team).select_related("team").first()
    if membership is not None:
        return change_role(membership=membership, role=role, by=by)
    try:
        with transaction.atomic():
            membership = Membership.objects.create(user=user, team=team, role=role)
    except IntegrityError:  # added meanwhile: set the role instead
        return change_role(membership=Membership.objects.get(user=user, team=team), role=role, by=by)
    _record_member(membership, by, AuditEvent.Action.MEMBER_ADDED, {"role": role})
    return membership


def _record_member(membership: Membership, by, action: str, details: dict) -> None:
    """The audit event of a membership change: its target is the member (the user)."""
    record(team=membership.team, actor=by, action=action, target=membership.user,
           label=membership.user.get_username(), details=details)


def _check_role(role: str) -> None:
    if role not in ROLE_ORDER:
        raise ValidationError({"role": f"Unknown role {role!r}; choose one of {', '.join(ROLE_ORDER)}."})


def _keep_an_admin(team: Team, message: str, *, field: str | None = None) -> None:
    """ValidationError(``message``) unless ``team`` has another admin besides the one a change
    would take away. The admin rows are locked (FOR UPDATE cannot wrap COUNT on PostgreSQL)."""
    admins = Membership.objects.select_for_update().filter(team=team, role=Role.ADMIN).values_list("pk", flat=True)
    if len(admins) <= 1:
        raise ValidationError({field: message} if field else message)
