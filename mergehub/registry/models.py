"""The checkpoint registry: families (a base and its tensor signature) and checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.db import models

from mergehub.accounts.models import Team
from mergehub.jobs.models import Job, job_constraints, job_indexes


class StorageRoot(models.Model):
    """A directory a site admin opened to one team for registering local checkpoints (besides
    the team's own folder under the data directory; see roots.py)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="storage_roots")
    path = models.CharField(max_length=4096, help_text="Absolute path of a directory on the workers and web "
                                                       "servers; symlinks are resolved when it is used.")
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__name", "path"]
        constraints = [models.UniqueConstraint(fields=["team", "path"], name="unique_root_per_team")]

    def __str__(self) -> str:
        return f"{self.path} ({self.team})"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from .roots import data_dir

        path = Path(self.path or "")
        if not path.is_absolute():
            raise ValidationError({"path": "Enter an absolute path."})
        real = Path(os.path.realpath(path))
        data = Path(os.path.realpath(data_dir()))
        if real == data or real.is_relative_to(data) or data.is_relative_to(real):
            raise ValidationError({"path": f"{path} overlaps MergeHub's data directory ({data}), which holds "
                                           "every team's files; choose a directory outside it."})


class Family(models.Model):
    """A base model and the coordinate signature every expert of it must share."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="families")
    name = models.CharField(max_length=100)
    base = models.OneToOneField("Checkpoint", on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="base_of")
    signature = models.JSONField(default=dict, blank=True)  # {tensor: [dtype, shape]}
    signature_digest = models.CharField(max_length=64, blank=True)
    tensor_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__name", "name"]
        verbose_name_plural = "families"
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="unique_family_per_team")]

    def __str__(self) -> str:
        return self.name


class Checkpoint(models.Model):
    class Role(models.TextChoices):
        BASE = "base", "Base"
        EXPERT = "expert", "Expert"

    class Source(models.TextChoices):
        LOCAL = "local", "Local path"
        HF = "hf", "Hugging Face"

    class IndexStatus(models.TextChoices):
        PENDING = "pending", "Pending"
        INDEXING = "indexing", "Indexing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="checkpoints")
    family = models.ForeignKey(Family, on_delete=models.SET_NULL, null=True, blank=True,
                               related_name="checkpoints")
    name = models.CharField(max_length=200)
    role = models.CharField(max_length=10, choices=Role.choices)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.LOCAL)
    local_path = models.TextField(blank=True)  # as the user typed it
    hf_repo_id = models.CharField(max_length=200, blank=True)
    hf_revision = models.CharField(max_length=200, blank=True)
    path = models.TextField(blank=True)  # the resolved local directory actually read
    size_bytes = models.BigIntegerField(default=0)  # weight bytes
    tensor_count = models.PositiveIntegerField(default=0)
    file_hashes = models.JSONField(default=dict, blank=True)  # {filename: sha256}
    # {filename: [device, inode, size, mtime_ns]} of each weight file, pinned at registration
    # (and at each index); a merge refuses files that changed or moved since (pinning.py)
    file_identity = models.JSONField(default=dict, blank=True)
    index_status = models.CharField(max_length=10, choices=IndexStatus.choices,
                                    default=IndexStatus.PENDING)
    index_error = models.TextField(blank=True)
    index_stats = models.JSONField(default=dict, blank=True)  # engine IndexSummary.to_dict()
    indexed_at = models.DateTimeField(null=True, blank=True)
    added_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                 blank=True, related_name="checkpoints_added")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__name", "name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="unique_checkpoint_per_team")]
        indexes = [models.Index(fields=["team", "index_status"])]

    def __str__(self) -> str:
        return self.name

    @property
    def is_ready(self) -> bool:
        return self.index_status == self.IndexStatus.READY

    @property
    def source_label(self) -> str:
        if self.source == self.Source.HF:
            return f"{self.hf_repo_id}@{self.hf_revision or 'main'}"
        return self.local_path


class IndexJob(Job):
    """One index of a checkpoint: a Hub download if needed, then (for an expert) a full read
    of expert and base into the block catalog. The checkpoint's ``index_status`` follows the
    latest job (the runner keeps them in step)."""

    runner_kind = "index"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="index_jobs")
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.CASCADE, related_name="index_jobs")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                               blank=True, related_name="index_jobs")
    retry_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True,
                                 related_name="retries")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["checkpoint", "-created_at"], name="indexjob_checkpoint_recent"),
            *job_indexes("indexjob"),
        ]
        constraints = job_constraints("indexjob")

    def __str__(self) -> str:
        return f"index #{self.pk} of {self.checkpoint_id}"
