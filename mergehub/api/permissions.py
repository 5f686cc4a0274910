"""Who may do what through the API: the token's team is the only team, the user's current role
there is the role (never more), and changes need a read-write token as well.

Helpers for API views (every /api/v1/ view gets ``HasTeamToken`` by default, see
REST_FRAMEWORK in mergehub/settings.py):

- ``token_team(request) -> Team``: the one team the request may see. Scope every query to it
  (``Model.objects.filter(team=token_team(request))``), and answer 404 for anything else, as
  the selectors do for pages (base.TeamScopedMixin does both).
- ``token_role(request) -> str``: the user's role in that team now ("viewer", "member", "admin").
- ``require_write(request)``: PermissionDenied (403) unless the token may write and the user is
  at least a member. ``HasTeamToken`` calls it for POST, PUT, PATCH and DELETE unless the view
  sets ``changes_nothing = True`` (a POST that only computes, like a plan preview).
- ``require_role_in_token_team(request, role, action)``: PermissionDenied unless the user's role is
  at least ``role`` (e.g. admin-only actions). Services check roles too (require_role), with the
  user and the token's team, so they refuse what the user may not do whatever the token.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from rest_framework.permissions import SAFE_METHODS, BasePermission

from mergehub.accounts.models import Membership, Role, Team, role_at_least

from .models import ApiToken

_ROLE_ATTR = "_mergehub_token_role"


def token_of(request) -> ApiToken | None:
    """The ApiToken the request authenticated with, or None."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, ApiToken) else None


def token_team(request) -> Team:
    """The token's team: the only team this request may see or change."""
    token = token_of(request)
    if token is None:
        raise PermissionDenied("This endpoint needs an API token.")
    return token.team


def token_role(request) -> str:
    """The user's current role in the token's team (looked up once per request)."""
    role = getattr(request, _ROLE_ATTR, None)
    if role is None:
        token = token_of(request)
        membership = (Membership.objects.filter(user_id=token.user_id, team_id=token.team_id).first()
                      if token is not None else None)
        if membership is None:  # left the team mid-request: as good as no role
            raise PermissionDenied("You are not a member of this token's team.")
        role = membership.role
        setattr(request, _ROLE_ATTR, role)
    return role


def require_role_in_token_team(request, role: str, action: str) -> None:
    if not role_at_least(token_role(request), role):
        raise PermissionDenied(f"You need the {role} role in {token_team(request).name} to {action}.")


def require_write(request) -> None:
    """403 unless the token is read-write and its user at least a member of its team."""
    token = token_of(request)
    if token is None or not token.can_write:
        raise PermissionDenied("This token is read-only; create a read-write token to make changes.")
    require_role_in_token_team(request, Role.MEMBER, "make changes")


class HasTeamToken(BasePermission):
    """Authenticated by an API token; changes also need ``require_write``."""

    def has_permission(self, request, view) -> bool:
        if token_of(request) is None:
            return False  # unauthenticated: DRF answers 401 with the Bearer challenge
        token_role(request)
        if request.method not in SAFE_METHODS and not getattr(view, "changes_nothing", False):
            require_write(request)
        return True
