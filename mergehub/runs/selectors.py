"""Reads for merge runs, always scoped to the teams the user belongs to."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.fields.json import KeyTransform
from django.http import Http404

from mergehub.accounts.models import Team
from mergehub.accounts.selectors import teams_for
from mergehub.web.pagination import rows_in_order

from .models import MergeRun

Status = MergeRun.Status

# Columns a run table never shows; the JSON ones grow to kilobytes per run.
LIST_DEFERRED = ("config", "plan", "metrics", "manifest", "log", "error", "note")


def runs_for(*, user, team: Team | None = None, status: str | None = None, method: str | None = None,
             author=None, search: str | None = None) -> QuerySet[MergeRun]:
    """Runs of the user's teams, newest first, optionally filtered.

    ``author`` may be a user, a user id, or a username. ``search``: runs whose name, tags or
    note contain it, case-insensitively (surrounding white space ignored).
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
    search = (search or "").strip()
    if search:
        qs = qs.filter(Q(name__icontains=search) | Q(tags__icontains=search) | Q(note__icontains=search))
    return qs


def for_listing(runs: QuerySet[MergeRun]) -> QuerySet[MergeRun]:
    """``runs`` as a run table (templates/runs/_table.html) shows them: the author joined, the
    big columns left in the database, and the three numbers the table shows from metrics and
    plan extracted by the database as ``list_expert_bytes_read``, ``list_full_expert_bytes``
    and ``list_planned_expert_bytes``. A page of rows is then one query, whatever the history."""
    return (runs.select_related(None).select_related("author").defer(*LIST_DEFERRED)
            .annotate(list_expert_bytes_read=KeyTransform("expert_bytes_read", "metrics"),
                      list_full_expert_bytes=KeyTransform("full_expert_bytes", "metrics"),
                      list_planned_expert_bytes=KeyTransform("planned_expert_bytes", "plan")))


def get_run(*, user, pk) -> MergeRun:
    """Http404 unless the run exists and belongs to one of the user's teams."""
    run = runs_for(user=user).filter(pk=pk).first()
    if run is None:
        raise Http404("No such run.")
    return run


def run_for_idempotency_key(*, team: Team, user, key: str) -> MergeRun | None:
    """The run ``user`` created in ``team`` with this idempotency key (services.create_run_once)."""
    if not key:
        return None
    return MergeRun.objects.filter(team=team, author=user, idempotency_key=key).first()


def dashboard_stats(*, user, recent: int = 10) -> dict:
    """Recent runs, total expert bytes saved by succeeded runs, and the queue state.

    The total is a sum in the database over the ``expert_bytes_saved`` column (the runner
    fills it when a run succeeds), never a read of every run's metrics."""
    runs = runs_for(user=user)
    active = dict(runs.filter(status__in=MergeRun.ACTIVE).order_by().values_list("status")
                  .annotate(n=Count("pk")))
    saved = runs.filter(status=Status.SUCCEEDED).aggregate(total=Sum("expert_bytes_saved"))["total"]
    team_ids = list(teams_for(user).values_list("pk", flat=True))
    return {
        "recent_runs": rows_in_order(for_listing(runs), _newest_ids(team_ids=team_ids, n=recent)),
        "bytes_saved_total": saved or 0,
        "queue": {"queued": active.get(Status.QUEUED, 0), "running": active.get(Status.RUNNING, 0)},
    }


def _newest_ids(*, team_ids, n: int) -> list[int]:
    """Ids of the newest ``n`` runs of these teams: the newest ``n`` of each team (a short walk
    down its (team, created_at) index), merged here. One query over all the teams would sort
    every run they ever had."""
    newest = []
    for team_id in team_ids:
        newest += MergeRun.objects.filter(team_id=team_id).values_list("created_at", "pk")[:n]
    newest.sort(reverse=True)
    return [pk for _, pk in newest[:n]]
