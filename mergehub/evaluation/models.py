"""Evaluation: the tasks a team scores models on, the scores (cached per model content, task
content and settings), and three job kinds on the job seam (mergehub/jobs): evaluate a model,
sweep a merge configuration over budgets, train the demo family."""

from __future__ import annotations

from django.conf import settings as conf
from django.db import models

from mergehub.accounts.models import Team
from mergehub.jobs.models import Job, job_constraints, job_indexes
from mergehub.registry.models import Checkpoint, Family


class EvalTask(models.Model):
    """A task file a team registered (or one of the demo family's built-in tasks). The file's
    content hash is taken at registration; scoring reads the file again and refuses it if the
    hash moved (mergehub.scoring.load_task computes it from the bytes it parses)."""

    class Kind(models.TextChoices):
        GENERATE = "generate", "Exact match (greedy decoding)"
        CHOICE = "choice", "Multiple choice (log-likelihood)"
        PERPLEXITY = "perplexity", "Perplexity (plain text)"
        LM_EVAL = "lm_eval", "lm-evaluation-harness YAML"

    class Source(models.TextChoices):
        BUILTIN = "builtin", "Built in"
        LOCAL = "local", "Local path"
        UPLOAD = "upload", "Uploaded"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="eval_tasks")
    name = models.CharField(max_length=100)
    description = models.CharField(max_length=300, blank=True)
    kind = models.CharField(max_length=12, choices=Kind.choices)
    metric = models.CharField(max_length=50)
    higher_is_better = models.BooleanField(default=True)
    settings = models.JSONField(default=dict, blank=True)  # normalised by mergehub.scoring
    settings_key = models.CharField(max_length=64)
    content_hash = models.CharField(max_length=64)
    n_examples = models.PositiveIntegerField(default=0)
    source = models.CharField(max_length=10, choices=Source.choices)
    path = models.TextField()  # the file read at evaluation (under the team's roots, or its tasks folder)
    added_by = models.ForeignKey(conf.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                 related_name="eval_tasks_added")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__name", "name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="unique_task_per_team")]

    def __str__(self) -> str:
        return self.name


class EvalResult(models.Model):
    """One model's score on one task. Unique per (team, model content, task content, settings):
    the same model and task are never evaluated twice."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="eval_results")
    model_hash = models.CharField(max_length=64)  # mergehub.scoring.model_fingerprint
    task = models.ForeignKey(EvalTask, on_delete=models.SET_NULL, null=True, blank=True, related_name="results")
    task_name = models.CharField(max_length=100)
    task_hash = models.CharField(max_length=64)
    settings_key = models.CharField(max_length=64)
    metric = models.CharField(max_length=50)
    higher_is_better = models.BooleanField(default=True)
    n = models.PositiveIntegerField()
    score = models.FloatField()
    ci_low = models.FloatField()
    ci_high = models.FloatField()
    samples = models.JSONField(default=list, blank=True)  # [{"prompt", "output", "target", "correct"}, ...]
    seconds = models.FloatField(default=0.0)
    device = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["task_name"]
        constraints = [models.UniqueConstraint(fields=["team", "model_hash", "task_hash", "settings_key"],
                                               name="unique_result_per_model_task_settings")]
        indexes = [models.Index(fields=["team", "model_hash"], name="evalresult_team_model")]

    def __str__(self) -> str:
        return f"{self.task_name}: {self.score:.3f} ({self.model_hash[:12]})"


class EvaluationJob(Job):
    """Score one model on some tasks: a merge run's output or a registered checkpoint. For a
    run, ``with_references`` also scores its base and experts (from the cache when they were
    scored before), so the report can compare. ``subjects`` records, as the job goes, what was
    scored: [{"label", "role", "checkpoint_id" | "run_id", "model_hash"}]."""

    runner_kind = "evaluate"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="evaluation_jobs")
    author = models.ForeignKey(conf.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                               related_name="evaluation_jobs")
    run = models.ForeignKey("runs.MergeRun", on_delete=models.CASCADE, null=True, blank=True,
                            related_name="evaluations")
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.CASCADE, null=True, blank=True,
                                   related_name="evaluations")
    tasks = models.ManyToManyField(EvalTask, related_name="evaluation_jobs")
    with_references = models.BooleanField(default=False)
    subjects = models.JSONField(default=list, blank=True)
    retry_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="retries")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["team", "-created_at"], name="evaljob_team_recent"),
            *job_indexes("evaljob"),
        ]
        constraints = [
            *job_constraints("evaljob"),
            models.CheckConstraint(condition=models.Q(run__isnull=True) ^ models.Q(checkpoint__isnull=True),
                                   name="evaljob_one_subject"),
        ]

    def __str__(self) -> str:
        return f"evaluation #{self.pk}"


class SweepJob(Job):
    """One merge configuration over a list of budgets: the engine's one-pass sweep gives each
    budget's plan and exact deviation; with tasks, each budget's merge is also written and
    scored. ``points`` holds one row per budget and mode (plan, deviation, bytes, scores);
    ``mode`` is "sketch" or "blocks" (points of sweeps from before sketches have no mode: blocks)."""

    runner_kind = "sweep"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="sweeps")
    author = models.ForeignKey(conf.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                               related_name="sweeps")
    name = models.CharField(max_length=200)
    method = models.CharField(max_length=50)
    config = models.JSONField(default=dict)  # as MergeRun.config (with "checkpoint_ids")
    base = models.ForeignKey(Checkpoint, on_delete=models.SET_NULL, null=True, blank=True,
                             related_name="sweeps_as_base")
    experts = models.ManyToManyField(Checkpoint, related_name="sweeps_as_expert", blank=True)
    budgets = models.JSONField(default=list)  # as typed, in order: ["0.1", "0.25", "512MB", "1"]
    seed = models.BigIntegerField(default=0)
    block_size = models.PositiveIntegerField(null=True, blank=True)
    # as MergeRun.sketch_rank; with sketches on, every budget is planned (and, with tasks, merged
    # and scored) twice: with sketches ("sketch" points) and with exact blocks only ("blocks")
    sketch_rank = models.PositiveSmallIntegerField(null=True, blank=True)
    tasks = models.ManyToManyField(EvalTask, related_name="sweeps", blank=True)
    points = models.JSONField(default=list, blank=True)
    references = models.JSONField(default=list, blank=True)  # base and experts: [{"label", "role", "model_hash"}]
    form_data = models.JSONField(default=dict, blank=True)  # the merge form as posted: a point's "start this merge"
    retry_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="retries")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["team", "-created_at"], name="sweep_team_recent"),
            *job_indexes("sweep"),
        ]
        constraints = job_constraints("sweep")

    def __str__(self) -> str:
        return f"sweep #{self.pk} {self.name}"


class FamilyJob(Job):
    """Train the demo family (mergehub.family) into the team's folder, then register its base,
    experts and built-in tasks. A family already trained there with the same seed and recipe
    is reused."""

    runner_kind = "train_family"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="family_jobs")
    author = models.ForeignKey(conf.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                               related_name="family_jobs")
    family_name = models.CharField(max_length=100)
    seed = models.BigIntegerField(default=0)
    out_dir = models.TextField()
    family = models.ForeignKey(Family, on_delete=models.SET_NULL, null=True, blank=True, related_name="training_jobs")
    summary = models.JSONField(default=dict, blank=True)  # the trained family's family.json
    retry_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="retries")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = job_indexes("familyjob")
        constraints = job_constraints("familyjob")

    def __str__(self) -> str:
        return f"family training #{self.pk} ({self.family_name})"
