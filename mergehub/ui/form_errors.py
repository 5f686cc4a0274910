"""Turning service errors into form errors.

Services raise django.core.exceptions.ValidationError, with a dict keyed by form field where a
field is at fault. Keys the form does not have become non-field errors, so no message is lost.
"""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from mergehub.engine.api import MergeHubError


def add_service_errors(form: forms.Form, error: ValidationError | MergeHubError) -> None:
    if isinstance(error, MergeHubError):
        form.add_error(None, str(error))
        return
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for field, errors in error.error_dict.items():
        form.add_error(field if field in form.fields else None, errors)
