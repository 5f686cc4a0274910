"""Bearer token authentication for the API: ``Authorization: Bearer mh_<id>_<secret>``.

Sets ``request.user`` to the token's user and ``request.auth`` to the ApiToken. No header (or
another scheme): not authenticated, so the API answers 401. A bad, expired or revoked token, or
one whose user left its team: 401, counted as a failed login (throttling.py); while locked: 429.
The header is never logged or echoed; ``sensitive_variables`` keeps it out of error reports.
"""

from __future__ import annotations

from django.views.decorators.debug import sensitive_variables
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from . import throttling, tokens

KEYWORD = b"bearer"


class BearerTokenAuthentication(BaseAuthentication):
    """DRF authentication by API token (see tokens.py)."""

    @sensitive_variables("header", "text")
    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != KEYWORD:
            return None
        try:
            text = header[1].decode("ascii") if len(header) == 2 else ""
        except UnicodeDecodeError:
            text = ""
        label = tokens.public_label(text)
        django_request = request._request
        throttling.refuse_if_locked(django_request, label)
        token = tokens.authenticate_token(text)
        if token is None:
            throttling.record_failure(django_request, label)
            raise AuthenticationFailed("Invalid token: unknown, expired or revoked, or its user has left "
                                       "its team. Send 'Authorization: Bearer mh_…'.")
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'
