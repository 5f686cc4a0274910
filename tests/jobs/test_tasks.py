"""The job entry point, with django-q2 in sync mode: a wake-up runs the job it names, or the
oldest queued job of its queue."""

import pytest

from jobs import tasks
from mergehub.registry.models import Checkpoint, IndexJob
from mergehub.registry.roots import run_output_dir
from mergehub.runs import services
from mergehub.runs.models import MergeRun

Status = MergeRun.Status


def _queued(fam, user, team, django_capture_on_commit_callbacks, **kw):
    with django_capture_on_commit_callbacks():
        return services.create_run(user=user, team=team, name="n", method="task_arithmetic", base=fam["base"],
                                   experts=[(e, {"weight": 0.5}) for e in fam["experts"]], budget="0.5", seed=0,
                                   **kw)


def test_a_wake_up_runs_the_run_it_names(registered_family, alice, acme, django_capture_on_commit_callbacks):
    run = _queued(registered_family, alice, acme, django_capture_on_commit_callbacks)
    assert tasks.run_next_job("cpu", "merge", run.pk) == Status.SUCCEEDED
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED and run.metrics["expert_bytes_read"] <= run.metrics["budget_bytes"]
    assert run.expert_bytes_saved == run.bytes_saved > 0
    assert tasks.run_next_job("cpu", "merge", run.pk) == "idle"  # redelivered: nothing happens twice


def test_a_wake_up_without_a_name_runs_the_oldest_queued_job(registered_family, alice, acme,
                                                             django_capture_on_commit_callbacks):
    first = _queued(registered_family, alice, acme, django_capture_on_commit_callbacks)
    second = _queued(registered_family, alice, acme, django_capture_on_commit_callbacks)
    assert tasks.run_next_job("cpu") == Status.SUCCEEDED
    assert MergeRun.objects.get(pk=first.pk).status == Status.SUCCEEDED
    assert MergeRun.objects.get(pk=second.pk).status == Status.QUEUED
    assert tasks.run_next_job("gpu") == "idle"  # another queue's worker never takes it
    assert MergeRun.objects.get(pk=second.pk).status == Status.QUEUED


def test_engine_errors_fail_the_run_with_the_message(registered_family, alice, acme,
                                                     django_capture_on_commit_callbacks):
    run = _queued(registered_family, alice, acme, django_capture_on_commit_callbacks)
    run_output_dir(run).mkdir(parents=True)  # something is in the way
    assert tasks.run_next_job("cpu", "merge", run.pk) == Status.FAILED
    run.refresh_from_db()
    assert "already exists" in run.error and "\n" not in run.error
    assert run.log[-1]["msg"].startswith("failed: ")


def test_unexpected_errors_fail_the_run_and_reach_the_queue(registered_family, alice, acme, monkeypatch,
                                                            django_capture_on_commit_callbacks):
    run = _queued(registered_family, alice, acme, django_capture_on_commit_callbacks)

    def broken(*args, **kwargs):
        raise RuntimeError("segfault-ish")

    monkeypatch.setattr("mergehub.runs.runner.engine.run_merge", broken)
    with pytest.raises(RuntimeError):
        tasks.run_next_job("cpu", "merge", run.pk)
    run.refresh_from_db()
    assert run.status == Status.FAILED and "internal error (RuntimeError: segfault-ish)" in run.error


def test_index_jobs_run_through_the_same_seam(registered_family, alice, run_on_commit):
    from mergehub.registry.services import reindex_checkpoint

    expert = registered_family["experts"][0]
    with run_on_commit():
        reindex_checkpoint(checkpoint=expert, user=alice)
    job = expert.index_jobs.first()
    assert job.status == IndexJob.Status.SUCCEEDED and job.progress == 1.0 and job.attempts == 1
    msgs = [line["msg"] for line in job.log]
    assert "stage inspect" in msgs and msgs[-1] == "succeeded: expert-1 is ready"
    expert.refresh_from_db()
    assert expert.index_status == Checkpoint.IndexStatus.READY
    assert tasks.run_next_job("cpu", "index", job.pk) == "idle"
