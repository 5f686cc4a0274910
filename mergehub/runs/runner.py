"""The runner: the seam between a django-q job and its MergeRun row (NetBox style).

The job only calls ``MergeRunner.execute(run_id)``. The runner claims the row (queued ->
running), feeds the engine a progress callback that writes progress, stage and heartbeat to
the row at most ``progress_interval`` apart, and a cancel callback that re-reads
``cancel_requested`` at most once per ``cancel_interval``; the engine checks it at every block
group, so a cancel lands at the next block. The UI reads only the row.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from mergehub.engine import api as engine
from mergehub.engine.control import Progress
from mergehub.engine.errors import Cancelled, MergeHubError
from mergehub.registry.roots import catalog_dir, run_output_dir
from mergehub.web.formatting import human_bytes

from .models import MergeRun
from .services import append_log, engine_mapping

log = logging.getLogger(__name__)
Status = MergeRun.Status
HEARTBEAT_MIN_INTERVAL = 5.0  # seconds between beats of the background heartbeat, at least


class MergeRunner:
    progress_interval = 0.5  # seconds between progress writes (~2/s)
    cancel_interval = 1.0  # seconds between cancel_requested reads
    log_steps = 10  # log a line at every 10% of a stage
    clock = staticmethod(time.monotonic)

    def __init__(self, run: MergeRun):
        self.run = run
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._cancel = False
        self._stage = None
        self._logged_step = 0

    # -- life cycle ----------------------------------------------------------------------------

    @classmethod
    def claim(cls, run_id: int) -> "MergeRunner | None":
        """Move the run from queued to running; None if it is not queued (cancelled, or a
        redelivered task for a run another worker already took)."""
        now = timezone.now()
        with transaction.atomic():
            claimed = MergeRun.objects.filter(pk=run_id, status=Status.QUEUED, cancel_requested=False).update(
                status=Status.RUNNING, stage="starting", started_at=now, heartbeat_at=now, progress=0.0)
        if not claimed:
            return None
        run = MergeRun.objects.get(pk=run_id)
        runner = cls(run)
        runner.append_log(f"started on {socket.gethostname()} (pid {os.getpid()})")
        return runner

    @classmethod
    def execute(cls, run_id: int) -> str:
        """Run one merge from its row to a final status; returns that status."""
        runner = cls.claim(run_id)
        if runner is None:
            status = MergeRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
            log.info("run %s is %s, not queued; skipping", run_id, status or "gone")
            return status or "missing"
        return runner.run_merge()

    def run_merge(self) -> str:
        run = self.run
        out_dir = run_output_dir(run.pk)
        try:
            config = engine.load_config_mapping(engine_mapping(run.config))
            with self._heartbeat():
                result = engine.run_merge(
                    config, out_dir, budget=run.budget, seed=run.seed, device="auto",
                    block_size=run.block_size, catalog_dir=catalog_dir(), force=False,
                    measure_deviation=run.measure_deviation, progress=self.on_progress,
                    cancel=self.should_cancel)
        except Cancelled:
            self.cancelled()
        except MergeHubError as err:
            self.fail(str(err))
        except Exception as err:
            log.exception("run %s failed", run.pk)
            self.fail(f"internal error ({err.__class__.__name__}: {err}); see the worker log")
            raise
        else:
            self.succeed(result.metrics, result.manifest, Path(result.out_dir))
        return self.run.status

    @contextmanager
    def _heartbeat(self):
        """Beat from a thread while the engine works, so one long tensor (a whole-tensor
        operator on a huge embedding) never makes a live run look dead to the reaper."""
        interval = max(HEARTBEAT_MIN_INTERVAL, settings.MERGEHUB_HEARTBEAT_TIMEOUT / 4)
        stop = threading.Event()

        def beat():
            try:
                while not stop.wait(interval):
                    try:
                        self._beat()
                    except Exception:  # a busy database must not kill the merge
                        log.warning("heartbeat of run %s failed", self.run.pk, exc_info=True)
            finally:
                connection.close()

        thread = threading.Thread(target=beat, name=f"heartbeat-run-{self.run.pk}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    # -- callbacks the engine calls ------------------------------------------------------------

    def on_progress(self, p: Progress) -> None:
        """Throttled: writes progress, stage and heartbeat at most every ``progress_interval``,
        and a log line when a stage starts and at every 10% of it."""
        if p.stage != self._stage:
            self._stage, self._logged_step = p.stage, 0
            self.append_log(f"stage {p.stage}" + (f": {p.message}" if p.message else ""))
            self._write(p, force=True)
            return
        fraction = min(1.0, max(0.0, p.fraction))
        step = int(fraction * self.log_steps + 1e-9)
        if step > self._logged_step:
            self._logged_step = step
            self.append_log(f"{p.stage} {fraction:.0%}" + (f" ({p.message})" if p.message else ""))
        self._write(p)

    def should_cancel(self) -> bool:
        """Re-read cancel_requested at most once per ``cancel_interval`` (and beat the heart)."""
        now = self.clock()
        if not self._cancel and now - self._last_cancel_check >= self.cancel_interval:
            self._last_cancel_check = now
            self._cancel = bool(MergeRun.objects.filter(pk=self.run.pk, cancel_requested=True).exists())
            self._beat()
        return self._cancel

    # -- row writes ----------------------------------------------------------------------------

    def _write(self, p: Progress, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_write < self.progress_interval:
            return
        self._last_write = now
        fraction = min(1.0, max(0.0, p.fraction))
        MergeRun.objects.filter(pk=self.run.pk, status=Status.RUNNING).update(
            progress=fraction, stage=p.stage[:50], heartbeat_at=timezone.now())

    def _beat(self) -> None:
        MergeRun.objects.filter(pk=self.run.pk, status=Status.RUNNING).update(heartbeat_at=timezone.now())

    def append_log(self, msg: str) -> None:
        append_log(self.run.pk, msg)

    def _finish(self, status: str, **fields) -> None:
        now = timezone.now()
        MergeRun.objects.filter(pk=self.run.pk).update(status=status, finished_at=now, heartbeat_at=now,
                                                       **fields)
        self.run.refresh_from_db()

    def succeed(self, metrics: dict, manifest: dict, out_dir: Path) -> None:
        read = metrics.get("expert_bytes_read")
        full = metrics.get("full_expert_bytes")
        self.append_log(f"succeeded: read {human_bytes(read)} of {human_bytes(full)} expert bytes; "
                        f"output in {out_dir}")
        for warning in metrics.get("warnings") or []:
            self.append_log(f"warning: {warning}")
        self._finish(Status.SUCCEEDED, progress=1.0, stage="done", metrics=metrics, manifest=manifest,
                     output_path=str(out_dir), error="")

    def fail(self, error: str) -> None:
        self.append_log(f"failed: {error}")
        self._finish(Status.FAILED, stage="failed", error=error)

    def cancelled(self) -> None:
        self.append_log("cancelled at the next block; nothing was published")
        self._finish(Status.CANCELLED, stage="cancelled", error="")
