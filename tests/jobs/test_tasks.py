"""The job entry points, with django-q2 in sync mode."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Schedule

from jobs import tasks
from mergehub.registry.models import Checkpoint
from mergehub.runs import services
from mergehub.runs.models import MergeRun

Status = MergeRun.Status


def _queued(fam, user, team, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        return services.create_run(user=user, team=team, name="n", method="task_arithmetic", base=fam["base"],
                                   experts=[(e, {"weight": 0.5}) for e in fam["experts"]], budget="0.5", seed=0)


def test_run_merge_task_runs_a_queued_run(registered_family, alice, acme, django_capture_on_commit_callbacks):
    run = _queued(registered_family, alice, acme, django_capture_on_commit_callbacks)
    assert tasks.run_merge(run.pk) == Status.SUCCEEDED
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED and run.metrics["expert_bytes_read"] <= run.metrics["budget_bytes"]
    assert tasks.run_merge(run.pk) == Status.SUCCEEDED  # redelivered: nothing happens twice


def test_run_merge_task_reaps_first(registered_family, alice, acme, settings, django_capture_on_commit_callbacks):
    settings.MERGEHUB_HEARTBEAT_TIMEOUT = 30
    stale = MergeRun.objects.create(team=acme, author=alice, name="s", method="ties", config={}, budget="1",
                                    status=Status.RUNNING, started_at=timezone.now() - timedelta(minutes=5),
                                    heartbeat_at=timezone.now() - timedelta(minutes=5))
    run = _queued(registered_family, alice, acme, django_capture_on_commit_callbacks)
    tasks.run_merge(run.pk)
    stale.refresh_from_db()
    assert stale.status == Status.FAILED


def test_engine_errors_fail_the_run_with_the_message(registered_family, alice, acme,
                                                     django_capture_on_commit_callbacks):
    run = _queued(registered_family, alice, acme, django_capture_on_commit_callbacks)
    (services.outputs_dir() / f"run-{run.pk}").mkdir(parents=True)  # something is in the way
    assert tasks.run_merge(run.pk) == Status.FAILED
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
        tasks.run_merge(run.pk)
    run.refresh_from_db()
    assert run.status == Status.FAILED and "internal error (RuntimeError: segfault-ish)" in run.error


def test_index_task(registered_family, run_on_commit):
    expert = registered_family["experts"][0]
    Checkpoint.objects.filter(pk=expert.pk).update(index_status=Checkpoint.IndexStatus.PENDING)
    assert tasks.index_checkpoint(expert.pk) == Checkpoint.IndexStatus.READY
    assert tasks.index_checkpoint(expert.pk) is None  # not pending any more: a no-op
    assert tasks.index_checkpoint(123456) is None


def test_reaper_is_scheduled_every_minute(db):
    schedule = Schedule.objects.get(func="jobs.tasks.reap_stale_runs")
    assert schedule.schedule_type == Schedule.MINUTES and schedule.minutes == 1 and schedule.repeats < 0
    assert tasks.reap_stale_runs() == 0
