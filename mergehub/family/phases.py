"""The two training phases, each writing one model directory: the base and one expert.

Both are deterministic for a seed: the initial weights come from ``torch.manual_seed(seed)``,
each phase's words from its own ``random.Random`` stream, and every phase runs with a fixed
number of threads (``BASE_THREADS``, ``EXPERT_THREADS``), so an expert gets the same bytes
whether it trains in this process or in a worker.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from .batches import BatchSampler
from .loop import train_phase
from .model import load_weights, new_model, save_model_dir
from .recipe import Recipe

BASE_THREADS = 2
EXPERT_THREADS = 1  # the experts train two at a time, one thread each

StepFn = Callable[[int], None]


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads and deterministic kernels, then restore the caller's."""
    before_threads, before_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(n)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before_threads)
        torch.use_deterministic_algorithms(before_det)


def train_base(seed: int, recipe: Recipe, out_dir: Path, on_step: StepFn | None = None) -> dict:
    """Train the base from scratch on the even task mix; write it to ``out_dir``."""
    started = time.perf_counter()
    with _threads(BASE_THREADS):
        model = new_model(seed)
        sampler = BatchSampler(random.Random(f"{seed}:base"), recipe.batch_size)
        loss = train_phase(model, sampler, steps=recipe.base_steps, lr=recipe.base_lr,
                           warmup=recipe.warmup_steps, weight_decay=recipe.weight_decay,
                           grad_clip=recipe.grad_clip, on_step=on_step)
        Path(out_dir).mkdir()
        save_model_dir(model, out_dir)
    parameters = sum(p.numel() for p in model.parameters())
    return {"seconds": time.perf_counter() - started, "loss": loss, "parameters": parameters}


def train_expert(seed: int, recipe: Recipe, task_name: str, base_dir: Path, out_dir: Path,
                 on_step: StepFn | None = None) -> dict:
    """Fine-tune a copy of the base on one task, replaying the base's mix; write it to ``out_dir``."""
    started = time.perf_counter()
    with _threads(EXPERT_THREADS):
        model = new_model(seed)
        load_weights(model, base_dir)
        sampler = BatchSampler(random.Random(f"{seed}:expert:{task_name}"), recipe.batch_size,
                               focus=task_name, replay_fraction=recipe.replay_fraction)
        loss = train_phase(model, sampler, steps=recipe.expert_steps[task_name], lr=recipe.expert_lr,
                           warmup=recipe.warmup_steps, weight_decay=recipe.weight_decay,
                           grad_clip=recipe.grad_clip, on_step=on_step)
        Path(out_dir).mkdir()
        save_model_dir(model, out_dir)
    return {"seconds": time.perf_counter() - started, "loss": loss}
