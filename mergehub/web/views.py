"""The dashboard."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from mergehub.runs.selectors import dashboard_stats

from .teams import current_team


@login_required
def dashboard(request):
    stats = dashboard_stats(user=request.user)
    return render(request, "web/dashboard.html", {"stats": stats, "team": current_team(request)})
