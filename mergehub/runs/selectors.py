"""Reads for merge runs, always scoped to the teams the user belongs to."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet
from django.http import Http404

from mergehub.accounts.models import Team
from mergehub.accounts.selectors import teams_for

from .models import MergeRun, bytes_saved

Status = MergeRun.Status


def runs_for(*, user, team: Team | None = None, status: str | None = None, method: str | None = None,
             author=None) -> QuerySet[MergeRun]:
    """Runs of the user's teams, newest first, optionally filtered.

    ``author`` may be a user, a user id, or a username.
    """
    qs = MergeRun.objects.filter(team__in=teams_for(user)).select_related("team", "author", "base")
    if team is not None:
        qs = qs.filter(team=team)
    if status:
        qs = qs.filter(status=status)
    if method:
        qs = qs.filter(method=method)
    if author not in (None, ""):
        if hasattr(author, "pk"):
            qs = qs.filter(author=author)
        elif isinstance(author, int) or str(author).isdigit():
            qs = qs.filter(author_id=int(author))
        else:
            qs = qs.filter(author__username=str(author))
    return qs


def get_run(*, user, pk) -> MergeRun:
    """Http404 unless the run exists and belongs to one of the user's teams."""
    run = runs_for(user=user).filter(pk=pk).first()
    if run is None:
        raise Http404("No such run.")
    return run


def dashboard_stats(*, user, recent: int = 10) -> dict:
    """Recent runs, total expert bytes saved by succeeded runs, and the queue state."""
    runs = runs_for(user=user)
    counts = runs.aggregate(queued=Count("pk", filter=Q(status=Status.QUEUED)),
                            running=Count("pk", filter=Q(status=Status.RUNNING)))
    saved = sum(bytes_saved(m or {}) or 0 for m in runs.filter(status=Status.SUCCEEDED).values_list("metrics", flat=True))
    return {
        "recent_runs": list(runs[:recent]),
        "bytes_saved_total": saved,
        "queue": {"queued": counts["queued"], "running": counts["running"]},
    }
