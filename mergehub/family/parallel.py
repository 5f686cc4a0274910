"""Training the experts in worker processes (stdlib multiprocessing, spawn context).

The workers are started before the base trains, so their slow start (a fresh interpreter
importing torch and transformers) overlaps it; they wait for ``go`` and then train the
experts given to them, one thread each. The jobs are shared out ahead by their step counts
(longest first, each to the least loaded worker). Each worker reports on one queue:

    ("step", task, steps_done)   after every step
    ("done", task, result)       the expert is written
    ("error", task, traceback)   training failed; the worker stops

A worker whose parent has gone (killed) stops by itself instead of training for no one.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import traceback
from pathlib import Path
from typing import Callable

from .phases import train_expert
from .recipe import Recipe
from .store import expert_dir_name

POLL_SECONDS = 0.1


def share_out(steps: dict[str, int], workers: int) -> list[list[str]]:
    """Tasks per worker, longest first to the least loaded one (ties: the first worker)."""
    shares: list[list[str]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for task in sorted(steps, key=lambda t: -steps[t]):  # stable: equal steps keep task order
        k = loads.index(min(loads))
        shares[k].append(task)
        loads[k] += steps[task]
    return [s for s in shares if s]


class _ParentGone(Exception):
    pass


def _worker_main(tasks: list[str], seed: int, recipe: Recipe, stage: str, parent_pid: int,
                 go, messages) -> None:
    def parent_alive() -> bool:
        return os.getppid() == parent_pid

    while not go.wait(timeout=1.0):
        if not parent_alive():
            return
    base_dir = Path(stage) / "base"
    for task in tasks:
        def on_step(done: int, task: str = task) -> None:
            if not parent_alive():
                raise _ParentGone
            messages.put(("step", task, done))

        try:
            result = train_expert(seed, recipe, task, base_dir, Path(stage) / expert_dir_name(task), on_step)
        except _ParentGone:
            return
        except BaseException:
            messages.put(("error", task, traceback.format_exc()))
            return
        messages.put(("done", task, result))


class ExpertWorkers:
    """``workers`` processes that will train the experts of ``recipe`` into ``stage``."""

    def __init__(self, workers: int, seed: int, recipe: Recipe, stage: Path):
        ctx = multiprocessing.get_context("spawn")
        self.go, self.messages = ctx.Event(), ctx.Queue()
        self.shares = share_out(recipe.expert_steps, workers)
        self.processes = [
            ctx.Process(target=_worker_main, name=f"mergehub-family-{k}", daemon=True,
                        args=(tasks, seed, recipe, str(stage), os.getpid(), self.go, self.messages))
            for k, tasks in enumerate(self.shares)]
        for p in self.processes:
            p.start()

    def run(self, on_step: Callable[[str, int], None], check_cancel: Callable[[], None]) -> dict[str, dict]:
        """Let the workers go and wait for every expert; relay steps to ``on_step`` and call
        ``check_cancel`` (which raises to stop) at least every ``POLL_SECONDS``."""
        self.go.set()
        results: dict[str, dict] = {}
        expected = sum(len(s) for s in self.shares)
        while len(results) < expected:
            check_cancel()
            try:
                kind, task, payload = self.messages.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self._check_alive(results)
                continue
            if kind == "step":
                on_step(task, payload)
            elif kind == "done":
                results[task] = payload
            else:
                raise RuntimeError(f"training the {task} expert failed in a worker:\n{payload}")
        return results

    def _check_alive(self, results: dict) -> None:
        for p, tasks in zip(self.processes, self.shares):
            if p.exitcode is not None and not all(t in results for t in tasks):
                # the queue may still hold its last reports: only a dead, silent worker is lost
                if self.messages.empty():
                    raise RuntimeError(f"the worker training {', '.join(tasks)} died "
                                       f"(exit code {p.exitcode})")

    def stop(self) -> None:
        """End the workers (at once if they are still training) and wait for them."""
        for p in self.processes:
            if p.is_alive():
                p.terminate()
        for p in self.processes:
            p.join()
        self.messages.close()
        self.messages.join_thread()
