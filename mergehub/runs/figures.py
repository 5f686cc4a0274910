"""The figures a run's pages show, each defined once, over the plain dicts the engine returns: a
plan (``Plan.to_dict()``, a sweep point) or a run's ``metrics``. The report page
(mergehub/runs/report.py), its charts (charts.py), the runner's log line, the dashboard's sum and
the model card all take their numbers from here.

- ``plan_savings``: what the *plan* leaves unread (full − planned expert bytes).
- ``bytes_saved``: what the *run* spared, counted at every read (full − requested).
- ``sketch_split``: the planned expert bytes split into low-rank sketches and exact blocks.
- ``served_from_cache``: planned bytes storage did not serve (the page cache had them).
- ``base_only_warning``: why a plan's merge would equal the base.
"""

from __future__ import annotations

from mergehub.engine import api as engine


def plan_savings(numbers: dict | None) -> dict | None:
    """Planned vs full expert bytes: {"full", "planned", "skipped", "percent_planned"}; None
    when either number is missing."""
    numbers = numbers or {}
    full, planned = numbers.get("full_expert_bytes"), numbers.get("planned_expert_bytes")
    if full is None or planned is None:
        return None
    full, planned = int(full), int(planned)
    return {"full": full, "planned": planned, "skipped": max(0, full - planned),
            "percent_planned": round(100.0 * planned / full, 1) if full else 0.0}


def bytes_saved(metrics: dict) -> int | None:
    """Expert bytes a run spared: full expert bytes minus the expert-derived bytes the engine
    requested (counted at every read): the exact blocks from the expert files plus the low-rank
    sketches from the catalog, which count against the budget as well. Not storage reads: a
    warm page cache makes those 0 whatever the plan, and the saving would look total. A run from
    before requests were counted falls back to its plan (sketches included)."""
    full = metrics.get("full_expert_bytes")
    if "expert_bytes_requested" in metrics:
        requested = metrics["expert_bytes_requested"]
        if requested is not None:
            requested = int(requested) + int(metrics.get("sketch_bytes_requested") or 0)
    else:
        requested = metrics.get("planned_expert_bytes")  # sketches included
    if full is None or requested is None:
        return None
    return max(0, int(full) - int(requested))


def sketch_split(numbers: dict | None) -> dict | None:
    """How planned expert bytes split between low-rank sketches and exact blocks, for a plan
    (Plan.to_dict(), a sweep point: ``sketch_bytes``) or a run's metrics (``planned_sketch_bytes``,
    with the sketch bytes requested and read from storage): {"total", "sketches", "blocks",
    "count", "rank", "requested", "read"}. None when no sketch was planned (sketches off, none
    worth it at this budget, or a run from before sketches)."""
    numbers = numbers or {}
    sketches = numbers.get("planned_sketch_bytes", numbers.get("sketch_bytes"))
    if not sketches:
        return None
    total = int(numbers.get("planned_expert_bytes") or 0)
    return {"total": total, "sketches": int(sketches), "blocks": max(0, total - int(sketches)),
            "count": int(numbers.get("sketches_planned") or 0), "rank": int(numbers.get("sketch_rank") or 0),
            "requested": numbers.get("sketch_bytes_requested"), "read": numbers.get("sketch_bytes_read")}


def served_from_cache(metrics: dict) -> int:
    """Planned expert bytes that storage did not serve (the kernel had them cached): the plan's
    exact blocks and sketches less what storage served of each."""
    planned, read = metrics.get("planned_expert_bytes"), metrics.get("expert_bytes_read")
    if planned is None or read is None:
        return 0
    return max(0, int(planned) - int(read) - int(metrics.get("sketch_bytes_read") or 0))


def base_only_warning(plan: dict | None) -> str | None:
    """The engine's warning for a plan (Plan.to_dict()) that reads no expert byte although the
    experts differ from the base, so that the merge would equal the base; None otherwise."""
    plan = plan or {}
    if plan.get("planned_expert_bytes") is None:
        return None
    return engine.base_only_warning(str(plan.get("budget", "")), int(plan["planned_expert_bytes"]),
                                    int(plan.get("nonzero_expert_bytes") or 0))
