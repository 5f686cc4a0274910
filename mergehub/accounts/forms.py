"""Forms for the team pages. They only shape the input; the rules live in services.py."""

from django import forms

from .models import Role, Team

ROLE_HELP = "Viewers read; members also register checkpoints and run merges; admins also manage members."


class CreateTeamForm(forms.Form):
    name = forms.CharField(max_length=Team._meta.get_field("name").max_length, label="Team name",
                           help_text="Its address is made from it: “Blue Team” → /teams/blue-team/. "
                                     "You become the team's admin.")


class InviteMemberForm(forms.Form):
    username = forms.CharField(max_length=254, label="Username or email address",
                               help_text="An existing account: they get no email, the team simply appears "
                                         "in their team list.")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER, help_text=ROLE_HELP)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)
