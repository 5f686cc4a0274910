"""One training phase: AdamW with linear warm-up and cosine decay over a fixed number of steps.

``on_step(done)`` is called after every step; it may raise (``Cancelled``) to stop at once.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .batches import BatchSampler


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): warm-up, then cosine to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_phase(model: torch.nn.Module, sampler: BatchSampler, *, steps: int, lr: float, warmup: int,
                weight_decay: float, grad_clip: float,
                on_step: Callable[[int], None] | None = None) -> float:
    """Train ``model`` in place for ``steps`` steps; return the last batch's loss."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98),
                                  weight_decay=weight_decay)
    loss_value = float("nan")
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, steps, warmup)
        ids, labels = sampler.next_batch()
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        loss_value = loss.item()
        if on_step is not None:
            on_step(step + 1)
    model.eval()
    return loss_value
