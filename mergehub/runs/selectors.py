"""Reads for merge runs, always scoped to the teams the user belongs to."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.fields.json import KeyTransform
from django.http import Http404

from mergehub.accounts.models import Team
from mergehub.accounts.selectors import teams_for
from mergehub.evaluation.selectors import benchmark_for_run
from mergehub.registry.selectors import checkpoints_for
from mergehub.ui.formatting import human_bytes, human_seconds, percent
from mergehub.ui.pagination import rows_in_order

from .figures import sketch_split
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


def methods_used(team: Team, also: str = "") -> list[str]:
    """The merge methods of the team's runs, sorted: the run list's method filter offers these
    (and ``also``, the method filtered on now, so the filter shows what it filters by)."""
    used = set(MergeRun.objects.filter(team=team).order_by().values_list("method", flat=True).distinct())
    return sorted(used | ({also} if also else set()))


def for_listing(runs: QuerySet[MergeRun]) -> QuerySet[MergeRun]:
    """``runs`` as a run table (templates/runs/_table.html) shows them: the author joined, the
    big columns left in the database, the three numbers the table shows from metrics and
    plan extracted by the database as ``list_expert_bytes_read``, ``list_full_expert_bytes``
    and ``list_planned_expert_bytes``, and the review state as ``list_review_state``. A page of
    rows is then one query, whatever the history."""
    return (runs.select_related(None).select_related("author").defer(*LIST_DEFERRED)
            .annotate(list_review_state=F("review__state"),  # mergehub/reviews; None: never requested
                      list_expert_bytes_read=KeyTransform("expert_bytes_read", "metrics"),
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


# --- compare ----------------------------------------------------------------------------------

COMPARE_MIN, COMPARE_MAX = 2, 8  # runs on one compare page
COMPARE_CHOICES = 20  # the team's recent runs a run report offers to compare with
ID_MAX_DIGITS = 18  # longer is no run id (and would overflow the database's integer)
MISSING = "—"


def compare_ids(values) -> list[int]:
    """The run ids of a compare page's query: ``?ids=3,5,8`` (or ``ids`` repeated, as a form of
    checkboxes sends it), in the order given, repeats dropped. A token that is no id answers
    Http404 as a missing run does; fewer than COMPARE_MIN or more than COMPARE_MAX runs is a
    ValidationError that says so (checked before any run is looked up, so it tells nothing)."""
    ids: list[int] = []
    for value in values or []:
        for token in str(value).split(","):
            token = token.strip()
            if not token:
                continue
            if not token.isdigit() or len(token) > ID_MAX_DIGITS:
                raise Http404("No such run.")
            if int(token) not in ids:
                ids.append(int(token))
    if len(ids) < COMPARE_MIN:
        raise ValidationError(f"Choose at least {COMPARE_MIN} runs to compare "
                              f"({'one was' if len(ids) == 1 else 'none was'} given).")
    if len(ids) > COMPARE_MAX:
        raise ValidationError(f"Compare at most {COMPARE_MAX} runs at a time ({len(ids)} were given).")
    return ids


def compare_candidates(*, user, run: MergeRun, n: int = COMPARE_CHOICES) -> QuerySet[MergeRun]:
    """The runs a report offers to compare ``run`` with: the newest ``n`` other runs of its team."""
    return (runs_for(user=user, team=run.team).exclude(pk=run.pk).select_related(None)
            .only("pk", "name", "method", "budget", "status", "created_at")[:n])


@dataclass
class Comparison:
    """What the compare page shows. ``columns``: per run {"run", "label"}, in the order asked
    for; ``sections``: [{"title", "rows"}], a row {"key", "label", "values" (one display string
    per run), "differs"}; ``tasks`` and ``scores`` (per run {"label", "results": {task:
    EvalResult}}) for the score chart; ``differences``: how many rows differ."""

    columns: list[dict[str, Any]]
    sections: list[dict[str, Any]]
    tasks: list[str] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)
    differences: int = 0


def compare_runs(*, user, ids: list[int]) -> Comparison:
    """Runs side by side: configuration, plan and I/O, deviation, times and evaluation scores.

    Every id must be a run of one of the user's teams (Http404 otherwise, as for a missing run).
    Values are display strings; a row ``differs`` when its values do (ints and strings compared
    as stored, so a byte apart counts; measured floats as shown, so noise below the shown
    digits does not). Rows no run has a value for are left out, configuration rows aside."""
    found = {run.pk: run for run in runs_for(user=user).filter(pk__in=ids)}
    if any(pk not in found for pk in ids):
        raise Http404("No such run.")
    runs = [found[pk] for pk in ids]
    names = _checkpoint_names(user, runs)
    columns = [{"run": run, "label": f"#{run.pk} {run.name}"} for run in runs]

    tasks: list[str] = []
    scores = []
    for column in columns:
        merge = next((r for r in benchmark_for_run(column["run"]).rows if r["role"] == "merge"), None)
        results = dict(merge["results"]) if merge else {}
        tasks += [t for t in results if t not in tasks]
        scores.append({"label": column["label"], "results": results})

    sections = [
        {"title": "Configuration", "rows": _config_rows(runs, names)},
        {"title": "Plan and I/O", "rows": _drop_empty(_io_rows(runs))},
        {"title": "Deviation from the full-read merge", "rows": _drop_empty(_deviation_rows(runs))},
        {"title": "Time", "rows": _drop_empty(_time_rows(runs))},
        {"title": "Evaluation scores", "rows": _drop_empty(_score_rows(tasks, scores))},
    ]
    sections = [s for s in sections if s["rows"]]
    differences = sum(row["differs"] for s in sections for row in s["rows"])
    return Comparison(columns, sections, tasks, [s for s in scores if s["results"]], differences)


def _checkpoint_names(user, runs: list[MergeRun]) -> dict[int, str]:
    """{checkpoint id: name} of every input of these runs (one query)."""
    ids = {pk for run in runs for pk in ((run.config or {}).get("checkpoint_ids") or {}).values()}
    return dict(checkpoints_for(user=user).filter(pk__in=ids).values_list("pk", "name"))


def _row(key: str, label: str, raws: list, fmt=str) -> dict[str, Any]:
    shown = [MISSING if raw is None else fmt(raw) for raw in raws]
    keys = [raw if raw is None or isinstance(raw, (bool, int, str)) else text for raw, text in zip(raws, shown)]
    return {"key": key, "label": label, "values": shown, "differs": len(set(map(repr, keys))) > 1}


def _drop_empty(rows: list[dict]) -> list[dict]:
    return [r for r in rows if any(v != MISSING for v in r["values"])]


def _model_name(config: dict, path: str, names: dict[int, str]) -> str:
    pk = (config.get("checkpoint_ids") or {}).get(path)
    return names.get(pk) or str(path).rstrip("/").rsplit("/", 1)[-1] or str(path)


def _params_text(params: dict | None) -> str | None:
    if not params:
        return None
    return ", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(params.items()))


def _experts_text(run: MergeRun, names: dict[int, str]) -> str | None:
    """One line per expert: its name and parameters (weight first), in the config's order."""
    config = run.config or {}
    lines = []
    for model in config.get("models") or []:
        params = dict(model.get("parameters") or {})
        weight = params.pop("weight", None)
        text = _model_name(config, model.get("model", ""), names)
        if weight is not None:
            text += f" × {json.dumps(weight)}"
        if params:
            text += f" ({_params_text(params)})"
        lines.append(text)
    return "\n".join(lines) or None


def _sketch_rank_text(run: MergeRun) -> str:
    """As asked for; blank asks for the method's default, whose rank the plan records."""
    rank = run.sketch_rank
    if rank is None:
        rank = (run.plan or {}).get("sketch_rank")
        return "the method's default" + ("" if rank is None else f": {_sketch_rank_text_of(rank)}")
    return _sketch_rank_text_of(rank)


def _sketch_rank_text_of(rank: int) -> str:
    return "0 (off: exact blocks only)" if rank == 0 else str(rank)


def _config_rows(runs: list[MergeRun], names: dict[int, str]) -> list[dict]:
    def base(run):
        path = (run.config or {}).get("base_model")
        return _model_name(run.config or {}, path, names) if path else None

    def budget(run):
        budget_bytes = (run.plan or {}).get("budget_bytes")
        return run.budget + (f" ({human_bytes(budget_bytes)})" if budget_bytes is not None else "")

    return [
        _row("status", "Status", [run.get_status_display() for run in runs]),
        _row("method", "Method", [run.method for run in runs]),
        _row("base", "Base", [base(run) for run in runs]),
        _row("experts", "Experts and weights", [_experts_text(run, names) for run in runs]),
        _row("parameters", "Parameters", [_params_text((run.config or {}).get("parameters")) for run in runs]),
        _row("budget", "Budget", [budget(run) for run in runs]),
        _row("seed", "Seed", [run.seed for run in runs]),
        _row("block_size", "Block size", [run.block_size if run.block_size is not None
                                          else (run.plan or {}).get("block_size") for run in runs], human_bytes),
        _row("sketch_rank", "Sketch rank", [_sketch_rank_text(run) for run in runs]),
    ]


def _numbers(run: MergeRun) -> dict:
    """The run's measured numbers, or its plan's before it has any."""
    metrics = run.metrics or {}
    return metrics if "planned_expert_bytes" in metrics else (run.plan or {})


def _io_rows(runs: list[MergeRun]) -> list[dict]:
    numbers = [_numbers(run) for run in runs]
    metrics = [run.metrics or {} for run in runs]
    splits = [sketch_split(n) for n in numbers]

    def planned(n):
        value, full = n.get("planned_expert_bytes"), n.get("full_expert_bytes")
        if value is None:
            return None
        return human_bytes(value) + (f" ({percent(value, full)} of full)" if full else "")

    def blocks(n):
        if n.get("blocks_planned") is None:
            return None
        return f"{n['blocks_planned']} of {n.get('blocks_total', '?')}"

    return [
        _row("full_expert_bytes", "Full expert bytes", [n.get("full_expert_bytes") for n in numbers], human_bytes),
        _row("budget_bytes", "Budget in bytes", [n.get("budget_bytes") for n in numbers], human_bytes),
        {**_row("planned_expert_bytes", "Planned expert bytes", [n.get("planned_expert_bytes") for n in numbers]),
         "values": [planned(n) or MISSING for n in numbers]},
        _row("planned_blocks", "… of which exact blocks", [s["blocks"] if s else None for s in splits], human_bytes),
        _row("planned_sketches", "… of which low-rank sketches",
             [(s["sketches"], s["count"], s["rank"]) if s else None for s in splits],
             lambda v: f"{human_bytes(v[0])} in {v[1]} sketch{'es' if v[1] != 1 else ''} of rank ≤ {v[2]}"),
        _row("blocks_planned", "Blocks planned", [blocks(n) for n in numbers]),
        _row("expert_bytes_read", "Expert bytes read from storage", [m.get("expert_bytes_read") for m in metrics],
             human_bytes),
        _row("sketch_bytes_read", "Sketch bytes read from storage", [m.get("sketch_bytes_read") for m in metrics],
             human_bytes),
        _row("base_bytes_read", "Base bytes read from storage", [m.get("base_bytes_read") for m in metrics],
             human_bytes),
        _row("bytes_written", "Bytes written", [m.get("bytes_written") for m in metrics], human_bytes),
        _row("certificate", "Certificate (bound on ‖θ_A − θ_full‖₂)", [n.get("certificate") for n in numbers],
             lambda v: f"≤ {float(v):.4g}"),
        _row("plan_digest", "Plan digest", [(run.plan or {}).get("plan_digest") for run in runs],
             lambda v: str(v)[:16]),
    ]


def _deviation_rows(runs: list[MergeRun]) -> list[dict]:
    deviations = [(run.metrics or {}).get("deviation") or {} for run in runs]
    return [_row(f"deviation_{key}", label, [d.get(key) for d in deviations], lambda v: f"{float(v):.3g}")
            for key, label in (("update_relative", "Relative to the update (‖Δ_A − Δ_full‖ / ‖Δ_full‖)"),
                               ("weight_relative", "Relative to the weights"))]


TIME_ROWS = (("plan", "Plan"), ("read", "Read"), ("compute", "Compute"), ("write", "Write"), ("total", "Total"))


def _time_rows(runs: list[MergeRun]) -> list[dict]:
    seconds = [(run.metrics or {}).get("seconds") or {} for run in runs]
    return [_row(f"seconds_{key}", label, [s.get(key) for s in seconds], lambda v: human_seconds(float(v)))
            for key, label in TIME_ROWS]


def _score_rows(tasks: list[str], scores: list[dict]) -> list[dict]:
    def shown(result) -> float | None:
        return None if result is None else result.score

    def fmt(result):
        return f"{result.score:.3f} [{result.ci_low:.3f}–{result.ci_high:.3f}] {result.metric}"

    rows = []
    for i, task in enumerate(tasks):
        results = [s["results"].get(task) for s in scores]
        row = _row(f"score_{i}", task, [shown(r) for r in results], lambda v: f"{v:.3f}")
        rows.append({**row, "values": [MISSING if r is None else fmt(r) for r in results]})
    return rows
