"""Team pages: switch the current team, see members, and (admins) add or change a member."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from mergehub.web.errors import add_service_errors
from mergehub.web.teams import switch_team as set_current_team

from . import services
from .forms import AddMemberForm
from .models import Role
from .selectors import get_team_for, has_role, members_of


@login_required
@require_POST
def switch_team(request):
    team = set_current_team(request, request.POST.get("team", ""))
    messages.success(request, f"Now working in {team.name}.")
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = "web:dashboard"
    return redirect(target)


@login_required
def team_detail(request, slug):
    team = get_team_for(user=request.user, slug=slug)
    is_admin = has_role(user=request.user, team=team, role=Role.ADMIN)
    form = AddMemberForm(request.POST or None) if request.method == "POST" else AddMemberForm()
    if request.method == "POST" and form.is_valid():
        try:
            membership = services.add_member(team=team, user=form.cleaned_data["username"],
                                             role=form.cleaned_data["role"], by=request.user)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"{membership.user} is now {membership.role} of {team.name}.")
            return redirect("accounts:team", slug=team.slug)
    return render(request, "accounts/team.html", {
        "team": team, "members": members_of(user=request.user, team=team), "form": form,
        "is_admin": is_admin})
