"""Numbers a run page derives from a plan or a run's metrics (the dicts the engine returns)."""

from __future__ import annotations

from mergehub.engine.planner import base_only_warning


def with_checkpoint_names(rows, names: dict[str, str]) -> list[dict]:
    """The engine names models by path; show the names the checkpoints were registered under."""
    out = []
    for row in rows or []:
        label = names.get(str(row.get("path", ""))) or names.get(str(row.get("name", "")))
        out.append({**row, "name": label} if label else dict(row))
    return out


def served_from_cache(metrics: dict) -> int:
    """Planned expert bytes that storage did not serve (the kernel had them cached): the plan's
    exact blocks and sketches less what storage served of each."""
    planned, read = metrics.get("planned_expert_bytes"), metrics.get("expert_bytes_read")
    if planned is None or read is None:
        return 0
    return max(0, int(planned) - int(read) - int(metrics.get("sketch_bytes_read") or 0))


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


def savings_of(numbers: dict | None) -> dict | None:
    """Planned vs full expert bytes: {"full", "planned", "skipped", "percent_planned"}."""
    numbers = numbers or {}
    full, planned = numbers.get("full_expert_bytes"), numbers.get("planned_expert_bytes")
    if full is None or planned is None:
        return None
    full, planned = int(full), int(planned)
    return {"full": full, "planned": planned, "skipped": max(0, full - planned),
            "percent_planned": round(100.0 * planned / full, 1) if full else 0.0}


def base_only(plan: dict | None) -> str | None:
    """The engine's warning for a plan (Plan.to_dict()) that reads no expert byte although the
    experts differ from the base, so that the merge would equal the base; None otherwise."""
    plan = plan or {}
    if plan.get("planned_expert_bytes") is None:
        return None
    return base_only_warning(str(plan.get("budget", "")), int(plan["planned_expert_bytes"]),
                             int(plan.get("nonzero_expert_bytes") or 0))
