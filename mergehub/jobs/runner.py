"""The runner base class: the seam between a django-q2 task and a job row (NetBox style).

A task calls ``dispatch.run_next_job(queue)``, which claims the oldest queued job of that queue
(queued -> running, one conditional UPDATE, so two workers never run one job) and calls
``execute()``. The runner feeds the work a progress callback (progress, stage and heartbeat
written at most ``progress_interval`` apart) and a cancel callback (``cancel_requested`` read
at most once per ``cancel_interval``), beats from a thread while the work is silent, and
records the outcome. Every database write it makes is inside its error handling: progress is
best effort, the final status is retried with patience, and when even that fails the row is
left "running" for the reaper, which reconciles it from what is on disk (reaper.py).

A concrete job kind subclasses ``JobRunner``, names its ``model`` and ``kind`` and implements
``work()``; hooks let it keep related rows in step (``settle_related``) and tell the reaper
whether a job's result exists after all (``reconcile``) and what to clean up (``cleanup``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from mergehub.engine.api import Cancelled, MergeHubError, Progress

from .db import TRANSIENT, DatabaseUnavailable, best_effort, retry_db
from .joblog import append_log
from .models import Job

log = logging.getLogger(__name__)
Status = Job.Status
HEARTBEAT_MIN_INTERVAL = 0.5  # seconds between beats of the background heartbeat, at least


def worker_identity() -> str:
    """``host:pid`` of this process, recorded at claim so the reaper can tell a dead worker."""
    return f"{socket.gethostname()}:{os.getpid()}"


def user_message(err: Exception) -> str:
    if isinstance(err, ValidationError):
        return " ".join(err.messages)
    return str(err)


class JobRunner:
    model: ClassVar[type[Job]]
    kind: ClassVar[str]
    progress_interval = 0.5  # seconds between progress writes (~2/s)
    cancel_interval = 1.0  # seconds between cancel_requested reads
    log_steps = 10  # log a line at every 10% of a stage
    final_write_patience = 120.0  # seconds the final status write is retried
    clock = staticmethod(time.monotonic)

    def __init__(self, job: Job):
        self.job = job
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._cancel = False
        self._stage = None
        self._logged_step = 0

    # -- what a job kind provides --------------------------------------------------------------

    def work(self) -> dict[str, Any]:
        """Do the job; return the fields to store on the row when it succeeded."""
        raise NotImplementedError

    def success_log(self, fields: dict[str, Any]) -> list[str]:
        """The log lines that record a success."""
        return ["succeeded"]

    @classmethod
    def settle_related(cls, job: Job, status: str) -> None:
        """Keep related rows in step with the job's status (called inside the status write's
        transaction, by the runner and by the reaper)."""

    @classmethod
    def reconcile(cls, job: Job) -> dict[str, Any] | None:
        """For the reaper: the success fields if the job's result exists although its row still
        says running (the worker died, or the database refused the write, after the result was
        published); None otherwise."""
        return None

    @classmethod
    def cleanup(cls, job: Job) -> None:
        """For the reaper: remove what a dead worker left half made."""

    # -- life cycle ----------------------------------------------------------------------------

    @classmethod
    def claim(cls, job_id: int) -> "JobRunner | None":
        """Move the job from queued to running; None if it is not queued any more (cancelled,
        or another worker took it)."""
        runner = retry_db(lambda: cls._claim(job_id), what=f"the claim of {cls.kind} job {job_id}")
        if runner is not None:
            runner.note(f"started on {socket.gethostname()} (pid {os.getpid()}), attempt {runner.job.attempts}")
        return runner

    @classmethod
    def _claim(cls, job_id: int) -> "JobRunner | None":
        now = timezone.now()
        with transaction.atomic():
            claimed = cls.model.objects.filter(pk=job_id, status=Status.QUEUED, cancel_requested=False).update(
                status=Status.RUNNING, stage="starting", started_at=now, heartbeat_at=now, progress=0.0,
                attempts=F("attempts") + 1, worker=worker_identity()[:200])
            if not claimed:
                return None
            job = cls.model.objects.get(pk=job_id)
            cls.settle_related(job, Status.RUNNING)
        return cls(job)

    def execute(self) -> str:
        """Run the claimed job to a final status; returns that status."""
        try:
            with self._heartbeat():
                fields = self.work()
        except Cancelled:
            self._settle(Status.CANCELLED, ["cancelled at the next block; nothing was published"],
                         stage="cancelled", error="")
        except (MergeHubError, ValidationError) as err:
            self._fail(user_message(err))
        except (DatabaseUnavailable, *TRANSIENT) as err:
            self._fail(f"the database became unavailable while the job ran ({err}); nothing was "
                       "published — retry once the database is back")
        except Exception as err:
            log.exception("%s job %s failed", self.kind, self.job.pk)
            self._fail(f"internal error ({err.__class__.__name__}: {err}); see the worker log")
            raise
        else:
            self._settle(Status.SUCCEEDED, self.success_log(fields), progress=1.0, stage="done",
                         error="", **fields)
        return self.job.status

    def _fail(self, error: str) -> None:
        self._settle(Status.FAILED, [f"failed: {error}"], stage="failed", error=error)

    def _settle(self, status: str, lines: list[str], **fields) -> None:
        """The final write, retried with patience. If the database stays away, the row keeps
        saying running and the reaper settles it later (from the published result, if any)."""
        try:
            retry_db(lambda: self._finish(status, lines, **fields),
                     what=f"the final status of {self.kind} job {self.job.pk}",
                     patience=self.final_write_patience)
        except DatabaseUnavailable:
            log.error("%s job %s ended %s but the database refused the record; the reaper will "
                      "settle it", self.kind, self.job.pk, status, exc_info=True)
            self.job.status = status

    def _finish(self, status: str, lines: list[str], **fields) -> None:
        now = timezone.now()
        with transaction.atomic():
            # Unconditional: if the reaper took this job for dead meanwhile, what the worker
            # actually did is the truth.
            self.model.objects.filter(pk=self.job.pk).update(status=status, finished_at=now, heartbeat_at=now,
                                                             **fields)
            append_log(self.model, self.job.pk, *lines)
            self.job.refresh_from_db()
            self.settle_related(self.job, status)

    @contextmanager
    def _heartbeat(self):
        """Beat from a thread while the work runs, so one long silent step (a whole-tensor
        operator on a huge embedding) never makes a live job look dead to the reaper."""
        interval = max(HEARTBEAT_MIN_INTERVAL, settings.MERGEHUB_HEARTBEAT_TIMEOUT / 4)
        stop = threading.Event()

        def beat():
            try:
                while not stop.wait(interval):
                    best_effort(self._beat, what=f"heartbeat of {self.kind} job {self.job.pk}")
            finally:
                connection.close()

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.kind}-{self.job.pk}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    # -- callbacks the work calls --------------------------------------------------------------

    def on_progress(self, p: Progress) -> None:
        """Throttled: writes progress, stage and heartbeat at most every ``progress_interval``,
        and a log line when a stage starts and at every 10% of it."""
        if p.stage != self._stage:
            self._stage, self._logged_step = p.stage, 0
            self.note(f"stage {p.stage}" + (f": {p.message}" if p.message else ""))
            self._write(p, force=True)
            return
        fraction = min(1.0, max(0.0, p.fraction))
        step = int(fraction * self.log_steps + 1e-9)
        if step > self._logged_step:
            self._logged_step = step
            self.note(f"{p.stage} {fraction:.0%}" + (f" ({p.message})" if p.message else ""))
        self._write(p)

    def should_cancel(self) -> bool:
        """Re-read cancel_requested at most once per ``cancel_interval`` (and beat the heart)."""
        now = self.clock()
        if not self._cancel and now - self._last_cancel_check >= self.cancel_interval:
            self._last_cancel_check = now
            asked = best_effort(lambda: self.model.objects.filter(pk=self.job.pk, cancel_requested=True).exists(),
                                what="the cancel check")
            self._cancel = bool(asked)
            best_effort(self._beat, what="a heartbeat")
        return self._cancel

    # -- row writes ----------------------------------------------------------------------------

    def _write(self, p: Progress, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_write < self.progress_interval:
            return
        self._last_write = now
        fraction = min(1.0, max(0.0, p.fraction))
        best_effort(lambda: self.model.objects.filter(pk=self.job.pk, status=Status.RUNNING).update(
            progress=fraction, stage=p.stage[:50], heartbeat_at=timezone.now()), what="a progress write")

    def _beat(self) -> None:
        self.model.objects.filter(pk=self.job.pk, status=Status.RUNNING).update(heartbeat_at=timezone.now())

    def append_log(self, msg: str) -> None:
        append_log(self.model, self.job.pk, msg)

    def note(self, msg: str) -> None:
        """A log line from the work: best effort, a busy database never fails the job for it."""
        best_effort(lambda: self.append_log(msg), what="a log line")
