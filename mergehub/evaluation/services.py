"""Writes for evaluation jobs: queue one (a checkpoint, or a merge run with its base and
experts for reference), cancel, retry, and store scores in the cache they are read from.

Nothing is queued for inputs that cannot be scored: the tasks must be the team's, the run
must have succeeded, the checkpoint must be ready (its files on disk).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import Http404

from mergehub.accounts.models import Role, Team
from mergehub.accounts.services import require_role
from mergehub.jobs import dispatch
from mergehub.jobs.control import request_cancel
from mergehub.jobs.joblog import log_entry
from mergehub.registry.models import Checkpoint
from mergehub.runs.models import MergeRun
from mergehub.runs.services import check_queue

from .models import EvalResult, EvalTask, EvaluationJob


def team_tasks(team: Team, task_ids) -> list[EvalTask]:
    """The team's tasks with these ids, in id order; another team's id is a 404."""
    ids = {int(pk) for pk in task_ids or []}
    tasks = list(EvalTask.objects.filter(pk__in=ids, team=team).order_by("name"))
    if len(tasks) != len(ids):
        raise Http404("No such task.")
    return tasks


def _check_subject(team: Team, run: MergeRun | None, checkpoint: Checkpoint | None) -> str:
    if (run is None) == (checkpoint is None):
        raise ValidationError("Evaluate either a merge run or a checkpoint.")
    owner = run.team_id if run is not None else checkpoint.team_id
    if owner != team.pk:
        raise Http404("No such object.")
    if run is not None:
        if run.status != MergeRun.Status.SUCCEEDED or not run.output_path:
            raise ValidationError(f"Run #{run.pk} is {run.status}; only a merged model can be evaluated: wait for "
                                  "the merge to succeed (or retry it).")
        return f"run #{run.pk}"
    if not checkpoint.is_ready or not checkpoint.path:
        raise ValidationError(f"{checkpoint.name} is not ready yet ({checkpoint.index_status}); wait for its "
                              "index (or re-index it from its page).")
    return checkpoint.name


@transaction.atomic
def queue_evaluation(*, user, team: Team, tasks: list[EvalTask], run: MergeRun | None = None,
                     checkpoint: Checkpoint | None = None, with_references: bool = True,
                     queue: str | None = None, retry_of: EvaluationJob | None = None,
                     author_label: str | None = None) -> EvaluationJob:
    """Queue an evaluation of a run's merged model (with its base and experts when
    ``with_references``) or of a checkpoint, on ``tasks``."""
    require_role(user=user, team=team, role=Role.MEMBER, action="evaluate models")
    label = _check_subject(team, run, checkpoint)
    if not tasks:
        raise ValidationError({"tasks": "Choose at least one task."})
    if any(task.team_id != team.pk for task in tasks):
        raise Http404("No such task.")
    queue = check_queue(queue)
    job = EvaluationJob.objects.create(
        team=team, author=user, run=run, checkpoint=checkpoint, with_references=bool(with_references and run),
        queue=queue, stage="queued", retry_of=retry_of,
        log=[log_entry(f"queued by {author_label or user} on the {queue} queue: {label} on "
                       f"{', '.join(t.name for t in tasks)}"
                       + (f" (a retry of evaluation #{retry_of.pk})" if retry_of else ""))])
    job.tasks.set(tasks)
    dispatch.wake_on_commit(job)
    return job


def cancel_evaluation(*, job: EvaluationJob, user) -> EvaluationJob:
    require_role(user=user, team=job.team, role=Role.MEMBER, action="cancel evaluations")
    return request_cancel(EvaluationJob, job.pk, by=user, label=f"Evaluation #{job.pk}")


def retry_evaluation(*, job: EvaluationJob, user) -> EvaluationJob:
    """A new queued evaluation of the same model on the same tasks (scores already stored are
    reused, so only what is missing is computed)."""
    if job.is_active:
        raise ValidationError(f"Evaluation #{job.pk} is still {job.status}; cancel it or wait before retrying.")
    return queue_evaluation(user=user, team=job.team, tasks=list(job.tasks.all()), run=job.run,
                            checkpoint=job.checkpoint, with_references=job.with_references,
                            queue=job.queue, retry_of=job)


# --- the score cache --------------------------------------------------------------------------

def cached_result(team: Team, model_hash: str, task) -> EvalResult | None:
    """The stored score of this model on this task (file content and settings), if any."""
    return EvalResult.objects.filter(team=team, model_hash=model_hash, task_hash=task.content_hash,
                                     settings_key=task.settings_key()).first()


def store_score(team: Team, model_hash: str, parsed, task: EvalTask | None, score) -> EvalResult:
    """Store the mergehub.scoring.TaskScore of ``parsed`` (the scoring.Task that ``task`` was
    loaded as); when another job stored the same score meanwhile,
    that row is kept (both measured the same model on the same task)."""
    fields = dict(task=task, task_name=score.task, metric=score.metric, higher_is_better=score.higher_is_better,
                  n=score.n, score=score.score, ci_low=score.ci_low, ci_high=score.ci_high,
                  samples=score.samples, seconds=score.seconds, device=score.device)
    key = dict(team=team, model_hash=model_hash, task_hash=parsed.content_hash,
               settings_key=parsed.settings_key())
    try:
        with transaction.atomic():
            return EvalResult.objects.create(**key, **fields)
    except IntegrityError:
        return EvalResult.objects.get(**key)

