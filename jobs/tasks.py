"""The tasks django-q2 workers run. Each takes a row id and delegates; the row is the record."""

from __future__ import annotations

from mergehub.registry import services as registry_services
from mergehub.runs import services as run_services
from mergehub.runs.runner import MergeRunner


def index_checkpoint(checkpoint_id: int) -> str | None:
    """Index an expert against its family's base (downloading a Hugging Face source first)."""
    run_services.reap_stale_runs()
    checkpoint = registry_services.index_checkpoint(
        checkpoint_id=checkpoint_id, progress=registry_services.progress_logger(checkpoint_id))
    return checkpoint.index_status if checkpoint else None


def run_merge(run_id: int) -> str:
    """Execute one queued merge run; returns its final status."""
    run_services.reap_stale_runs()
    return MergeRunner.execute(run_id)


def reap_stale_runs() -> int:
    """Scheduled every minute: fail runs whose worker stopped sending heartbeats."""
    return run_services.reap_stale_runs()
