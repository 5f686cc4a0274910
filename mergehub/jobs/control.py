"""What a user does to a job, whatever its kind: cancel it. (Retry is the kind's own service:
it re-plans or re-validates before queueing a new job.)"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from . import kinds
from .joblog import append_log
from .models import Job

Status = Job.Status


@transaction.atomic
def request_cancel(model: type[Job], pk: int, *, by, label: str) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop at its next block
    (its runner reads the flag). ``label`` names the job in messages ("Run #3")."""
    job = model.objects.select_for_update().get(pk=pk)
    if job.status == Status.QUEUED:
        job.status, job.cancel_requested, job.finished_at, job.stage = Status.CANCELLED, True, timezone.now(), "cancelled"
        job.save(update_fields=["status", "cancel_requested", "finished_at", "stage"])
        append_log(model, pk, f"cancelled by {by} before it started")
        kinds.runner_for(model.runner_kind).settle_related(job, Status.CANCELLED)  # as a runner's end does
    elif job.status == Status.RUNNING:
        if not job.cancel_requested:
            job.cancel_requested = True
            job.save(update_fields=["cancel_requested"])
            append_log(model, pk, f"cancel requested by {by}; stopping at the next block")
    else:
        raise ValidationError(f"{label} already {job.status}; there is nothing to cancel.")
    job.refresh_from_db()
    return job
