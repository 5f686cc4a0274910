"""The API's error answers (REST_FRAMEWORK["EXCEPTION_HANDLER"]).

Services raise Django's ValidationError keyed by form field, as the forms show them:
``ValidationError({"budget": "Enter a budget…"})`` → 400 ``{"budget": ["Enter a budget…"]}``;
one without fields → 400 ``{"detail": "…"}``. An engine error (MergeHubError) → 400
``{"detail": "…"}``. PermissionDenied → 403, Http404 → 404 and DRF's own exceptions as DRF
answers them (``{"detail": "…"}``).
"""

from __future__ import annotations

from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions
from rest_framework.views import exception_handler as drf_exception_handler

from mergehub.engine.api import MergeHubError


def field_errors(error: DjangoValidationError) -> dict:
    """{"field": ["message", …]} of a ValidationError with fields; {"detail": "…"} without."""
    if hasattr(error, "error_dict"):
        return {("non_field_errors" if field == NON_FIELD_ERRORS else field): list(messages)
                for field, messages in error.message_dict.items()}
    return {"detail": " ".join(error.messages)}


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(field_errors(exc))
    elif isinstance(exc, MergeHubError):
        exc = exceptions.ValidationError({"detail": str(exc)})
    return drf_exception_handler(exc, context)
