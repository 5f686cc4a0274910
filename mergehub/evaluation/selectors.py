"""Reads for evaluation, always scoped to the teams the user belongs to (a page asking for
another team's object gets a 404), and the rows the report and chart builders take."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404
from django.urls import reverse

from mergehub.accounts.models import Team
from mergehub.accounts.selectors import teams_for
from mergehub.registry.models import Checkpoint
from mergehub.runs.models import MergeRun

from .models import EvalResult, EvalTask, EvaluationJob, FamilyJob, SweepJob

RECENT_JOBS_SCANNED = 50  # evaluations searched for a checkpoint's latest fingerprint

# A sweep point's mode (the engine's sweep rows): plans that may read low-rank sketches in
# place of blocks, or exact blocks only. Points of sweeps from before sketches have no mode.
SKETCH, BLOCKS = "sketch", "blocks"
MODE_LABELS = {SKETCH: "sketch + blocks", BLOCKS: "blocks only"}


def _scoped(model, user, team: Team | None = None) -> QuerySet:
    qs = model.objects.filter(team__in=teams_for(user))
    return qs.filter(team=team) if team is not None else qs


def _get(model, user, pk, what: str):
    obj = _scoped(model, user).filter(pk=pk).select_related("team").first()
    if obj is None:
        raise Http404(f"No such {what}.")
    return obj


def tasks_for(*, user, team: Team | None = None) -> QuerySet[EvalTask]:
    return _scoped(EvalTask, user, team).select_related("added_by").order_by("name", "pk")


def get_task(*, user, pk) -> EvalTask:
    return _get(EvalTask, user, pk, "task")


def tasks_by_reference(*, team: Team, refs, field: str = "tasks") -> list[EvalTask]:
    """The team's tasks that ``refs`` name, by id or by name, in the order given (repeats
    dropped). A reference to no task of the team (another team's included, so nothing tells
    whether it exists) is a ValidationError keyed by ``field`` that names it."""
    if refs is None:
        return []
    if not isinstance(refs, (list, tuple)):
        raise ValidationError({field: "List the tasks by id or name, e.g. [3, \"arith\"]."})
    team_tasks = EvalTask.objects.filter(team=team)
    chosen: list[EvalTask] = []
    for ref in refs:
        task = None
        if isinstance(ref, int) and not isinstance(ref, bool):
            task = team_tasks.filter(pk=ref).first()
        elif isinstance(ref, str) and ref.strip():
            task = team_tasks.filter(name=ref.strip()).first()
            if task is None and ref.strip().isdigit() and len(ref.strip()) <= 18:
                task = team_tasks.filter(pk=int(ref.strip())).first()
        if task is None:
            shown = repr(ref) if len(repr(ref)) <= 120 else repr(ref)[:117] + "…"
            raise ValidationError({field: f"{shown} is not one of your team's evaluation tasks (by id or name)."})
        if task not in chosen:
            chosen.append(task)
    return chosen


def get_evaluation(*, user, pk) -> EvaluationJob:
    return _get(EvaluationJob, user, pk, "evaluation")


def evaluations_for(*, user, team: Team | None = None) -> QuerySet[EvaluationJob]:
    return (_scoped(EvaluationJob, user, team).select_related("author", "run", "checkpoint")
            .defer("log", "subjects").order_by("-created_at", "-id"))


def get_sweep(*, user, pk) -> SweepJob:
    return _get(SweepJob, user, pk, "sweep")


def sweeps_for(*, user, team: Team | None = None) -> QuerySet[SweepJob]:
    return (_scoped(SweepJob, user, team).select_related("author")
            .defer("log", "points", "references", "config", "form_data").order_by("-created_at", "-id"))


def get_family_job(*, user, pk) -> FamilyJob:
    return _get(FamilyJob, user, pk, "training job")


def family_jobs_for(*, user, team: Team | None = None) -> QuerySet[FamilyJob]:
    return _scoped(FamilyJob, user, team).select_related("author", "family").order_by("-created_at", "-id")


# --- scores -----------------------------------------------------------------------------------

def results_by_task(team: Team, model_hash: str) -> dict[str, EvalResult]:
    """{task name: the newest stored score} of one model."""
    rows = EvalResult.objects.filter(team=team, model_hash=model_hash).order_by("created_at", "id")
    return {r.task_name: r for r in rows}


@dataclass
class Benchmark:
    """What a report's benchmark section shows."""

    job: EvaluationJob | None
    tasks: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # {"label", "role", "results": {task: EvalResult}}
    kept: list[dict[str, Any]] = field(default_factory=list)  # per expert: its best task and the share the merge keeps
    samples: list[dict[str, Any]] = field(default_factory=list)  # {"task", "label", "samples"}


def benchmark_for_job(job: EvaluationJob | None) -> Benchmark:
    if job is None:
        return Benchmark(None)
    tasks = list(job.tasks.order_by("name").values_list("name", flat=True))
    # a task deleted since the job ran is gone from job.tasks, but its scores stay (task=None)
    rows = [{"label": s["label"], "role": s["role"],
             "results": {t: r for t, r in results_by_task(job.team, s["model_hash"]).items()
                         if t in tasks or r.task_id is None}}
            for s in job.subjects or [] if s.get("model_hash")]
    # tasks deleted since the job ran still have their scores: name them from the results
    for row in rows:
        tasks += [t for t in row["results"] if t not in tasks]
    return Benchmark(job, tasks, rows, kept_shares(rows), _samples(rows))


def benchmark_for_run(run: MergeRun) -> Benchmark:
    """The newest evaluation of the run (the caller has checked access to the run)."""
    return benchmark_for_job(EvaluationJob.objects.filter(run=run).order_by("-created_at", "-id").first())


def kept_shares(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each expert: the task where it gains most over the base, its score there, the
    merge's, and the share of the expert's score the merge keeps."""
    merge = next((r for r in rows if r["role"] == "merge"), None)
    base = next((r for r in rows if r["role"] == "base"), None)
    if merge is None:
        return []
    kept = []
    for row in rows:
        if row["role"] != "expert" or not row["results"]:
            continue

        def gain(task: str) -> float:
            own = row["results"][task]
            ref = base["results"].get(task) if base else None
            delta = own.score - (ref.score if ref else 0.0)
            return delta if own.higher_is_better else -delta

        task = max(row["results"], key=gain)
        own, merged = row["results"][task], merge["results"].get(task)
        if merged is None:
            continue
        if own.higher_is_better:
            share = merged.score / own.score if own.score else None
        else:
            share = own.score / merged.score if merged.score else None
        kept.append({"expert": row["label"], "task": task, "expert_score": own.score,
                     "merge_score": merged.score, "share": share})
    return kept


def _samples(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The merge's samples first (what a reviewer reads), then a checkpoint's."""
    chosen = next((r for r in rows if r["role"] in ("merge", "checkpoint")), None)
    if chosen is None:
        return []
    return [{"task": task, "label": chosen["label"], "samples": [readable_sample(x) for x in result.samples]}
            for task, result in sorted(chosen["results"].items()) if result.samples]


def readable_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """One stored sample as a row of prompt, output, target and verdict, whatever the task kind
    (exact match: the decoded output; choice: the picked and the right choice; perplexity: the
    text and its perplexity)."""
    if "choices" in sample:
        choices = sample.get("choices") or []

        def choice(i):
            return choices[i] if isinstance(i, int) and 0 <= i < len(choices) else i

        return {"prompt": sample.get("prompt", ""), "output": choice(sample.get("picked")),
                "target": choice(sample.get("answer")), "correct": sample.get("correct")}
    if "perplexity" in sample:
        return {"prompt": sample.get("text", ""), "output": f"perplexity {sample['perplexity']:.2f}",
                "target": "", "correct": None}
    return {"prompt": sample.get("prompt", ""), "output": sample.get("output", ""),
            "target": sample.get("target", ""), "correct": sample.get("correct")}


def checkpoint_fingerprint(checkpoint: Checkpoint) -> str | None:
    """The content fingerprint the newest evaluation that scored this checkpoint found."""
    jobs = (EvaluationJob.objects.filter(team=checkpoint.team, status=EvaluationJob.Status.SUCCEEDED)
            .order_by("-finished_at", "-id").only("subjects")[:RECENT_JOBS_SCANNED])
    for job in jobs:
        for subject in job.subjects or []:
            if subject.get("checkpoint_id") == checkpoint.pk and subject.get("model_hash"):
                return subject["model_hash"]
    return None


def checkpoint_scores(checkpoint: Checkpoint) -> dict[str, EvalResult]:
    fingerprint = checkpoint_fingerprint(checkpoint)
    return results_by_task(checkpoint.team, fingerprint) if fingerprint else {}


def latest_checkpoint_evaluation(checkpoint: Checkpoint) -> EvaluationJob | None:
    return EvaluationJob.objects.filter(checkpoint=checkpoint).order_by("-created_at", "-id").first()


def sweep_points(sweep: SweepJob) -> list[dict[str, Any]]:
    """The sweep's points as its page and charts show them: each with its ``mode`` (a point of a
    sweep from before sketches: "blocks"), ``mode_label``, the split of its planned bytes
    (``sketch_bytes``, ``block_bytes``; 0 and all of them for a blocks-only plan) and the merge
    form's URL for its budget and sketch rank ("Start this merge": 0 for blocks only). A point
    with ``merged_with`` took the scores of the other mode's identical plan (sweeping.py)."""
    points = []
    for raw in sweep.points or []:
        point = dict(raw)
        mode = point.get("mode") or BLOCKS
        planned = int(point.get("planned_expert_bytes") or 0)
        sketch_bytes = int(point.get("sketch_bytes") or 0)
        rank = int(point.get("sketch_rank") or 0) if mode == SKETCH else 0
        point.update(mode=mode, mode_label=MODE_LABELS.get(mode, mode), sketch_bytes=sketch_bytes,
                     block_bytes=max(0, planned - sketch_bytes), sketch_rank=rank)
        if point.get("merged_with"):  # the runner merged this plan once, for the other mode
            point["merged_with_label"] = MODE_LABELS.get(point["merged_with"], point["merged_with"])
        query = {**(sweep.form_data or {}), "budget": point.get("budget"), "sketch_rank": rank}
        point["merge_url"] = reverse("runs:new") + "?" + urlencode(query, doseq=True)
        points.append(point)
    return points


def sweep_tasks(sweep: SweepJob) -> list[str]:
    names = list(sweep.tasks.order_by("name").values_list("name", flat=True))
    for point in sweep.points or []:
        names += [t for t in (point.get("scores") or {}) if t not in names]
    return names
