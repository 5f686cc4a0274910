"""The database is the queue; the broker carries wake-ups, and lost ones are sent again."""

import pytest
from django_q.brokers import get_broker
from django_q.conf import Conf

from mergehub.jobs import dispatch
from mergehub.registry.models import IndexJob
from mergehub.runs.models import MergeRun

Status = MergeRun.Status


@pytest.fixture
def real_broker(monkeypatch, transactional_db):
    """The configured broker (ORM, or Redis when REDIS_URL is set), emptied, not sync mode."""
    monkeypatch.setattr(Conf, "SYNC", False)
    brokers = [get_broker(dispatch.cluster_name(q)) for q in ("cpu", "gpu")]
    for broker in brokers:
        broker.purge_queue()
    yield brokers[0]
    for broker in brokers:
        broker.purge_queue()


def _queued(team, user, n: int, queue: str = "cpu"):
    return [MergeRun.objects.create(team=team, author=user, name=f"r{i}", method="ties", config={}, budget="1",
                                    queue=queue) for i in range(n)]


def test_lost_wake_ups_are_sent_again_once(real_broker, alice, acme, transactional_db):
    _queued(acme, alice, 3)
    _queued(acme, alice, 1, queue="gpu")
    assert dispatch.queued_counts() == {"cpu": 3, "gpu": 1}
    assert dispatch.ensure_wakeups() == {"cpu": 3, "gpu": 1}  # the broker had none: all were lost
    assert dispatch.waiting_wakeups("cpu") == 3 and dispatch.waiting_wakeups("gpu") == 1
    assert dispatch.ensure_wakeups() == {}  # nothing lost now
    real_broker.purge_queue()  # e.g. Redis restarted
    assert dispatch.ensure_wakeups() == {"cpu": 3}


def test_cancelled_and_finished_jobs_need_no_wake_up(real_broker, alice, acme, transactional_db):
    run = _queued(acme, alice, 1)[0]
    MergeRun.objects.filter(pk=run.pk).update(status=Status.CANCELLED, cancel_requested=True)
    assert dispatch.queued_counts() == {} and dispatch.ensure_wakeups() == {}


def test_claims_go_oldest_first_across_job_kinds(registered_family, alice, acme):
    expert = registered_family["experts"][0]
    first = _queued(acme, alice, 1)[0]
    index = IndexJob.objects.create(team=acme, checkpoint=expert, author=alice)
    second = _queued(acme, alice, 1)[0]
    order = []
    for _ in range(3):
        runner = dispatch.claim_next("cpu")
        order.append((runner.kind, runner.job.pk))
    assert order == [("merge", first.pk), ("index", index.pk), ("merge", second.pk)]
    assert dispatch.claim_next("cpu") is None


def test_a_named_job_is_claimed_before_older_ones(alice, acme):
    older, named = _queued(acme, alice, 2)
    runner = dispatch.claim_next("cpu", "merge", named.pk)
    assert runner.job.pk == named.pk
    assert dispatch.claim_next("cpu", "merge", named.pk).job.pk == older.pk  # taken: the oldest instead


def test_a_wake_up_never_crosses_queues(alice, acme):
    gpu_run = _queued(acme, alice, 1, queue="gpu")[0]
    assert dispatch.claim_next("cpu", "merge", gpu_run.pk) is None
    assert MergeRun.objects.get(pk=gpu_run.pk).status == Status.QUEUED
    assert dispatch.claim_next("gpu").job.pk == gpu_run.pk
