"""The evaluation job's runner: score a merge run's output (and its base and experts, for
reference) or a checkpoint on the job's tasks, on the job's device, computing only the scores
the cache does not hold (see mergehub/jobs/runner.py for the life cycle every job shares)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from mergehub import scoring
from mergehub.engine.api import ConfigError, Progress
from mergehub.jobs.runner import JobRunner
from mergehub.registry import pinning
from mergehub.registry.models import Checkpoint
from mergehub.runs.runner import merge_device

from . import services
from .models import EvalResult, EvalTask, EvaluationJob
from .task_registry import load_registered


@dataclass
class Subject:
    """One model to score: where it is and what the report calls it."""

    label: str
    role: str  # "merge", "base", "expert", "checkpoint", "budget"
    path: Path
    ids: dict  # {"run_id": n} or {"checkpoint_id": n}
    model_hash: str = ""

    def record(self) -> dict:
        return {"label": self.label, "role": self.role, "model_hash": self.model_hash, **self.ids}


def checkpoint_subject(checkpoint: Checkpoint, role: str) -> Subject:
    """A registered checkpoint, its files checked against their pins first."""
    if not checkpoint.path:
        raise ConfigError(f"{checkpoint.name} has no files on disk yet; wait for its download and index")
    pinning.verify_checkpoint(checkpoint)
    return Subject(checkpoint.name, role, Path(checkpoint.path), {"checkpoint_id": checkpoint.pk})


class TaskScorer:
    """Scores models on registered tasks through the cache, reporting one progress bar over
    every model it is given (``plan`` first, then ``score`` each)."""

    def __init__(self, runner: JobRunner, team, tasks: list[EvalTask], device: str):
        """``device``: as runs.runner.merge_device gives it for the job's queue."""
        self.runner, self.team = runner, team
        self.tasks = [(task, load_registered(task)) for task in tasks]
        self.device = scoring.pick_device(device)
        self.done, self.total = 0, 0

    def stored(self, model_hash: str) -> dict[str, EvalResult | None]:
        """{task name: the stored score of this model on it, or None}."""
        return {task.name: services.cached_result(self.team, model_hash, parsed) for task, parsed in self.tasks}

    def missing(self, model_hash: str) -> list[tuple[EvalTask, scoring.Task]]:
        stored = self.stored(model_hash)
        return [(task, parsed) for task, parsed in self.tasks if stored[task.name] is None]

    def plan(self, subjects: list[Subject]) -> None:
        """Fingerprint every model and count the examples still to score."""
        for subject in subjects:
            self.runner.should_cancel()
            subject.model_hash = scoring.model_fingerprint(subject.path)
        self.total = sum(len(parsed.examples) or 1 for s in subjects for _, parsed in self.missing(s.model_hash))

    def score(self, subject: Subject) -> dict[str, float]:
        """Score one model on every task (stored ones are reused); {task name: score}."""
        if not subject.model_hash:
            subject.model_hash = scoring.model_fingerprint(subject.path)
        results = self.stored(subject.model_hash)
        todo = [(task, parsed) for task, parsed in self.tasks if results[task.name] is None]
        if not todo:
            self.runner.note(f"{subject.label}: every score was already stored; nothing to compute")
        else:
            self.runner.note(f"{subject.label}: scoring {', '.join(t.name for t, _ in todo)} on {self.device}")
            start = self.done

            def progress(p: Progress) -> None:
                self.done = start + p.done
                self.runner.on_progress(Progress("evaluate", self.done, max(self.total, self.done), "examples",
                                                 f"{subject.label}: {p.message}" if p.message else subject.label))

            scores = scoring.evaluate_model(
                subject.path, [parsed for _, parsed in todo], device=self.device,
                batch_size=settings.MERGEHUB_EVAL_BATCH_SIZE, sample_size=settings.MERGEHUB_EVAL_SAMPLES,
                progress=progress, cancel=self.runner.should_cancel)
            for (task, parsed), score in zip(todo, scores):
                results[task.name] = services.store_score(self.team, subject.model_hash, parsed, task, score)
                self.runner.note(f"{subject.label} · {task.name}: {score.metric} {score.score:.3f} "
                                 f"(95% CI {score.ci_low:.3f}–{score.ci_high:.3f}, n={score.n}, {score.seconds:.1f} s)")
            self.done = start + sum(len(parsed.examples) or 1 for _, parsed in todo)
        return {name: result.score for name, result in results.items()}


class EvaluationRunner(JobRunner):
    model = EvaluationJob
    kind = "evaluate"

    def work(self) -> dict:
        job = self.job
        tasks = list(job.tasks.order_by("name"))
        if not tasks:
            raise ConfigError("the tasks of this evaluation were deleted; choose tasks and evaluate again")
        device, note = merge_device(job.queue)
        if note:
            self.note(note)
        scorer = TaskScorer(self, job.team, tasks, device)
        subjects = self._subjects()
        scorer.plan(subjects)
        for subject in subjects:
            scorer.score(subject)
        return {"subjects": [s.record() for s in subjects]}

    def _subjects(self) -> list[Subject]:
        job = self.job
        if job.checkpoint_id is not None:
            return [checkpoint_subject(Checkpoint.objects.select_related("team").get(pk=job.checkpoint_id),
                                       "checkpoint")]
        run = job.run
        out = Path(run.output_path or "")
        if not run.output_path or not out.is_dir():
            raise ConfigError(f"run #{run.pk}'s merged model is not on disk any more ({run.output_path or 'none'}); "
                              "retry the run to merge it again, then evaluate that run")
        subjects = [Subject(f"merge (run #{run.pk})", "merge", out, {"run_id": run.pk})]
        if job.with_references:
            if run.base is not None:
                subjects.append(checkpoint_subject(run.base, "base"))
            for expert in run.experts.order_by("name"):
                subjects.append(checkpoint_subject(expert, "expert"))
        return subjects

    def success_log(self, fields: dict) -> list[str]:
        return [f"succeeded: scored {len(fields['subjects'])} model(s) on {self.job.tasks.count()} task(s)"]
