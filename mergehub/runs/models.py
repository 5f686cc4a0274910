"""Merge runs. A run row is the seam between the queue and the UI: the worker writes status,
progress, log, metrics and error here and the pages only ever read the row."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from mergehub.accounts.models import Team
from mergehub.jobs.models import Job, job_constraints, job_indexes
from mergehub.registry.models import Checkpoint

from .figures import bytes_saved


TAGS_MAX_CHARS = 500  # the stored, comma-separated tags


class MergeRun(Job):
    """A merge job: what to merge (config, budget, seed) and what came of it (plan, metrics,
    manifest, output). Status, progress, log and times are the job's (mergehub/jobs)."""

    runner_kind = "merge"

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
    # rank of the low-rank delta sketches a budgeted plan may use: None = the method's default
    # (engine.merge_sketch_rank), 0 = off; the metrics say which rank the merge used
    sketch_rank = models.PositiveSmallIntegerField(null=True, blank=True)
    measure_deviation = models.BooleanField(default=False)

    plan = models.JSONField(default=dict, blank=True)  # engine PlanReport.to_dict() of the plan that ran
    metrics = models.JSONField(default=dict, blank=True)
    manifest = models.JSONField(default=dict, blank=True)
    output_path = models.TextField(blank=True)
    expert_bytes_saved = models.BigIntegerField(null=True, blank=True)  # bytes_saved(metrics), for sums
    retry_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True,
                                 related_name="retries")
    # ids of the team's evaluation tasks to score the merged model on once the run succeeds
    # (mergehub/evaluation/receivers.py queues that evaluation)
    evaluate_task_ids = models.JSONField(default=list, blank=True)
    # the Idempotency-Key of the API request that created the run: the same request sent again
    # with that key (same team and author) gets this run back instead of a second one
    idempotency_key = models.CharField(max_length=200, blank=True, default="")
    # the team's own labels: tags normalised by services.set_run_notes ("nightly,llama-3": lower
    # case, no spaces around, no duplicates, comma-separated) and a plain-text note
    tags = models.CharField(max_length=TAGS_MAX_CHARS, blank=True, default="")
    note = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["team", "-created_at"], name="run_team_recent"),
            models.Index(fields=["team", "status", "-created_at"], name="run_team_status_recent"),
            models.Index(fields=["team", "method", "-created_at"], name="run_team_method_recent"),
            models.Index(fields=["team", "author", "-created_at"], name="run_team_author_recent"),
            # the dashboard's bytes-saved sum reads only this index, not the wide rows
            models.Index(fields=["team", "status", "expert_bytes_saved"], name="run_team_status_saved"),
            *job_indexes("run"),
        ]
        constraints = [
            *job_constraints("run"),
            models.UniqueConstraint(fields=["team", "author", "idempotency_key"],
                                    condition=~models.Q(idempotency_key=""), name="run_idempotency_key_once"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"

    @property
    def tag_list(self) -> list[str]:
        return [t for t in (self.tags or "").split(",") if t]

    @property
    def bytes_saved(self) -> int | None:
        return bytes_saved(self.metrics or {})
