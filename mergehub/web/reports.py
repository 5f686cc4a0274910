"""Numbers a run page derives from a plan or a run's metrics (the dicts the engine returns)."""

from __future__ import annotations


def with_checkpoint_names(rows, names: dict[str, str]) -> list[dict]:
    """The engine names models by path; show the names the checkpoints were registered under."""
    out = []
    for row in rows or []:
        label = names.get(str(row.get("path", ""))) or names.get(str(row.get("name", "")))
        out.append({**row, "name": label} if label else dict(row))
    return out


def served_from_cache(metrics: dict) -> int:
    """Planned expert bytes that storage did not serve (the kernel had them cached)."""
    planned, read = metrics.get("planned_expert_bytes"), metrics.get("expert_bytes_read")
    if planned is None or read is None:
        return 0
    return max(0, int(planned) - int(read))


def savings_of(numbers: dict | None) -> dict | None:
    """Planned vs full expert bytes: {"full", "planned", "skipped", "percent_planned"}."""
    numbers = numbers or {}
    full, planned = numbers.get("full_expert_bytes"), numbers.get("planned_expert_bytes")
    if full is None or planned is None:
        return None
    full, planned = int(full), int(planned)
    return {"full": full, "planned": planned, "skipped": max(0, full - planned),
            "percent_planned": round(100.0 * planned / full, 1) if full else 0.0}
