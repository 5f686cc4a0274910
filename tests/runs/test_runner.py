import pytest

from mergehub.engine.api import Progress
from mergehub.runs.models import MergeRun
from mergehub.runs.runner import MergeRunner

Status = MergeRun.Status


@pytest.fixture
def queued_run(alice, acme):
    return MergeRun.objects.create(team=acme, author=alice, name="r", method="ties", config={}, budget="1")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(MergeRunner, "clock", staticmethod(c))
    return c


def test_claim_moves_queued_to_running_once(queued_run):
    runner = MergeRunner.claim(queued_run.pk)
    assert runner is not None
    queued_run.refresh_from_db()
    assert queued_run.status == Status.RUNNING and queued_run.started_at and queued_run.heartbeat_at
    assert queued_run.log[-1]["msg"].startswith("started on")
    assert MergeRunner.claim(queued_run.pk) is None  # a redelivered task does not run it twice


def test_a_wake_up_skips_runs_that_are_not_queued(queued_run):
    from mergehub.jobs.dispatch import run_next_job

    MergeRun.objects.filter(pk=queued_run.pk).update(status=Status.CANCELLED)
    assert run_next_job("cpu", "merge", queued_run.pk) == "idle"
    assert run_next_job("cpu", "merge", 987654) == "idle"
    assert MergeRun.objects.get(pk=queued_run.pk).status == Status.CANCELLED


def test_progress_writes_are_throttled(queued_run, clock):
    runner = MergeRunner.claim(queued_run.pk)
    runner.on_progress(Progress("merge", 0, 100))  # a new stage is written at once
    queued_run.refresh_from_db()
    assert queued_run.stage == "merge" and queued_run.progress == 0.0
    for done in range(1, 50):
        runner.on_progress(Progress("merge", done, 100))  # same instant: no writes
    queued_run.refresh_from_db()
    assert queued_run.progress == 0.0
    clock.now += runner.progress_interval
    runner.on_progress(Progress("merge", 60, 100))
    queued_run.refresh_from_db()
    assert queued_run.progress == pytest.approx(0.6)
    assert queued_run.heartbeat_at is not None


def test_progress_logs_stage_starts_and_every_tenth(queued_run, clock):
    runner = MergeRunner.claim(queued_run.pk)
    runner.on_progress(Progress("merge", 0, 1000, message="3 tensors"))
    for done in range(1, 1001):
        runner.on_progress(Progress("merge", done, 1000))
    queued_run.refresh_from_db()
    msgs = [line["msg"] for line in queued_run.log]
    assert "stage merge: 3 tensors" in msgs
    assert sum(m.startswith("merge ") for m in msgs) == 10


def test_cancel_is_read_at_most_once_per_interval(queued_run, clock, django_assert_num_queries):
    runner = MergeRunner.claim(queued_run.pk)
    assert runner.should_cancel() is False
    MergeRun.objects.filter(pk=queued_run.pk).update(cancel_requested=True)
    with django_assert_num_queries(0):
        for _ in range(100):
            assert runner.should_cancel() is False  # within the interval: no query
    clock.now += runner.cancel_interval
    assert runner.should_cancel() is True
    with django_assert_num_queries(0):
        assert runner.should_cancel() is True  # stays cancelled without asking again


def test_finishing_states(queued_run):
    runner = MergeRunner.claim(queued_run.pk)
    runner._fail("disk full; free space")
    queued_run.refresh_from_db()
    assert queued_run.status == Status.FAILED and queued_run.error == "disk full; free space"
    assert queued_run.finished_at and queued_run.log[-1]["msg"] == "failed: disk full; free space"


@pytest.mark.django_db(transaction=True)  # the heartbeat thread has its own connection
def test_heartbeat_thread_beats_while_the_engine_is_silent(alice, acme, settings, monkeypatch):
    import time

    from mergehub.jobs import runner as runner_module

    monkeypatch.setattr(runner_module, "HEARTBEAT_MIN_INTERVAL", 0.05)
    settings.MERGEHUB_HEARTBEAT_TIMEOUT = 0.1
    run = MergeRun.objects.create(team=acme, author=alice, name="r", method="ties", config={}, budget="1")
    runner = MergeRunner.claim(run.pk)
    first = MergeRun.objects.get(pk=run.pk).heartbeat_at
    with runner._heartbeat():
        time.sleep(0.5)  # the engine reports nothing for a while
    assert MergeRun.objects.get(pk=run.pk).heartbeat_at > first


def _queued_merge(fam, user, team, monkeypatch, **kw):
    from mergehub.jobs import dispatch
    from mergehub.runs import services

    with monkeypatch.context() as m:
        m.setattr(dispatch, "wake", lambda queue, job=None: True)  # queued only: the test runs it
        return services.create_run(user=user, team=team, method="task_arithmetic", base=fam["base"],
                                   experts=[(e, {"weight": 0.5}) for e in fam["experts"]], budget="0.5", **kw)


def test_the_worker_runs_the_queued_plan_and_says_so(registered_family, alice, acme, monkeypatch):
    from mergehub.jobs.dispatch import run_next_job

    run = _queued_merge(registered_family, alice, acme, monkeypatch)
    queued_digest = run.plan["plan_digest"]
    assert run_next_job("cpu", "merge", run.pk) == Status.SUCCEEDED
    run.refresh_from_db()
    assert run.plan["plan_digest"] == queued_digest == run.manifest["plan"]["digest"]
    assert "queued_plan_digest" not in run.plan
    assert f"ran the queued plan {queued_digest[:12]}" in [line["msg"] for line in run.log]


def test_a_plan_that_changed_since_queueing_is_recorded(registered_family, alice, acme, monkeypatch):
    """The catalog moved between queueing and running (simulated by a stale stored digest):
    the run goes ahead with the fresh plan, the log says so and the report shows what ran."""
    from mergehub.jobs.dispatch import run_next_job

    run = _queued_merge(registered_family, alice, acme, monkeypatch)
    MergeRun.objects.filter(pk=run.pk).update(plan={**run.plan, "plan_digest": "0" * 64})
    assert run_next_job("cpu", "merge", run.pk) == Status.SUCCEEDED
    run.refresh_from_db()
    assert run.plan["queued_plan_digest"] == "0" * 64
    assert run.plan["plan_digest"] == run.manifest["plan"]["digest"] != "0" * 64
    assert any(line["msg"].startswith("note: the plan changed since the run was queued") for line in run.log)


def test_gpu_queue_needs_cuda_unless_the_fallback_is_explicit(settings, monkeypatch):
    from mergehub.engine.api import ConfigError
    from mergehub.runs.runner import merge_device

    monkeypatch.setattr("mergehub.engine.api.cuda_available", lambda: False)
    assert merge_device("cpu") == ("auto", None)
    settings.MERGEHUB_GPU_FALLBACK_TO_CPU = False
    with pytest.raises(ConfigError, match="no CUDA device"):
        merge_device("gpu")
    settings.MERGEHUB_GPU_FALLBACK_TO_CPU = True
    device, note = merge_device("gpu")
    assert device == "cpu" and "MERGEHUB_GPU_FALLBACK_TO_CPU" in note
    monkeypatch.setattr("mergehub.engine.api.cuda_available", lambda: True)
    assert merge_device("gpu") == ("cuda", None)
