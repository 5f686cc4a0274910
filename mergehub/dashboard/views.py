"""The dashboard: the current team's recent runs, bytes saved and the queue."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from mergehub.accounts.current_team import current_team
from mergehub.runs.selectors import dashboard_stats


@login_required
def dashboard(request):
    stats = dashboard_stats(user=request.user)
    return render(request, "dashboard/dashboard.html", {"stats": stats, "team": current_team(request)})
