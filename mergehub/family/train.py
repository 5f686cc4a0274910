"""``train_family``: build the demo family from scratch, published atomically.

Everything is written into a staging directory beside ``out_dir`` (engine/publish.py) and
renamed into place only once the base, the four experts and ``family.json`` are complete; a
failure, a cancel or a kill leaves nothing at ``out_dir`` (a killed run's staging directory is
removed by the next run in the same parent directory).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

from mergehub.engine.api import CancelFn, Control, ProgressFn, Staging

from .phases import train_base, train_expert
from .recipe import DEFAULT_RECIPE, Recipe
from .store import (BASE_DIR, FAMILY_FILE, FamilyError, FamilyInfo, expert_dir_name, family_document,
                    info_from_document, load_family, read_family_document)
from .tasks import TASK_NAMES

DEFAULT_WORKERS = 2


def _check_out_dir(out_dir: Path, seed: int, force: bool) -> bool:
    """Whether an existing ``out_dir`` is to be replaced; raise if it must not be touched."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise FamilyError(f"{out_dir} exists and is not a directory; choose another output directory")
    if not any(out_dir.iterdir()):
        return True  # an empty directory: fill it
    doc = read_family_document(out_dir)
    if doc is None:
        raise FamilyError(f"{out_dir} exists and is not a MergeHub demo family (no {FAMILY_FILE}); "
                          "choose another output directory")
    if not force:
        why = (f"seed {doc.get('seed')}" if doc.get("seed") != seed
               else "another recipe (e.g. another --steps-scale), or it is incomplete")
        raise FamilyError(f"{out_dir} holds a demo family built with {why}; pass --force to replace "
                          "it or choose another output directory")
    return True


def _check_writable(out_dir: Path) -> None:
    parent = next((p for p in out_dir.parents if p.exists()), None)
    if parent is None or not os.access(parent, os.W_OK | os.X_OK) or not parent.is_dir():
        raise FamilyError(f"cannot create {out_dir}: {parent} is not a writable directory; choose a "
                          "writable output directory")


class _StepCounter:
    """Sums the steps done in every phase into one ``train`` progress report."""

    def __init__(self, control: Control, total: int):
        self.control, self.total, self.done = control, total, {}

    def __call__(self, phase: str, done: int) -> None:
        self.done[phase] = done
        self.control.report("train", sum(self.done.values()), self.total, unit="steps", message=phase)


def train_family(out_dir, *, seed: int = 0, recipe: Recipe = DEFAULT_RECIPE,
                 workers: int = DEFAULT_WORKERS, force: bool = False,
                 progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> FamilyInfo:
    """Train the base and the four experts into ``out_dir``; return the family.

    An ``out_dir`` that already holds this seed's and recipe's complete family is returned as
    it is (``reused=True``). ``workers``: processes training the experts side by side (0 or 1,
    or when this process is daemonic: in this process, one after the other; the bytes are the
    same). ``force`` replaces a family built with another seed or recipe, or an incomplete one.
    ``cancel()`` returning True stops within a step or so with ``Cancelled``; ``progress`` gets
    ``Progress(stage="train", unit="steps", message="base" or "expert <task>")``.
    """
    out_dir = Path(out_dir).absolute()
    if not isinstance(seed, int) or seed < 0:
        raise FamilyError(f"seed must be a non-negative integer, not {seed!r}")
    existing = load_family(out_dir, seed=seed, recipe=recipe)
    if existing is not None and not force:
        return existing
    replace = _check_out_dir(out_dir, seed, force)
    _check_writable(out_dir)
    control = Control(progress, cancel)
    counter = _StepCounter(control, recipe.total_steps)
    started = time.perf_counter()
    with Staging(out_dir, force=replace) as stage:
        pool = None
        try:
            # a daemonic process (e.g. a django-q2 worker) may not start children: train in it
            if workers > 1 and not multiprocessing.current_process().daemon:
                from .parallel import ExpertWorkers

                pool = ExpertWorkers(workers, seed, recipe, stage.path)
            seconds, losses, parameters = _train_all(stage.path, seed, recipe, control, counter, pool)
        finally:
            if pool is not None:
                pool.stop()
        seconds["total"] = time.perf_counter() - started
        doc = family_document(seed, recipe, seconds, losses, parameters)
        (stage.path / FAMILY_FILE).write_text(json.dumps(doc, indent=2) + "\n")
        control.check()
        stage.publish()
    return info_from_document(out_dir, doc)


def _train_all(stage: Path, seed: int, recipe: Recipe, control: Control, counter: _StepCounter,
               pool) -> tuple[dict, dict, int]:
    """Train every phase into ``stage``: (seconds per phase, last-batch loss per model, parameters)."""
    def base_step(done: int) -> None:
        counter("base", done)
        control.check()

    base = train_base(seed, recipe, stage / BASE_DIR, base_step)
    control.check()
    t_experts = time.perf_counter()
    if pool is not None:
        results = pool.run(lambda task, done: counter(f"expert {task}", done), control.check)
    else:
        results = {}
        for task in TASK_NAMES:
            def expert_step(done: int, task: str = task) -> None:
                counter(f"expert {task}", done)
                control.check()

            results[task] = train_expert(seed, recipe, task, stage / BASE_DIR,
                                         stage / expert_dir_name(task), expert_step)
    seconds = {"base": base["seconds"], "experts_wall": time.perf_counter() - t_experts,
               "experts": {t: results[t]["seconds"] for t in TASK_NAMES}}
    losses = {BASE_DIR: base["loss"], **{expert_dir_name(t): results[t]["loss"] for t in TASK_NAMES}}
    return seconds, losses, base["parameters"]
