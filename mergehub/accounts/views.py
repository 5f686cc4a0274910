"""Team pages: the user's teams (and creating one), switching the current team, a team's
members; for team admins, inviting, changing roles and removing members; for every member,
leaving. Thin: the rules are in services.py, the reads in selectors.py."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from mergehub.accounts.current_team import current_team, switch_team as set_current_team
from mergehub.ui.form_errors import add_service_errors

from . import services
from .forms import CreateTeamForm, InviteMemberForm, RoleForm
from .models import Role
from .selectors import get_membership, get_team_for, members_of, membership_for, memberships_of

A_ROLE = {Role.VIEWER: "a viewer", Role.MEMBER: "a member", Role.ADMIN: "an admin"}


@login_required
def team_list(request):
    """The user's teams with their role in each, and the form that creates a team."""
    form = CreateTeamForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            team = services.create_team(name=form.cleaned_data["name"], owner=request.user)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            set_current_team(request, team.slug)
            messages.success(request, f"Created {team.name}, and you are its admin; you are now working in it. "
                                      "Invite your colleagues below.")
            return redirect("accounts:team", slug=team.slug)
    return render(request, "accounts/teams.html", {
        "memberships": memberships_of(user=request.user), "current": current_team(request), "form": form})


@login_required
@require_POST
def switch_team(request):
    team = set_current_team(request, request.POST.get("team", ""))
    messages.success(request, f"Now working in {team.name}.")
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = "dashboard:dashboard"
    return redirect(target)


@login_required
def team_detail(request, slug):
    """The members and their roles; a POST (team admins) invites an existing user."""
    team = get_team_for(user=request.user, slug=slug)
    me = membership_for(user=request.user, team=team)
    if me is None:  # left the team since the line above
        raise Http404("No such team.")
    form = InviteMemberForm()
    if request.method == "POST":
        services.require_role(user=request.user, team=team, role=Role.ADMIN, action="invite members")
        form = InviteMemberForm(request.POST)
        if form.is_valid():
            try:
                added = services.invite_member(team=team, by=request.user, **form.cleaned_data)
            except ValidationError as error:
                add_service_errors(form, error)
            else:
                messages.success(request, f"{added.user.get_username()} is now {A_ROLE[added.role]} of {team.name}.")
                return redirect("accounts:team", slug=team.slug)
    return render(request, "accounts/team.html", {
        "team": team, "members": members_of(user=request.user, team=team), "me": me, "my_role": A_ROLE[me.role],
        "is_admin": me.has_role(Role.ADMIN), "form": form, "roles": Role.choices})


@login_required
@require_POST
def member_role(request, slug, pk):
    team = get_team_for(user=request.user, slug=slug)
    membership = get_membership(user=request.user, team=team, pk=pk)
    services.require_role(user=request.user, team=team, role=Role.ADMIN, action="change members' roles")
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Choose one of the roles: {', '.join(label for _, label in Role.choices)}.")
        return redirect("accounts:team", slug=team.slug)
    try:
        changed = services.change_role(membership=membership, role=form.cleaned_data["role"], by=request.user)
    except ValidationError as error:
        _error_messages(request, error)
    else:
        messages.success(request, f"{changed.user.get_username()} is now {A_ROLE[changed.role]} of {team.name}.")
    return redirect("accounts:team", slug=team.slug)


@login_required
@require_POST
def member_remove(request, slug, pk):
    team = get_team_for(user=request.user, slug=slug)
    membership = get_membership(user=request.user, team=team, pk=pk)
    try:
        services.remove_member(team=team, user=membership.user, by=request.user)
    except ValidationError as error:
        _error_messages(request, error)
        return redirect("accounts:team", slug=team.slug)
    if membership.user == request.user:
        messages.success(request, f"You left {team.name}.")
        return redirect("accounts:teams")
    messages.success(request, f"Removed {membership.user.get_username()} from {team.name}.")
    return redirect("accounts:team", slug=team.slug)


@login_required
@require_POST
def review_policy(request, slug):
    """Team admins: whether authors may approve their own runs (the team page's checkbox)."""
    team = get_team_for(user=request.user, slug=slug)
    allow = request.POST.get("allow_self_approval") == "on"
    services.set_review_policy(team=team, allow_self_approval=allow, by=request.user)
    messages.success(request, "Authors may now approve their own runs." if allow
                     else "A run now needs the approval of a member other than its author.")
    return redirect("accounts:team", slug=team.slug)


@login_required
@require_POST
def team_leave(request, slug):
    team = get_team_for(user=request.user, slug=slug)
    try:
        services.leave_team(team=team, user=request.user)
    except ValidationError as error:
        _error_messages(request, error)
        return redirect("accounts:team", slug=team.slug)
    messages.success(request, f"You left {team.name}; its pages and objects are no longer yours to see.")
    return redirect("accounts:teams")


def _error_messages(request, error: ValidationError) -> None:
    for message in error.messages:
        messages.error(request, message)
