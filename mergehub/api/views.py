"""A team's API tokens page: your tokens (a team admin sees everyone's), create one, revoke.

A new token's text is shown once, in the answer to the POST that created it (not cached, not
kept anywhere); the list shows only its public prefix.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_POST

from mergehub.accounts.models import Role
from mergehub.accounts.selectors import get_team_for, has_role
from mergehub.ui.form_errors import add_service_errors

from . import tokens
from .forms import CreateTokenForm


@login_required
def token_list(request, slug):
    team = get_team_for(user=request.user, slug=slug)
    form = CreateTokenForm(request.POST if request.method == "POST" else None)
    created = plain = None
    if request.method == "POST" and form.is_valid():
        try:
            created, plain = tokens.create_token(user=request.user, team=team, by=request.user, **form.cleaned_data)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            form = CreateTokenForm()
    response = render(request, "api/tokens.html", {
        "team": team, "tokens": tokens.tokens_for(user=request.user, team=team), "form": form,
        "created": created, "plain": plain, "is_admin": has_role(user=request.user, team=team, role=Role.ADMIN)})
    add_never_cache_headers(response)  # the page may carry a new token's text
    return response


@login_required
@require_POST
def token_revoke(request, slug, pk):
    team = get_team_for(user=request.user, slug=slug)
    token = tokens.revoke_token(token=tokens.get_token(user=request.user, team=team, pk=pk), by=request.user)
    messages.success(request, f"Revoked the token {token.name} ({token.prefix}…); it no longer works.")
    return redirect("tokens:list", slug=team.slug)
