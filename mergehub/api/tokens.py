"""API tokens: create, revoke, authenticate, and the reads the token page needs.

Token text: ``mh_<public id>_<secret>`` (8 lowercase hex characters, then 43 urlsafe base64
characters: 256 random bits). The ``mh_`` start makes a leaked token easy to spot (secret
scanners, logs). The database keeps the public part (``prefix``) and sha256(secret) only, so
a copy of the database holds no usable token; the plain text exists once, in what
``create_token`` returns.

A token acts for its user in its team only, with the user's *current* role there: it stops
working when the user leaves the team (or is deactivated), and a demoted user's token is
demoted with them. ``can_write`` only narrows what the role allows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from mergehub.accounts.models import Membership, Role, Team
from mergehub.accounts.selectors import has_role
from mergehub.accounts.services import require_role
from mergehub.audit.models import AuditEvent
from mergehub.audit.services import record

from .models import ApiToken

TOKEN_START = "mh_"
PUBLIC_ID_LENGTH = 8
SECRET_BYTES = 32  # token_urlsafe(32): 43 characters
MAX_EXPIRES_DAYS = 3650
LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often
_TOKEN_RE = re.compile(r"mh_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")
_DUMMY_DIGEST = hashlib.sha256(b"no such token").hexdigest()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@sensitive_variables("text")
def parse_token(text: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed token text, else None. ``prefix`` is ``mh_<id>``."""
    match = _TOKEN_RE.fullmatch(text or "")
    if match is None:
        return None
    return TOKEN_START + match[1], match[2]


@sensitive_variables("text")
def public_label(text: str) -> str:
    """A name for the token that is safe to store and log: its public part, never the secret."""
    parsed = parse_token(text)
    return f"api-token:{parsed[0]}" if parsed else "api-token:malformed"


# --- writes -----------------------------------------------------------------------------------

def _clean_expiry(expires_days) -> timezone.datetime | None:
    if expires_days in (None, ""):
        return None
    try:
        days = int(expires_days)
    except (TypeError, ValueError):
        raise ValidationError({"expires_days": f"Give the expiry as a whole number of days, not {expires_days!r}."}) from None
    if not 1 <= days <= MAX_EXPIRES_DAYS:
        raise ValidationError({"expires_days": f"A token expires after 1 to {MAX_EXPIRES_DAYS} days "
                                               "(leave it empty for no expiry)."})
    return timezone.now() + timedelta(days=days)


@sensitive_variables("secret", "plain")
def create_token(*, user, team: Team, name: str, can_write: bool = False, expires_days: int | None = None,
                 by) -> tuple[ApiToken, str]:
    """A new token of ``user`` in ``team`` and its plain text (shown once, never stored).

    Users create tokens for themselves, in a team they belong to. ``by=None`` is for trusted
    callers (the create_api_token management command); ``user`` must still be a member.
    """
    if by is not None and by.pk != user.pk:
        raise PermissionDenied("You can only create API tokens for yourself.")
    require_role(user=user, team=team, role=Role.VIEWER, action="create API tokens")
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Give the token a name, e.g. what will use it."})
    if len(name) > 100:
        raise ValidationError({"name": "Keep the name to 100 characters."})
    expires_at = _clean_expiry(expires_days)
    for _ in range(5):  # 2^32 public ids: a collision is rare, and retried
        public_id = secrets.token_hex(PUBLIC_ID_LENGTH // 2)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        try:
            with transaction.atomic():
                token = ApiToken.objects.create(
                    user=user, team=team, name=name, prefix=TOKEN_START + public_id, digest=_digest(secret),
                    can_write=bool(can_write), expires_at=expires_at)
                record(team=team, actor=by, action=AuditEvent.Action.TOKEN_CREATED, target=token,
                       details=_audit_details(token))
        except IntegrityError:
            continue
        plain = f"{TOKEN_START}{public_id}_{secret}"
        return token, plain
    raise RuntimeError("could not draw an unused token id")  # pragma: no cover


@transaction.atomic
def revoke_token(*, token: ApiToken, by) -> ApiToken:
    """Revoke ``token`` (its owner, or an admin of its team, may). Revoking twice is harmless
    (and recorded in the audit log once)."""
    if by.pk != token.user_id and not has_role(user=by, team=token.team, role=Role.ADMIN):
        raise PermissionDenied(f"You need the admin role in {token.team.name} to revoke other members' tokens.")
    # A conditional update: of two revocations at once, one revokes (and is recorded), one finds it done.
    if token.revoked_at is None:
        revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        token.refresh_from_db(fields=["revoked_at"])
        if revoked:
            record(team=token.team, actor=by, action=AuditEvent.Action.TOKEN_REVOKED, target=token,
                   details=_audit_details(token))
    return token


def _audit_details(token: ApiToken) -> dict:
    """What the audit log keeps of a token besides its name and public prefix (never the secret)."""
    return {"owner": token.user.get_username(), "can_write": token.can_write}


# --- authentication -------------------------------------------------------------------------

@sensitive_variables("text", "secret")
def authenticate_token(text: str) -> ApiToken | None:
    """The active token ``text`` stands for, or None.

    Active: the secret matches (compared in constant time), not revoked, not expired, and its
    user is active and still a member of its team. Marks the token used (at most once a minute).
    """
    parsed = parse_token(text)
    if parsed is None:
        return None
    prefix, secret = parsed
    token = ApiToken.objects.select_related("user", "team").filter(prefix=prefix).first()
    matches = hmac.compare_digest(_digest(secret), token.digest if token else _DUMMY_DIGEST)
    if token is None or not matches or not token.is_active or not token.user.is_active:
        return None
    if not Membership.objects.filter(user=token.user, team=token.team).exists():
        return None
    _mark_used(token)
    return token


def _mark_used(token: ApiToken) -> None:
    now = timezone.now()
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_EVERY:
        return
    ApiToken.objects.filter(pk=token.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_EVERY)).update(last_used_at=now)
    token.last_used_at = now


# --- reads ------------------------------------------------------------------------------------

def tokens_for(*, user, team: Team) -> QuerySet[ApiToken]:
    """The tokens ``user`` sees on ``team``'s token page: their own; a team admin sees everyone's."""
    qs = ApiToken.objects.filter(team=team).select_related("user")
    if not has_role(user=user, team=team, role=Role.ADMIN):
        qs = qs.filter(user=user)
    return qs


def get_token(*, user, team: Team, pk) -> ApiToken:
    """A token of ``team`` that ``user`` sees (tokens_for); Http404 otherwise."""
    token = tokens_for(user=user, team=team).filter(pk=pk).first()
    if token is None:
        raise Http404("No such token.")
    return token
