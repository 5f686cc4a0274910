"""The create-a-token form on a team's API tokens page."""

from django import forms

from .tokens import MAX_EXPIRES_DAYS


class CreateTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What will use it, e.g. ci-nightly.")
    can_write = forms.BooleanField(required=False, label="Read-write",
                                   help_text="Lets the token register checkpoints and start runs (if your role "
                                             "allows). Leave it off for a read-only token.")
    expires_days = forms.IntegerField(required=False, min_value=1, max_value=MAX_EXPIRES_DAYS, initial=90,
                                      label="Expires after (days)", help_text="Empty: never expires.")
