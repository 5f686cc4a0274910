"""Evaluate a merge once it succeeds, when its form asked for it (MergeRun.evaluate_task_ids)."""

from __future__ import annotations

import logging

from django.db import transaction
from django.dispatch import receiver

from mergehub.jobs.joblog import append_log
from mergehub.runs.models import MergeRun
from mergehub.runs.signals import merge_settled

from .models import EvalTask, EvaluationJob
from .services import queue_evaluation

log = logging.getLogger(__name__)


@receiver(merge_settled, sender=MergeRun)
def evaluate_after_merge(sender, run: MergeRun, status: str, **kwargs) -> None:
    """Runs inside the run's final status write: a failure here is logged on the run and must
    never undo that write (hence the savepoint and the broad except)."""
    if status != MergeRun.Status.SUCCEEDED or not run.evaluate_task_ids:
        return
    if EvaluationJob.objects.filter(run=run).exists():  # the reaper may settle a run twice
        return
    try:
        with transaction.atomic():
            tasks = list(EvalTask.objects.filter(team=run.team_id, pk__in=run.evaluate_task_ids))
            if not tasks:
                append_log(MergeRun, run.pk, "the tasks chosen for evaluation were deleted; nothing to evaluate")
                return
            job = queue_evaluation(user=run.author, team=run.team, tasks=tasks, run=run, with_references=True,
                                   queue=run.queue, author_label=f"run #{run.pk}")
            append_log(MergeRun, run.pk, f"queued evaluation #{job.pk} on {', '.join(t.name for t in tasks)}")
    except Exception as err:  # noqa: BLE001 - the merge itself succeeded; say why no evaluation came
        log.exception("could not queue the evaluation of run %s", run.pk)
        try:
            with transaction.atomic():
                append_log(MergeRun, run.pk, f"could not queue its evaluation: {err}")
        except Exception:  # noqa: BLE001
            pass
