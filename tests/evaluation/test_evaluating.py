"""The evaluation job's runner: it scores a checkpoint or a merge (with its base and experts),
stores each score once, reuses stored ones, and fails with a clear message on inputs that
changed or went away. Evaluation after a merge is queued by the merge's success only."""

from __future__ import annotations

import json
import os

import pytest

from mergehub.evaluation import services
from mergehub.evaluation.models import EvalResult, EvaluationJob
from mergehub.runs.models import MergeRun
from mergehub.runs.runner import MergeRunner
from mergehub.runs.services import create_run
from mergehub.scoring import model_fingerprint

from .conftest import lm_merge_inputs

pytestmark = pytest.mark.django_db
Status = EvaluationJob.Status


def _evaluate(run_on_commit, **kwargs) -> EvaluationJob:
    with run_on_commit():
        job = services.queue_evaluation(**kwargs)
    job.refresh_from_db()
    return job


def _messages(job) -> list[str]:
    return [entry["msg"] for entry in job.log]


# --- a checkpoint -----------------------------------------------------------------------------

def test_evaluating_a_checkpoint_stores_its_scores(registered_lm, reverse_task, alice, acme, run_on_commit):
    base = registered_lm["base"]
    job = _evaluate(run_on_commit, user=alice, team=acme, tasks=[reverse_task], checkpoint=base)
    assert job.status == Status.SUCCEEDED, job.error
    assert job.progress == 1.0 and job.finished_at is not None
    fingerprint = model_fingerprint(base.path)
    assert job.subjects == [{"label": "lm-base", "role": "checkpoint", "model_hash": fingerprint,
                             "checkpoint_id": base.pk}]
    result = EvalResult.objects.get()
    assert (result.team, result.model_hash, result.task) == (acme, fingerprint, reverse_task)
    assert result.task_name == "reverse"
    assert (result.task_hash, result.settings_key) == (reverse_task.content_hash, reverse_task.settings_key)
    assert result.metric == "exact_match" and result.n == 6 and result.device == "cpu"
    assert 0.0 <= result.ci_low <= result.score <= result.ci_high <= 1.0 and result.ci_high > result.ci_low
    assert len(result.samples) == 6  # fewer examples than MERGEHUB_EVAL_SAMPLES: every one kept
    assert result.samples[0]["prompt"] == "reverse:abcd=" and result.samples[0]["target"] == "dcba"
    assert {"output", "correct"} <= set(result.samples[0])
    assert any(m.startswith("lm-base · reverse: exact_match ") and "n=6" in m for m in _messages(job))
    assert _messages(job)[-1] == "succeeded: scored 1 model(s) on 1 task(s)"


def test_evaluating_again_computes_nothing_new(registered_lm, reverse_task, alice, acme, run_on_commit):
    base = registered_lm["base"]
    first = _evaluate(run_on_commit, user=alice, team=acme, tasks=[reverse_task], checkpoint=base)
    stored = list(EvalResult.objects.values_list("pk", "score", "created_at"))
    second = _evaluate(run_on_commit, user=alice, team=acme, tasks=[reverse_task], checkpoint=base)
    assert second.status == Status.SUCCEEDED and second.subjects == first.subjects
    assert list(EvalResult.objects.values_list("pk", "score", "created_at")) == stored
    assert "lm-base: every score was already stored; nothing to compute" in _messages(second)
    assert not any("scoring" in m for m in _messages(second))


def test_retry_reuses_the_stored_scores(registered_lm, reverse_task, alice, acme, run_on_commit):
    first = _evaluate(run_on_commit, user=alice, team=acme, tasks=[reverse_task], checkpoint=registered_lm["base"])
    count = EvalResult.objects.count()
    with run_on_commit():
        retry = services.retry_evaluation(job=first, user=alice)
    retry.refresh_from_db()
    assert retry.pk != first.pk and retry.retry_of == first and retry.status == Status.SUCCEEDED
    assert EvalResult.objects.count() == count == 1
    assert "lm-base: every score was already stored; nothing to compute" in _messages(retry)


def test_a_checkpoint_changed_after_registration_fails_the_job(registered_lm, reverse_task, alice, acme,
                                                               run_on_commit):
    base = registered_lm["base"]
    weights = os.path.join(base.path, "model.safetensors")
    data = open(weights, "rb").read()
    os.remove(weights)
    with open(weights, "wb") as f:  # the same bytes in a new file
        f.write(data)
    job = _evaluate(run_on_commit, user=alice, team=acme, tasks=[reverse_task], checkpoint=base)
    assert job.status == Status.FAILED
    assert job.error == ("lm-base: model.safetensors changed since it was registered or last indexed; "
                         "re-index it (or register it again) before merging it")
    assert not EvalResult.objects.exists()


def test_a_task_file_changed_after_registration_fails_the_job(registered_lm, reverse_task, task_file, alice,
                                                              acme, run_on_commit):
    with task_file.open("a") as f:
        f.write(json.dumps({"prompt": "reverse:ab=", "target": "ba"}) + "\n")
    job = _evaluate(run_on_commit, user=alice, team=acme, tasks=[reverse_task], checkpoint=registered_lm["base"])
    assert job.status == Status.FAILED and "changed since it was registered" in job.error
    assert "register it again under a new name" in job.error and not EvalResult.objects.exists()


def test_deleted_tasks_fail_the_job(registered_lm, reverse_task, alice, acme, run_on_commit):
    job = services.queue_evaluation(user=alice, team=acme, tasks=[reverse_task], checkpoint=registered_lm["base"])
    reverse_task.delete()
    with run_on_commit():
        services.dispatch.wake_on_commit(job)
    job.refresh_from_db()
    assert job.status == Status.FAILED and "the tasks of this evaluation were deleted" in job.error


# --- the GPU queue ------------------------------------------------------------------------------

@pytest.fixture
def gpu_queue_without_cuda(settings, monkeypatch):
    import mergehub.runs.runner as merge_runner

    settings.MERGEHUB_QUEUES = ["cpu", "gpu"]
    monkeypatch.setattr(merge_runner.engine, "cuda_available", lambda: False)
    return settings


def test_the_gpu_queue_without_cuda_fails_clearly(registered_lm, reverse_task, alice, acme, run_on_commit,
                                                  gpu_queue_without_cuda):
    gpu_queue_without_cuda.MERGEHUB_GPU_FALLBACK_TO_CPU = False
    job = _evaluate(run_on_commit, user=alice, team=acme, tasks=[reverse_task], checkpoint=registered_lm["base"],
                    queue="gpu")
    assert job.queue == "gpu" and job.status == Status.FAILED
    assert "on the GPU queue but its worker has no CUDA device" in job.error
    assert "MERGEHUB_GPU_FALLBACK_TO_CPU" in job.error and not EvalResult.objects.exists()


def test_the_gpu_queue_may_fall_back_to_the_cpu(registered_lm, reverse_task, alice, acme, run_on_commit,
                                                gpu_queue_without_cuda):
    gpu_queue_without_cuda.MERGEHUB_GPU_FALLBACK_TO_CPU = True
    job = _evaluate(run_on_commit, user=alice, team=acme, tasks=[reverse_task], checkpoint=registered_lm["base"],
                    queue="gpu")
    assert job.status == Status.SUCCEEDED, job.error
    assert EvalResult.objects.get().device == "cpu"
    assert "lm-base: scoring reverse on cpu" in _messages(job)


# --- after a merge ------------------------------------------------------------------------------

def test_a_merge_asked_to_evaluate_queues_one_evaluation_with_its_references(evaluated_run, registered_lm):
    run, job, task = evaluated_run["run"], evaluated_run["job"], evaluated_run["task"]
    assert run.evaluate_task_ids == [task.pk]
    assert EvaluationJob.objects.count() == 1 and job.run == run and job.checkpoint is None
    assert job.with_references and list(job.tasks.all()) == [task] and job.author == run.author
    base, (e1, e2) = registered_lm["base"], registered_lm["experts"]
    assert [(s["label"], s["role"]) for s in job.subjects] == [
        (f"merge (run #{run.pk})", "merge"), ("lm-base", "base"), ("lm-expert-1", "expert"), ("lm-expert-2", "expert")]
    assert job.subjects[0]["run_id"] == run.pk and job.subjects[0]["model_hash"] == model_fingerprint(run.output_path)
    assert [s.get("checkpoint_id") for s in job.subjects[1:]] == [base.pk, e1.pk, e2.pk]
    # four different models, one score each
    assert EvalResult.objects.filter(task=task).values("model_hash").distinct().count() == 4
    assert f"queued evaluation #{job.pk} on reverse" in _messages(run)
    assert f"queued by run #{run.pk} on the cpu queue" in _messages(job)[0]


def test_a_merge_not_asked_to_evaluate_queues_none(lm_run):
    assert lm_run.evaluate_task_ids == [] and not EvaluationJob.objects.exists()


def test_evaluating_a_run_reuses_the_references_scores(evaluated_run, alice, acme, run_on_commit):
    """A second evaluation of the same merge: the merge, base and experts were all scored."""
    run, task = evaluated_run["run"], evaluated_run["task"]
    count = EvalResult.objects.count()
    job = _evaluate(run_on_commit, user=alice, team=acme, tasks=[task], run=run)
    assert job.status == Status.SUCCEEDED and EvalResult.objects.count() == count
    assert sum("every score was already stored" in m for m in _messages(job)) == 4


def test_a_failed_merge_queues_no_evaluation(registered_lm, reverse_task, alice, acme, run_on_commit):
    expert = registered_lm["experts"][0]
    run = create_run(user=alice, team=acme, evaluate_tasks=[reverse_task], **lm_merge_inputs(registered_lm))
    weights = os.path.join(expert.path, "model.safetensors")
    data = open(weights, "rb").read()
    os.remove(weights)
    with open(weights, "wb") as f:  # changed after the merge was queued: the merge fails
        f.write(data)
    with run_on_commit():
        services.dispatch.wake_on_commit(run)
    run.refresh_from_db()
    assert run.status == MergeRun.Status.FAILED and "changed since it was registered" in run.error
    assert not EvaluationJob.objects.exists()


def test_a_cancelled_merge_queues_no_evaluation(registered_lm, reverse_task, alice, acme):
    run = create_run(user=alice, team=acme, evaluate_tasks=[reverse_task], **lm_merge_inputs(registered_lm))
    runner = MergeRunner.claim(run.pk)  # as a worker would
    MergeRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    assert runner.execute() == MergeRun.Status.CANCELLED
    assert not EvaluationJob.objects.exists()


def test_a_run_settled_twice_is_evaluated_once(evaluated_run):
    from mergehub.runs.signals import merge_settled

    run = evaluated_run["run"]
    merge_settled.send(sender=MergeRun, run=run, status=MergeRun.Status.SUCCEEDED)  # as the reaper may
    assert EvaluationJob.objects.filter(run=run).count() == 1


def test_tasks_deleted_before_the_merge_succeeds_are_logged_on_the_run(registered_lm, reverse_task, alice,
                                                                       acme, run_on_commit):
    run = create_run(user=alice, team=acme, evaluate_tasks=[reverse_task], **lm_merge_inputs(registered_lm))
    reverse_task.delete()
    with run_on_commit():
        services.dispatch.wake_on_commit(run)
    run.refresh_from_db()
    assert run.status == MergeRun.Status.SUCCEEDED and not EvaluationJob.objects.exists()
    assert "the tasks chosen for evaluation were deleted; nothing to evaluate" in _messages(run)


def test_a_merge_whose_output_is_gone_fails_its_evaluation(lm_run, reverse_task, alice, acme, run_on_commit):
    import shutil

    shutil.rmtree(lm_run.output_path)
    job = _evaluate(run_on_commit, user=alice, team=acme, tasks=[reverse_task], run=lm_run)
    assert job.status == Status.FAILED and "merged model is not on disk any more" in job.error

