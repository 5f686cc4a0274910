"""Queueing evaluations: who may, what may be evaluated (a succeeded run, a ready checkpoint,
the team's own tasks), cancel, retry, and the score cache's writes."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import Http404

from mergehub import scoring
from mergehub.evaluation import services
from mergehub.evaluation.models import EvalResult, EvaluationJob
from mergehub.evaluation.task_registry import register_task
from mergehub.runs.services import create_run

from .conftest import lm_merge_inputs

pytestmark = pytest.mark.django_db
Status = EvaluationJob.Status


def _rival_task(rival, mallory, task_file):
    return register_task(team=rival, user=mallory, name="theirs",
                         upload=SimpleUploadedFile("t.jsonl", task_file.read_bytes()))


# --- queueing ---------------------------------------------------------------------------------

def test_queue_an_evaluation_of_a_checkpoint(registered_lm, reverse_task, carol, acme,
                                             django_capture_on_commit_callbacks):
    base = registered_lm["base"]
    with django_capture_on_commit_callbacks() as wakeups:
        job = services.queue_evaluation(user=carol, team=acme, tasks=[reverse_task], checkpoint=base)
    assert len(wakeups) == 1  # one wake-up, after commit
    assert job.status == Status.QUEUED and job.queue == "cpu" and job.author == carol
    assert job.checkpoint == base and job.run is None and job.with_references is False  # only runs have references
    assert list(job.tasks.all()) == [reverse_task]
    assert f"queued by carol on the cpu queue: {base.name} on reverse" in job.log[0]["msg"]


def test_a_run_that_has_not_succeeded_is_refused(registered_lm, reverse_task, alice, acme):
    run = create_run(user=alice, team=acme, **lm_merge_inputs(registered_lm))  # stays queued
    with pytest.raises(ValidationError, match=rf"Run #{run.pk} is queued; only a merged model can be evaluated"):
        services.queue_evaluation(user=alice, team=acme, tasks=[reverse_task], run=run)
    assert not EvaluationJob.objects.exists()


def test_a_checkpoint_that_is_not_ready_is_refused(registered_lm, reverse_task, alice, acme):
    expert = registered_lm["experts"][0]
    type(expert).objects.filter(pk=expert.pk).update(index_status="pending")
    expert.refresh_from_db()
    with pytest.raises(ValidationError, match="lm-expert-1 is not ready yet"):
        services.queue_evaluation(user=alice, team=acme, tasks=[reverse_task], checkpoint=expert)


def test_exactly_one_subject(lm_run, registered_lm, reverse_task, alice, acme):
    for kwargs in ({}, {"run": lm_run, "checkpoint": registered_lm["base"]}):
        with pytest.raises(ValidationError, match="Evaluate either a merge run or a checkpoint"):
            services.queue_evaluation(user=alice, team=acme, tasks=[reverse_task], **kwargs)


def test_no_tasks_is_refused(registered_lm, alice, acme):
    with pytest.raises(ValidationError, match="Choose at least one task"):
        services.queue_evaluation(user=alice, team=acme, tasks=[], checkpoint=registered_lm["base"])


def test_another_teams_objects_are_not_found(lm_run, registered_lm, reverse_task, task_file, alice, acme,
                                             rival, mallory):
    theirs = _rival_task(rival, mallory, task_file)
    # acme's run or checkpoint queued "for" mallory's team: as if it did not exist
    with pytest.raises(Http404):
        services.queue_evaluation(user=mallory, team=rival, tasks=[theirs], run=lm_run)
    with pytest.raises(Http404):
        services.queue_evaluation(user=mallory, team=rival, tasks=[theirs], checkpoint=registered_lm["base"])
    # rival's task on acme's checkpoint
    with pytest.raises(Http404):
        services.queue_evaluation(user=alice, team=acme, tasks=[reverse_task, theirs], checkpoint=registered_lm["base"])
    # and in acme's team, mallory has no role at all
    with pytest.raises(PermissionDenied):
        services.queue_evaluation(user=mallory, team=acme, tasks=[reverse_task], run=lm_run)
    assert not EvaluationJob.objects.exists()


def test_team_tasks_is_a_404_for_another_teams_id(reverse_task, task_file, acme, rival, mallory):
    theirs = _rival_task(rival, mallory, task_file)
    assert services.team_tasks(acme, [str(reverse_task.pk)]) == [reverse_task]
    with pytest.raises(Http404):
        services.team_tasks(acme, [reverse_task.pk, theirs.pk])
    with pytest.raises(Http404):
        services.team_tasks(acme, [10**6])


def test_a_viewer_may_not_evaluate(registered_lm, reverse_task, bob, acme):
    with pytest.raises(PermissionDenied, match="to evaluate models"):
        services.queue_evaluation(user=bob, team=acme, tasks=[reverse_task], checkpoint=registered_lm["base"])
    assert not EvaluationJob.objects.exists()


def test_an_unknown_queue_is_refused(registered_lm, reverse_task, alice, acme):
    with pytest.raises(ValidationError, match="No 'gpu' queue here"):
        services.queue_evaluation(user=alice, team=acme, tasks=[reverse_task], checkpoint=registered_lm["base"],
                                  queue="gpu")


# --- cancel and retry -------------------------------------------------------------------------

def test_cancel_a_queued_evaluation(registered_lm, reverse_task, carol, bob, acme):
    job = services.queue_evaluation(user=carol, team=acme, tasks=[reverse_task], checkpoint=registered_lm["base"])
    with pytest.raises(PermissionDenied):
        services.cancel_evaluation(job=job, user=bob)
    job = services.cancel_evaluation(job=job, user=carol)
    assert job.status == Status.CANCELLED and job.cancel_requested and job.finished_at is not None
    assert job.log[-1]["msg"] == "cancelled by carol before it started"
    with pytest.raises(ValidationError, match=rf"Evaluation #{job.pk} already cancelled"):
        services.cancel_evaluation(job=job, user=carol)


def test_an_active_evaluation_cannot_be_retried(registered_lm, reverse_task, alice, acme):
    job = services.queue_evaluation(user=alice, team=acme, tasks=[reverse_task], checkpoint=registered_lm["base"])
    with pytest.raises(ValidationError, match="is still queued; cancel it or wait"):
        services.retry_evaluation(job=job, user=alice)


def test_retry_queues_the_same_evaluation_again(registered_lm, reverse_task, alice, carol, bob, acme):
    job = services.queue_evaluation(user=alice, team=acme, tasks=[reverse_task], checkpoint=registered_lm["base"])
    job = services.cancel_evaluation(job=job, user=alice)
    with pytest.raises(PermissionDenied):
        services.retry_evaluation(job=job, user=bob)
    retry = services.retry_evaluation(job=job, user=carol)
    assert retry.pk != job.pk and retry.retry_of == job and retry.status == Status.QUEUED
    assert retry.checkpoint == job.checkpoint and list(retry.tasks.all()) == [reverse_task]
    assert retry.author == carol and f"(a retry of evaluation #{job.pk})" in retry.log[0]["msg"]


# --- the score cache --------------------------------------------------------------------------

def _score(parsed, value: float) -> scoring.TaskScore:
    return scoring.TaskScore(task=parsed.name, kind=parsed.kind, metric=parsed.metric,
                             content_hash=parsed.content_hash, settings=dict(parsed.settings), n=6, score=value,
                             ci_low=value / 2, ci_high=min(1.0, value * 2), higher_is_better=True,
                             samples=[{"prompt": "p", "output": "o", "target": "t", "correct": False}])


def test_store_score_keeps_the_first_row_for_a_key(reverse_task, acme, rival):
    from mergehub.evaluation.task_registry import load_registered

    parsed = load_registered(reverse_task)
    assert services.cached_result(acme, "m" * 64, parsed) is None
    first = services.store_score(acme, "m" * 64, parsed, reverse_task, _score(parsed, 0.5))
    again = services.store_score(acme, "m" * 64, parsed, reverse_task, _score(parsed, 0.25))  # a race's loser
    assert again.pk == first.pk and again.score == 0.5 and EvalResult.objects.count() == 1
    assert services.cached_result(acme, "m" * 64, parsed) == first
    assert (first.n, first.ci_low, first.ci_high, first.task_name) == (6, 0.25, 1.0, "reverse")
    # another team, model, task content or setting is another score
    assert services.cached_result(rival, "m" * 64, parsed) is None
    assert services.cached_result(acme, "n" * 64, parsed) is None
    other = scoring.load_task(reverse_task.path, name="reverse", settings={"max_new_tokens": 7})
    assert services.cached_result(acme, "m" * 64, other) is None
    services.store_score(acme, "m" * 64, other, reverse_task, _score(other, 0.75))
    assert EvalResult.objects.count() == 2
