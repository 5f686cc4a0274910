"""Forms for team pages."""

from django import forms
from django.contrib.auth import get_user_model

from .models import Role


class AddMemberForm(forms.Form):
    username = forms.CharField(max_length=150, help_text="An existing user account.")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER,
                             help_text="Viewers read; members also register checkpoints and run "
                                       "merges; admins also manage members.")

    def clean_username(self):
        username = self.cleaned_data["username"].strip()
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise forms.ValidationError(f"No user named {username!r}; ask them to get an account first.")
        return user
