"""``evaluate_model``: score one model on a list of tasks, with progress and cancellation.

The model is loaded once (safetensors only) and every task is scored under
``torch.inference_mode()``; lm-eval tasks are handed to lm-evaluation-harness (lm_eval_runner),
after the others. Progress counts examples (documents for perplexity) over all tasks; scores
come back in the order of ``tasks``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from mergehub.engine.api import Cancelled, ConfigError, Progress

from .fingerprint import check_model_dir
from .result import TaskScore
from .tasks import Task, load_task


class _Tracker:
    """Counts finished examples for ``progress`` and turns ``cancel()`` into Cancelled."""

    def __init__(self, total: int, progress: Callable | None, cancel: Callable | None):
        self.total, self.done, self.task = total, 0, ""
        self._progress, self._cancel = progress, cancel

    def check(self) -> None:
        if self._cancel is not None and self._cancel():
            raise Cancelled("evaluation cancelled by the caller; no scores were returned")

    def advance(self, n: int) -> None:
        self.done += n
        self.report()

    def report(self) -> None:
        if self._progress is not None:
            self._progress(Progress(stage="evaluate", done=self.done, total=self.total, unit="examples",
                                    message=self.task))


def _check_options(batch_size, sample_size, limit) -> None:
    for name, value, lowest in (("batch_size", batch_size, 1), ("sample_size", sample_size, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise ConfigError(f"{name} must be a whole number of at least {lowest}, not {value!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a whole number of at least 1 (or None), not {limit!r}")


def _example_count(task: Task, limit: int | None) -> int:
    if task.kind == "lm_eval":
        from .lm_eval_runner import example_count
        count = example_count(task)
    else:
        count = len(task.examples)
    return count if limit is None else min(count, limit)


def evaluate_model(model_dir, tasks, *, device="auto", batch_size=64, sample_size=10, limit=None,
                   progress=None, cancel=None) -> list[TaskScore]:
    """Score the model in ``model_dir`` on ``tasks`` (Task objects or task file paths), in order.
    ``limit`` scores only the first N examples of each task. Raises TaskError, InvalidCheckpoint,
    ConfigError for bad input and Cancelled when ``cancel()`` returns True."""
    tasks = [t if isinstance(t, Task) else load_task(t) for t in tasks]
    _check_options(batch_size, sample_size, limit)
    model_dir = check_model_dir(model_dir)
    tracker = _Tracker(sum(_example_count(t, limit) for t in tasks), progress, cancel)
    tracker.report()
    tracker.check()
    import torch

    from .model import load_model, pick_device
    from .scorers import SCORERS, Run

    device = pick_device(device)
    lm = load_model(model_dir, device) if any(t.kind != "lm_eval" for t in tasks) else None
    # lm-eval loads its own copy of the model: score the other tasks first and free ours before
    order = sorted(range(len(tasks)), key=lambda i: tasks[i].kind == "lm_eval")
    scores: dict[int, TaskScore] = {}
    for index in order:
        task = tasks[index]
        tracker.task = task.name
        tracker.check()
        started = time.perf_counter()
        if task.kind == "lm_eval":
            from .lm_eval_runner import run_lm_eval

            if lm is not None:
                lm = None
                _free_gpu_memory(device)
            scored = run_lm_eval(task, Path(model_dir), device, batch_size, sample_size, limit, tracker)
        else:
            examples = task.examples if limit is None else task.examples[:limit]
            run = Run(lm=lm, batch_size=batch_size, sample_size=sample_size, check=tracker.check,
                      advance=tracker.advance)
            with torch.inference_mode():
                scored = SCORERS[task.kind](task, examples, run)
        scores[index] = TaskScore(task=task.name, kind=task.kind, metric=task.metric,
                                  content_hash=task.content_hash, settings=dict(task.settings), n=scored.n,
                                  score=scored.score, ci_low=scored.ci_low, ci_high=scored.ci_high,
                                  higher_is_better=task.higher_is_better, samples=scored.samples,
                                  seconds=time.perf_counter() - started, device=device)
    return [scores[i] for i in range(len(tasks))]


def _free_gpu_memory(device: str) -> None:
    """Return the dropped model's GPU memory before lm-eval loads its own copy."""
    if device == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
