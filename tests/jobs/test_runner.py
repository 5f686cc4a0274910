"""The runner's promise: every database write it makes is inside its error handling, and a
status on a page is the truth even when the database was away at the worst moment."""

from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from mergehub.jobs import dispatch
from mergehub.jobs.reaper import reap_stale_jobs
from mergehub.jobs.runner import JobRunner
from mergehub.registry.roots import run_output_dir
from mergehub.runs import services
from mergehub.runs.models import MergeRun

Status = MergeRun.Status
pytestmark = pytest.mark.django_db(transaction=True)  # retries reset the connection


@pytest.fixture
def queued(registered_family, alice, acme, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(dispatch, "wake", lambda queue, job=None: True)  # queued, not run: the test runs it
        return services.create_run(user=alice, team=acme, method="task_arithmetic", base=registered_family["base"],
                                   experts=[(e, {"weight": 0.5}) for e in registered_family["experts"]],
                                   budget="0.5")


def _failing(original, failures: int):
    calls = {"n": 0}

    def wrapper(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= failures:
            raise OperationalError("database is locked")
        return original(self, *args, **kwargs)

    return wrapper, calls


def test_a_locked_database_at_the_final_write_is_waited_out(queued, monkeypatch):
    monkeypatch.setattr("mergehub.jobs.db.time.sleep", lambda s: None)
    wrapper, calls = _failing(JobRunner._finish, failures=3)
    monkeypatch.setattr(JobRunner, "_finish", wrapper)
    assert dispatch.run_next_job("cpu", "merge", queued.pk) == Status.SUCCEEDED
    queued.refresh_from_db()
    assert calls["n"] == 4 and queued.status == Status.SUCCEEDED and queued.metrics


def test_progress_and_log_writes_that_fail_do_not_fail_the_job(queued, monkeypatch):
    def locked(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(JobRunner, "append_log", locked)
    monkeypatch.setattr(JobRunner, "_beat", locked)
    assert dispatch.run_next_job("cpu", "merge", queued.pk) == Status.SUCCEEDED


def test_a_result_the_database_never_took_is_reconciled_by_the_reaper(queued, monkeypatch, settings):
    """The merge published, then the database stayed away past the runner's patience: the row
    still says running; the reaper finds the manifest and records the success."""
    monkeypatch.setattr(JobRunner, "final_write_patience", 0.0)
    wrapper, _ = _failing(JobRunner._finish, failures=10**6)
    monkeypatch.setattr(JobRunner, "_finish", wrapper)
    dispatch.run_next_job("cpu", "merge", queued.pk)
    queued.refresh_from_db()
    assert queued.status == Status.RUNNING and (run_output_dir(queued) / "mergehub_manifest.json").is_file()
    monkeypatch.undo()
    settings.MERGEHUB_HEARTBEAT_TIMEOUT = 60
    assert reap_stale_jobs(now=timezone.now() + timedelta(seconds=120)) == 1
    queued.refresh_from_db()
    assert queued.status == Status.SUCCEEDED and queued.metrics["planned_expert_bytes"] > 0


def test_a_database_outage_during_the_work_fails_with_the_true_cause(queued, monkeypatch):
    def db_gone(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr("mergehub.runs.runner.engine.run_merge", db_gone)
    assert dispatch.run_next_job("cpu", "merge", queued.pk) == Status.FAILED
    queued.refresh_from_db()
    assert queued.error.startswith("the database became unavailable while the job ran")
    assert "server closed the connection" in queued.error
