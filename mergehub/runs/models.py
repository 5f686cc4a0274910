"""Merge runs. A run row is the seam between the queue and the UI: the worker writes status,
progress, log, metrics and error here and the pages only ever read the row."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from mergehub.accounts.models import Team
from mergehub.registry.models import Checkpoint

LOG_LIMIT = 1000  # log lines kept per run; older lines are dropped (and a marker says so)


def bytes_saved(metrics: dict) -> int | None:
    """Expert bytes a run spared: full expert bytes minus the bytes the engine requested from
    the files (counted at every read). Not storage reads: a warm page cache makes those 0
    whatever the plan, and the saving would look total."""
    full = metrics.get("full_expert_bytes")
    requested = metrics.get("expert_bytes_requested", metrics.get("planned_expert_bytes"))
    if full is None or requested is None:
        return None
    return max(0, int(full) - int(requested))


class MergeRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="runs")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                               blank=True, related_name="merge_runs")
    name = models.CharField(max_length=200)
    method = models.CharField(max_length=50)
    # mergekit-style mapping (model paths are the checkpoints' resolved paths) plus
    # "checkpoint_ids": {path: checkpoint id}
    config = models.JSONField(default=dict)
    base = models.ForeignKey(Checkpoint, on_delete=models.SET_NULL, null=True, blank=True,
                             related_name="runs_as_base")
    experts = models.ManyToManyField(Checkpoint, related_name="runs_as_expert", blank=True)
    budget = models.CharField(max_length=50)  # as typed: "0.5" or "512MB"
    seed = models.BigIntegerField(default=0)
    block_size = models.PositiveIntegerField(null=True, blank=True)  # None = engine default
    measure_deviation = models.BooleanField(default=False)

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=50, blank=True)
    progress = models.FloatField(default=0.0)  # 0..1
    log = models.JSONField(default=list, blank=True)  # [{"t": iso, "msg": str}], append only
    plan = models.JSONField(default=dict, blank=True)  # engine PlanReport.to_dict()
    metrics = models.JSONField(default=dict, blank=True)
    manifest = models.JSONField(default=dict, blank=True)
    output_path = models.TextField(blank=True)
    error = models.TextField(blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    cancel_requested = models.BooleanField(default=False)
    retry_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True,
                                 related_name="retries")

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["team", "status"]), models.Index(fields=["status", "heartbeat_at"])]
        constraints = [
            models.CheckConstraint(condition=models.Q(progress__gte=0.0) & models.Q(progress__lte=1.0),
                                   name="run_progress_in_unit_range"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def bytes_saved(self) -> int | None:
        return bytes_saved(self.metrics or {})
