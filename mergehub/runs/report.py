"""What a run's report page and the merge form's plan preview render: the run's (or plan's)
numbers with the experts' registered names, the figures (figures.py, each defined once) and the
charts (charts.py). The views call one function and render the dict it returns."""

from __future__ import annotations

from mergehub.registry.selectors import checkpoints_for

from .charts import run_report_charts
from .figures import base_only_warning, plan_savings, served_from_cache, sketch_split
from .models import MergeRun


def with_checkpoint_names(rows, names: dict[str, str]) -> list[dict]:
    """The engine names models by path; show the names the checkpoints were registered under."""
    out = []
    for row in rows or []:
        label = names.get(str(row.get("path", ""))) or names.get(str(row.get("name", "")))
        out.append({**row, "name": label} if label else dict(row))
    return out


def checkpoint_names(*, user, run: MergeRun) -> dict[str, str]:
    """{model path in the run's config: checkpoint name} for the run's inputs the user can see."""
    ids = (run.config or {}).get("checkpoint_ids") or {}
    by_pk = dict(checkpoints_for(user=user, team=run.team).filter(pk__in=ids.values())
                 .values_list("pk", "name"))
    return {path: by_pk[pk] for path, pk in ids.items() if pk in by_pk}


def _named(numbers: dict | None, names: dict[str, str]) -> dict:
    numbers = dict(numbers or {})
    if "per_expert" in numbers:
        numbers["per_expert"] = with_checkpoint_names(numbers["per_expert"], names)
    return numbers


def run_report(*, user, run: MergeRun) -> dict:
    """The report section of a run's page (templates/runs/detail.html): ``metrics`` and ``plan``
    with checkpoint names, ``charts`` (a succeeded run's), ``savings`` (what the plan left
    unread: the run's numbers, or its plan's before it has any), ``from_cache``, and the sketch
    splits of the run (``sketches``) and of its plan (``planned_sketches``)."""
    names = checkpoint_names(user=user, run=run)
    metrics, plan = _named(run.metrics, names), _named(run.plan, names)
    return {
        "metrics": metrics, "plan": plan,
        "charts": run_report_charts(metrics) if run.status == MergeRun.Status.SUCCEEDED else [],
        "savings": plan_savings(metrics if "planned_expert_bytes" in metrics else run.plan),
        "from_cache": served_from_cache(metrics),
        "sketches": sketch_split(metrics), "planned_sketches": sketch_split(plan),
    }


def plan_preview(plan: dict | None, names: dict[str, str]) -> dict:
    """The merge form's plan preview (templates/runs/_preview.html) of an engine plan
    (Plan.to_dict(), or None when there is none): the plan with checkpoint names, its savings,
    its sketch split and the warning when the merge would equal the base."""
    plan = _named(plan, names) if plan is not None else None
    return {"plan": plan, "savings": plan_savings(plan), "sketches": sketch_split(plan),
            "base_only_warning": base_only_warning(plan)}
