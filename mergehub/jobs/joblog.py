"""A job's log: timestamped lines in its row, capped at LOG_LIMIT."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from .models import LOG_LIMIT


def log_entry(msg: str) -> dict:
    return {"t": timezone.now().isoformat(timespec="seconds"), "msg": str(msg)}


def append_log(model, pk: int, *messages: str) -> None:
    """Append lines to a job's log under a row lock (the web process and the worker both write);
    past LOG_LIMIT lines the oldest are dropped and a marker line says how many."""
    with transaction.atomic():
        job = model.objects.select_for_update().only("log").get(pk=pk)
        lines = list(job.log or [])
        dropped = 0
        if lines and lines[0].get("dropped"):
            dropped = lines.pop(0)["dropped"]
        lines.extend(log_entry(m) for m in messages)
        excess = len(lines) - (LOG_LIMIT - 1)
        if excess > 0:
            dropped += excess
            lines = lines[excess:]
        if dropped:
            lines.insert(0, {**log_entry(f"… {dropped} earlier lines dropped"), "dropped": dropped})
        job.log = lines
        job.save(update_fields=["log"])
