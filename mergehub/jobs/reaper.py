"""The reaper: jobs whose worker stopped sending heartbeats get a true final status.

A running job whose heartbeat is older than ``MERGEHUB_HEARTBEAT_TIMEOUT`` is settled:
succeeded if its result was published after all (the runner kind's ``reconcile``, e.g. a
merge's manifest on disk), failed otherwise, with what is known of why: past its time limit,
its worker process gone (checked when the worker ran on this host), or silent. The reaper runs
in every worker's watchdog thread (watchdog.py), never behind jobs in a queue.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import kinds
from .joblog import append_log
from .models import Job

log = logging.getLogger(__name__)
Status = Job.Status


def _process_alive(worker: str) -> bool | None:
    """Whether the worker process recorded at claim still exists; None when it ran elsewhere."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_message(job: Job, now, silence: int) -> str:
    limit = int(settings.MERGEHUB_JOB_TIMEOUT)
    if job.started_at and (now - job.started_at).total_seconds() >= limit:
        return (f"the job ran past its time limit of {limit} s (MERGEHUB_JOB_TIMEOUT) and was stopped; "
                "raise the limit or lower the budget, then retry")
    alive = _process_alive(job.worker)
    where = job.worker.replace(":", " pid ") if job.worker else "its worker"
    if alive is False:
        return (f"the worker process ({where}) is gone: it was killed or crashed {silence} s ago at most; "
                "nothing was published — retry the job")
    if alive:
        return (f"the worker ({where}) is alive but sent no heartbeat for {silence} s (it lost its "
                "database connection or hung); the job was given up and nothing was published — retry it")
    return (f"the worker ({where}) sent no heartbeat for {silence} s: it was killed, crashed or lost "
            "its database connection; nothing was published — retry the job")


def reap_stale_jobs(now=None) -> int:
    """Settle every running job whose heartbeat is older than the timeout; returns how many."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=int(settings.MERGEHUB_HEARTBEAT_TIMEOUT))
    reaped = 0
    for runner in kinds.runners():
        stale = runner.model.objects.filter(status=Status.RUNNING, heartbeat_at__lt=cutoff)
        for pk in list(stale.values_list("pk", flat=True)):
            if _reap_one(runner, pk, cutoff, now):
                reaped += 1
    return reaped


def _reap_one(runner, pk: int, cutoff, now) -> bool:
    with transaction.atomic():
        job = (runner.model.objects.select_for_update()
               .filter(pk=pk, status=Status.RUNNING, heartbeat_at__lt=cutoff).first())
        if job is None:  # it beat again, or finished, meanwhile
            return False
        fields = runner.reconcile(job)
        if fields is not None:
            status, message = Status.SUCCEEDED, ("reaper: the worker stopped before recording its result, "
                                                 "but the result was published complete; marked succeeded")
            fields = {"progress": 1.0, "stage": "done", "error": "", **fields}
        else:
            status = Status.FAILED
            silence = int((now - job.heartbeat_at).total_seconds())
            fields = {"stage": "failed", "error": stale_message(job, now, silence)}
            message = f"reaper: {fields['error']}"
        runner.model.objects.filter(pk=pk).update(status=status, finished_at=now, **fields)
        append_log(runner.model, pk, message)
        job.refresh_from_db()
        runner.settle_related(job, status)
    if status == Status.FAILED:
        runner.cleanup(job)
    log.warning("reaped %s job %s: %s", runner.kind, pk, message)
    return True
