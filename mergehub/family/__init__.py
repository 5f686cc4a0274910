"""The demo family: a tiny character-level Llama base and four task experts, trained from
scratch on the CPU, deterministic from a seed (docs/family.md).

    train_family(out_dir, *, seed=0, ...) -> FamilyInfo     (train.py; imports torch)
    load_family(out_dir, *, seed=0, ...)  -> FamilyInfo | None
    BUILTIN_TASKS                                            the four evaluation tasks

Importing this package does not import torch; ``train_family`` is loaded on first use.
"""

from __future__ import annotations

import os

# Must be set before torch loads OpenMP: with the default (active) wait policy, idle OpenMP
# threads spin and training on a busy 2-core machine ran about 6x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .recipe import DEFAULT_RECIPE, Recipe  # noqa: E402
from .store import FamilyError, FamilyInfo, load_family  # noqa: E402
from .tasks import BUILTIN_TASKS, TASK_NAMES  # noqa: E402

__all__ = ["train_family", "load_family", "FamilyInfo", "FamilyError", "Recipe", "DEFAULT_RECIPE",
           "BUILTIN_TASKS", "TASK_NAMES"]


def __getattr__(name: str):
    if name == "train_family":
        from .train import train_family

        return train_family
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
