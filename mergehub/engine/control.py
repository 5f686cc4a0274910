"""Progress reporting and cancellation, as callers (CLI, web workers) plug them in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import Cancelled


@dataclass(frozen=True)
class Progress:
    stage: str  # "index", "plan", "merge", "sweep", "verify"
    done: int
    total: int
    unit: str = "bytes"
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


class Control:
    """Bundles the optional callbacks; the engine calls ``check()`` at every block group."""

    def __init__(self, progress: ProgressFn | None = None, cancel: CancelFn | None = None):
        self._progress = progress
        self._cancel = cancel

    def report(self, stage: str, done: int, total: int, unit: str = "bytes", message: str = "") -> None:
        if self._progress is not None:
            self._progress(Progress(stage, done, total, unit, message))

    def check(self) -> None:
        if self._cancel is not None and self._cancel():
            raise Cancelled("cancelled by the caller; nothing was published")
