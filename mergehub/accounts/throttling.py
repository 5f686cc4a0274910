"""Login throttling glue for django-axes: the client address it counts failures by, and the page
a locked-out login gets (settings: the "login throttling" part of mergehub/settings.py).

Axes counts failed logins per username and per client address (either one locks); while a
lock holds, the login page and the admin's login answer 429 with templates/registration/
locked_out.html, which says when to try again.
"""

from __future__ import annotations

import ipaddress
import math
from datetime import datetime, timedelta

from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_cool_off, get_failure_limit
from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import render
from django.utils import timezone

API_PATH = "/api/"  # token failures there lock too; the API gets its lockout as JSON


def _valid_ip(value: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address((value or "").strip()))
    except ValueError:
        return None


def client_ip(request) -> str | None:
    """The address failures are counted by (AXES_CLIENT_IP_CALLABLE).

    Directly exposed, the peer address (REMOTE_ADDR): headers are the client's to invent.
    Behind a TLS proxy (BEHIND_TLS_PROXY), the peer is the proxy, and the client is the entry
    the proxies appended to X-Forwarded-For: with MERGEHUB_TRUSTED_PROXIES proxies in a row,
    the one that many places from the right (entries further left came from the client, which
    can write anything there). An entry that is not an address falls back to REMOTE_ADDR.
    """
    remote = _valid_ip(request.META.get("REMOTE_ADDR"))
    if not settings.MERGEHUB_TRUST_X_FORWARDED_FOR:
        return remote
    hops = [h for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    if not hops:
        return remote
    return _valid_ip(hops[max(len(hops) - settings.MERGEHUB_TRUSTED_PROXIES, 0)]) or remote


def lockout_detail(seconds: int) -> str:
    """What the API says while token authentications from an address (or for a token) are locked."""
    minutes = max(math.ceil(seconds / 60), 1)
    return (f"Too many failed logins or token authentications from this address, or for this token; "
            f"try again in {minutes} minute{'s' if minutes != 1 else ''}.")


def locked_until(request, credentials: dict | None) -> datetime | None:
    """When the lock on this request's username or address lifts: for each lock, the failures
    newest first, the one that reaches the limit expires a cool-off after its last attempt."""
    cool_off = get_cool_off(request)
    if not cool_off:
        return None
    limit = get_failure_limit(request, credentials)
    ends = []
    handler = AxesProxyHandler.get_implementation()  # the database handler (AXES_HANDLER)
    for attempts in handler.get_user_attempts(request, credentials):
        total = 0
        for failures, attempt_time in attempts.order_by("-attempt_time").values_list(
                "failures_since_start", "attempt_time"):
            total += failures
            if total >= limit:
                ends.append(attempt_time + cool_off)
                break
    return max(ends, default=None)


def lockout_response(request, original_response=None, credentials=None):
    """AXES_LOCKOUT_CALLABLE: the locked-out page, 429 with Retry-After (for the API, whose token
    failures lock too, the same as JSON: ``{"detail": …}``)."""
    credentials = credentials if isinstance(credentials, dict) else getattr(request, "axes_credentials", None)
    until = locked_until(request, credentials)
    if until is None:  # the lock is about to lift; say a full cool-off rather than nothing
        until = timezone.now() + (get_cool_off(request) or timedelta(0))
    seconds = max(math.ceil((until - timezone.now()).total_seconds()), 1)
    if request.path.startswith(API_PATH):
        response = JsonResponse({"detail": lockout_detail(seconds)}, status=429)
        response["Retry-After"] = str(seconds)
        return response
    response = render(request, "registration/locked_out.html", {
        "retry_at": until, "minutes": math.ceil(seconds / 60),
        "failure_limit": get_failure_limit(request, credentials),
    }, status=429)
    response["Retry-After"] = str(seconds)
    return response
