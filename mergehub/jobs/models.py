"""The one record every background job keeps (NetBox style): kind, queue, status, stage,
progress, log, error, attempts, heartbeat and times. Concrete jobs (a merge run, an index job)
subclass ``Job`` and add what they are about (their Meta lists ``job_indexes`` and
``job_constraints``, named after the table); the runner (runner.py) writes these fields and
the pages only ever read them."""

from __future__ import annotations

from django.db import models

LOG_LIMIT = 1000  # log lines kept per job; older lines are dropped (and a marker says so)


def job_indexes(prefix: str) -> list[models.Index]:
    """The indexes every job table needs, named ``<prefix>_…``: the order the dispatcher claims
    queued jobs in, and the running jobs' heartbeats the reaper scans."""
    return [models.Index(fields=["status", "queue", "created_at"], name=f"{prefix}_claim_order"),
            models.Index(fields=["status", "heartbeat_at"], name=f"{prefix}_heartbeats")]


def job_constraints(prefix: str) -> list[models.CheckConstraint]:
    """The checks every job table holds: progress stays within [0, 1]."""
    return [models.CheckConstraint(condition=models.Q(progress__gte=0.0) & models.Q(progress__lte=1.0),
                                   name=f"{prefix}_progress_in_unit_range")]


class Job(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    queue = models.CharField(max_length=20, default="cpu")  # the worker pool that takes it
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=50, blank=True)
    progress = models.FloatField(default=0.0)  # 0..1
    log = models.JSONField(default=list, blank=True)  # [{"t": iso, "msg": str}], append only
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)  # times a worker claimed it
    worker = models.CharField(max_length=200, blank=True)  # "host pid N" of the last claim
    cancel_requested = models.BooleanField(default=False)

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    runner_kind = ""  # set by each concrete model: the kind its runner registers (jobs/kinds.py)

    class Meta:
        abstract = True

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED
