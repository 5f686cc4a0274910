"""Queues: the database is the queue, the broker only carries wake-ups.

A job is queued by inserting its row (status "queued", a ``queue`` name); after commit a
wake-up task goes to that queue's django-q2 cluster. A wake-up claims the *oldest* queued job
of its queue, of any kind, and runs it; a wake-up that finds nothing returns at once. So a
lost wake-up (Redis flushed or restarted, a worker killed while holding one) strands nothing:
the watchdog tops the broker up to one wake-up per queued job (``ensure_wakeups``), and a
spare wake-up costs one empty query. Claims are conditional UPDATEs, so a job runs once
however many wake-ups or clusters there are.

Each queue is its own django-q2 cluster (``Q_CLUSTER['cluster_name']``, chosen per worker by
``MERGEHUB_QUEUE``): a CPU worker never takes from the GPU queue.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django_q.brokers import get_broker
from django_q.tasks import async_task

from . import kinds
from .models import Job

log = logging.getLogger(__name__)
Status = Job.Status
WAKE_TASK = "jobs.tasks.run_next_job"


def cluster_name(queue: str) -> str:
    """The django-q2 cluster (broker list) that serves ``queue``."""
    return f"mergehub-{queue}"


def wake(queue: str, job: Job | None = None) -> bool:
    """Put one wake-up on ``queue``'s broker, naming the job it was sent for (claimed first if
    still queued); False (logged) if the broker is unreachable: the watchdog sends it later."""
    hint = (job.runner_kind, job.pk) if job is not None else (None, None)
    try:
        async_task(WAKE_TASK, queue, *hint, cluster=cluster_name(queue), task_name=f"wake-{queue}",
                   timeout=settings.MERGEHUB_JOB_TIMEOUT)
    except Exception:  # Redis down: the job row is safe, the watchdog re-sends the wake-up
        log.warning("could not reach the broker for queue %s; the watchdog will retry", queue, exc_info=True)
        return False
    return True


def wake_on_commit(job: Job) -> None:
    """Wake the job's queue once the caller's transaction commits (the worker must see the row)."""
    transaction.on_commit(lambda: wake(job.queue, job))


def claim_next(queue: str, kind: str | None = None, pk: int | None = None):
    """The runner of a claimed job: the one the wake-up names if it is still queued, else the
    oldest queued job of ``queue`` (any kind); None if there is none."""
    if kind is not None and pk is not None:
        runner = kinds.runner_for(kind)
        if runner.model.objects.filter(pk=pk, queue=queue).exists():
            claimed = runner.claim(pk)
            if claimed is not None:
                return claimed
    for _ in range(20):  # another worker may win a claim: try the next candidate
        candidates = []
        for runner in kinds.runners():
            rows = (runner.model.objects.filter(status=Status.QUEUED, queue=queue, cancel_requested=False)
                    .order_by("created_at", "id").values_list("created_at", "id")[:5])
            candidates.extend((created, pk, runner) for created, pk in rows)
        if not candidates:
            return None
        for _created, pk, runner in sorted(candidates, key=lambda c: (c[0], c[1])):
            claimed = runner.claim(pk)
            if claimed is not None:
                return claimed
    return None


def run_next_job(queue: str, kind: str | None = None, pk: int | None = None) -> str:
    """Body of a wake-up: run the job it names, or the oldest queued one of ``queue``; returns
    the job's final status, or "idle"."""
    runner = claim_next(queue, kind, pk)
    if runner is None:
        return "idle"
    return runner.execute()


def queued_counts() -> dict[str, int]:
    """{queue: jobs waiting in it}, over every job kind."""
    counts: dict[str, int] = {}
    for runner in kinds.runners():
        rows = (runner.model.objects.filter(status=Status.QUEUED, cancel_requested=False)
                .values("queue").annotate(n=Count("id")).order_by())
        for row in rows:
            counts[row["queue"]] = counts.get(row["queue"], 0) + row["n"]
    return counts


def waiting_wakeups(queue: str) -> int:
    """Wake-ups waiting in ``queue``'s broker (not those a worker already took)."""
    return get_broker(cluster_name(queue)).queue_size()


def ensure_wakeups() -> dict[str, int]:
    """Send the wake-ups that the broker lost: one per queued job beyond those waiting.
    Returns {queue: wake-ups sent}; logs a line on the jobs that were waiting on lost ones."""
    sent = {}
    for queue, queued in queued_counts().items():
        missing = queued - waiting_wakeups(queue)
        if missing <= 0:
            continue
        sent[queue] = sum(wake(queue) for _ in range(missing))
        log.warning("queue %s: %d queued jobs but %d wake-ups lost from the broker; sent %d again",
                    queue, queued, missing, sent[queue])
    return sent
