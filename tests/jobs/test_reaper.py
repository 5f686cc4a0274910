"""The reaper settles running jobs whose heartbeat stopped: true messages, published results
reconciled, half-made outputs removed, related rows kept in step."""

import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from mergehub.jobs.reaper import reap_stale_jobs
from mergehub.registry.models import Checkpoint, IndexJob
from mergehub.registry.roots import outputs_dir, run_output_dir
from mergehub.runs.models import MergeRun

Status = MergeRun.Status


def _running(team, user, heartbeat_age: float, started_age: float | None = None, worker: str = ""):
    run = MergeRun.objects.create(team=team, author=user, name="r", method="ties", config={}, budget="0.5",
                                  status=Status.RUNNING, worker=worker)
    now = timezone.now()
    MergeRun.objects.filter(pk=run.pk).update(
        heartbeat_at=now - timedelta(seconds=heartbeat_age),
        started_at=now - timedelta(seconds=started_age if started_age is not None else heartbeat_age))
    return run


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_silent_runs_fail_and_their_staging_goes(alice, acme, settings):
    settings.MERGEHUB_HEARTBEAT_TIMEOUT = 60
    stale = _running(acme, alice, heartbeat_age=61, worker="elsewhere:123")
    fresh = _running(acme, alice, heartbeat_age=5)
    staging = outputs_dir(acme) / f".run-{stale.pk}.staging-abc123"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"partial")
    assert reap_stale_jobs() == 1
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.status == Status.FAILED and stale.finished_at and stale.stage == "failed"
    assert "(elsewhere pid 123) sent no heartbeat for 6" in stale.error and "retry" in stale.error
    assert stale.log[-1]["msg"].startswith("reaper:")
    assert fresh.status == Status.RUNNING
    assert not staging.exists()
    assert reap_stale_jobs() == 0  # idempotent


def test_a_dead_worker_process_on_this_host_is_named(alice, acme, settings):
    settings.MERGEHUB_HEARTBEAT_TIMEOUT = 60
    run = _running(acme, alice, heartbeat_age=90, worker=f"{socket.gethostname()}:{_dead_pid()}")
    assert reap_stale_jobs() == 1
    run.refresh_from_db()
    assert "is gone: it was killed or crashed" in run.error


def test_a_live_but_silent_worker_is_named(alice, acme, settings):
    settings.MERGEHUB_HEARTBEAT_TIMEOUT = 60
    run = _running(acme, alice, heartbeat_age=90, worker=f"{socket.gethostname()}:{os.getpid()}")
    assert reap_stale_jobs() == 1
    run.refresh_from_db()
    assert "is alive but sent no heartbeat" in run.error and "database connection" in run.error


def test_the_job_timeout_is_named(alice, acme, settings):
    settings.MERGEHUB_HEARTBEAT_TIMEOUT = 60
    settings.MERGEHUB_JOB_TIMEOUT = 600
    run = _running(acme, alice, heartbeat_age=100, started_age=700)
    assert reap_stale_jobs() == 1
    run.refresh_from_db()
    assert "time limit of 600 s" in run.error and "MERGEHUB_JOB_TIMEOUT" in run.error


def test_explicit_now(alice, acme, settings):
    settings.MERGEHUB_HEARTBEAT_TIMEOUT = 120
    run = _running(acme, alice, heartbeat_age=1)
    assert reap_stale_jobs() == 0
    assert reap_stale_jobs(now=timezone.now() + timedelta(seconds=200)) == 1
    run.refresh_from_db()
    assert run.status == Status.FAILED


def test_a_published_output_is_reconciled_as_succeeded(registered_family, alice, acme, settings, run_on_commit):
    """The worker died (or the database refused its last write) after publishing: the run
    succeeded, and says so, with the metrics of its manifest."""
    from mergehub.runs import services

    settings.MERGEHUB_HEARTBEAT_TIMEOUT = 60
    with run_on_commit():
        done = services.create_run(user=alice, team=acme, method="task_arithmetic", base=registered_family["base"],
                                   experts=[(e, {"weight": 0.5}) for e in registered_family["experts"]],
                                   budget="1")
    done.refresh_from_db()
    assert done.status == Status.SUCCEEDED
    lost = _running(acme, alice, heartbeat_age=120)
    outputs_dir(acme).joinpath(f"run-{done.pk}").rename(run_output_dir(lost))  # as if the worker died right after publishing
    assert reap_stale_jobs() == 1
    lost.refresh_from_db()
    assert lost.status == Status.SUCCEEDED and lost.error == "" and lost.progress == 1.0
    assert lost.metrics == done.metrics and lost.manifest["plan"] == done.manifest["plan"]
    assert lost.expert_bytes_saved == done.expert_bytes_saved
    assert "published complete; marked succeeded" in lost.log[-1]["msg"]


def test_a_dead_index_job_fails_its_checkpoint(registered_family, alice, acme, settings):
    settings.MERGEHUB_HEARTBEAT_TIMEOUT = 60
    expert = registered_family["experts"][0]
    long_ago = timezone.now() - timedelta(seconds=300)
    job = IndexJob.objects.create(team=acme, checkpoint=expert, author=alice, status=IndexJob.Status.RUNNING,
                                  started_at=long_ago)
    IndexJob.objects.filter(pk=job.pk).update(heartbeat_at=long_ago)
    Checkpoint.objects.filter(pk=expert.pk).update(index_status=Checkpoint.IndexStatus.INDEXING)
    assert reap_stale_jobs() == 1
    job.refresh_from_db()
    expert.refresh_from_db()
    assert job.status == IndexJob.Status.FAILED and "no heartbeat" in job.error
    assert expert.index_status == Checkpoint.IndexStatus.FAILED and expert.index_error == job.error


@pytest.mark.parametrize("kind", ["merge", "index"])
def test_the_reaper_never_touches_queued_or_finished_jobs(kind, registered_family, alice, acme, settings):
    settings.MERGEHUB_HEARTBEAT_TIMEOUT = 1
    old = timezone.now() - timedelta(hours=1)
    if kind == "merge":
        MergeRun.objects.create(team=acme, author=alice, name="q", method="ties", config={}, budget="1")
        MergeRun.objects.create(team=acme, author=alice, name="f", method="ties", config={}, budget="1",
                                status=Status.FAILED, heartbeat_at=old)
    else:
        IndexJob.objects.create(team=acme, checkpoint=registered_family["experts"][0])
    assert reap_stale_jobs(now=timezone.now() + timedelta(hours=2)) == 0
