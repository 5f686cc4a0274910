"""The tasks django-q2 workers run. Thin: the database is the queue (mergehub/jobs/dispatch.py);
a task is a wake-up that runs the job it names, or the oldest queued one of its queue."""

from __future__ import annotations

from mergehub.jobs import dispatch


def run_next_job(queue: str, kind: str | None = None, pk: int | None = None) -> str:
    """Run one queued job of ``queue``; returns its final status, or "idle"."""
    return dispatch.run_next_job(queue, kind, pk)
