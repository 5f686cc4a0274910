"""The real worker: ``manage.py worker`` (a django-q2 cluster and the watchdog) against the
test database and the configured broker (ORM, or Redis when REDIS_URL is set)."""

from __future__ import annotations

import os
import signal

import pytest
from django_q.conf import Conf

from mergehub.registry.roots import outputs_dir, run_output_dir
from mergehub.runs import services
from mergehub.runs.models import MergeRun

from .stack import pid_gone, stack_env, start_worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
Status = MergeRun.Status


def queue_run(fam, user, team, monkeypatch) -> MergeRun:
    """Queue a merge on the real broker (sync mode off for this call)."""
    monkeypatch.setattr(Conf, "SYNC", False)
    run = services.create_run(user=user, team=team, name="worker", method="ties", base=fam["base"],
                              experts=[(e, {"weight": 1.0, "density": 0.5}) for e in fam["experts"]],
                              budget="0.5", seed=1)
    assert run.status == Status.QUEUED
    return run


def test_a_worker_takes_a_queued_merge_to_succeeded(registered_family, alice, acme, monkeypatch, tmp_path):
    run = queue_run(registered_family, alice, acme, monkeypatch)
    worker = start_worker(tmp_path, stack_env())
    try:
        wait_for(lambda: MergeRun.objects.get(pk=run.pk).is_finished, worker, "the run to finish")
    finally:
        worker.stop()
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED, (run.error, worker.output())
    assert run.progress == 1.0 and run_output_dir(run).is_dir()
    assert any(line["msg"].startswith("started on") for line in run.log)
    assert run.metrics["expert_bytes_read"] <= run.metrics["budget_bytes"]


def test_a_worker_killed_mid_merge_is_reaped_with_the_true_cause_and_the_retry_succeeds(
        registered_family, alice, acme, monkeypatch, tmp_path):
    """SIGKILL to the process running the merge: the watchdog of the same worker (another
    process) finds the heartbeat stopped and the process gone, fails the run saying so within
    2 x the heartbeat timeout, and removes the staging directory; a retry then succeeds."""
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    (fault_dir / "pause_at").write_text("merge")
    env = stack_env(MERGEHUB_TEST_FAULT_DIR=str(fault_dir), MERGEHUB_HEARTBEAT_TIMEOUT="4")
    run = queue_run(registered_family, alice, acme, monkeypatch)
    worker = start_worker(tmp_path, env, module="tests.jobs.fault_worker")
    try:
        pid = int(wait_for(lambda: (fault_dir / "reached").exists() and (fault_dir / "reached").read_text(),
                           worker, "the worker to reach the middle of the merge"))
        running = MergeRun.objects.get(pk=run.pk)
        assert running.status == Status.RUNNING and 0 < running.progress < 1
        assert list(outputs_dir(acme).glob(f".run-{run.pk}.staging-*")), "the engine writes into a staging dir"
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: pid_gone(pid), worker, "the killed worker to disappear", timeout=30)
        wait_for(lambda: MergeRun.objects.get(pk=run.pk).is_finished, worker, "the watchdog to reap the run",
                 timeout=2 * 4 + 5)
        run.refresh_from_db()
        assert run.status == Status.FAILED and f"pid {pid}) is gone: it was killed or crashed" in run.error
        assert not run_output_dir(run).exists()
        assert not list(outputs_dir(acme).glob(f".run-{run.pk}.*")), "the staging directory was left behind"

        (fault_dir / "pause_at").unlink()
        monkeypatch.setattr(Conf, "SYNC", False)
        again = services.retry_run(run=run, user=alice)
        wait_for(lambda: MergeRun.objects.get(pk=again.pk).is_finished, worker, "the retry to finish")
    finally:
        worker.stop()
    again.refresh_from_db()
    assert again.status == Status.SUCCEEDED, (again.error, worker.output())
