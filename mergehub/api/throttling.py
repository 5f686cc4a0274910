"""Failed token authentications are throttled like logins (django-axes; settings
LOGIN_FAILURE_LIMIT and LOGIN_COOLOFF_MINUTES).

Each failure is recorded with axes under the token's public label (``api-token:mh_<id>``, never
the secret) and the client address (accounts.throttling.client_ip). LOGIN_FAILURE_LIMIT failures
from one address, or for one token id, refuse every token from that address (or with that id)
for LOGIN_COOLOFF_MINUTES with 429 and Retry-After, before any token is looked up. Logins and
tokens share the per-address count: an address guessing tokens is guessing credentials.
"""

from __future__ import annotations

import math

from axes.handlers.proxy import AxesProxyHandler
from django.contrib.auth.signals import user_login_failed
from django.utils import timezone
from rest_framework.exceptions import ErrorDetail, Throttled

from mergehub.accounts.throttling import locked_until, lockout_detail


def _credentials(label: str) -> dict:
    return {"username": label}


def _seconds_left(request, credentials: dict) -> int:
    until = locked_until(request, credentials)
    if until is None:
        return 1
    return max(math.ceil((until - timezone.now()).total_seconds()), 1)


def refuse_if_locked(request, label: str) -> None:
    """Throttled (429) while axes locks this address or token id. ``request``: Django's."""
    credentials = _credentials(label)
    if not AxesProxyHandler.is_allowed(request, credentials):
        seconds = _seconds_left(request, credentials)
        locked = Throttled(wait=seconds)  # Retry-After: seconds
        locked.detail = ErrorDetail(lockout_detail(seconds), code=locked.default_code)  # as the lockout page says
        raise locked


def record_failure(request, label: str) -> None:
    """Count a failed token authentication (axes' user_login_failed handler)."""
    user_login_failed.send(sender=__name__, credentials=_credentials(label), request=request)
