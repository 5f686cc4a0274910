"""The team a user is working in: remembered in the session, always one of their teams.

Lists and forms are scoped to the current team; detail pages work for any team the user belongs
to (the selectors raise Http404 otherwise).
"""

from __future__ import annotations

from mergehub.accounts.models import Team
from mergehub.accounts.selectors import get_team_for, teams_for

SESSION_KEY = "mergehub_team"
_CACHE_ATTR = "_mergehub_current_team"


def current_team(request) -> Team | None:
    """The session's team if the user still belongs to it, else their first team (by name).
    Looked up once per request (the view and the team switcher both ask)."""
    if not hasattr(request, _CACHE_ATTR):
        teams = teams_for(request.user).order_by("name")
        slug = request.session.get(SESSION_KEY)
        team = teams.filter(slug=slug).first() if slug else None
        setattr(request, _CACHE_ATTR, team or teams.first())
    return getattr(request, _CACHE_ATTR)


def switch_team(request, slug: str) -> Team:
    """Make ``slug`` the current team; Http404 if the user is not a member."""
    team = get_team_for(user=request.user, slug=slug)
    request.session[SESSION_KEY] = team.slug
    setattr(request, _CACHE_ATTR, team)
    return team
