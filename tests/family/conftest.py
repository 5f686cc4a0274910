"""Shared fixtures of the family tests: a tiny recipe (a few steps of small batches) that
exercises every phase of the trainer in well under a second of training."""

from __future__ import annotations

import pytest

from mergehub.family.recipe import Recipe
from mergehub.family.tasks import TASK_NAMES

TINY = Recipe(base_steps=3, expert_steps={t: 2 for t in TASK_NAMES}, batch_size=4, warmup_steps=1)


@pytest.fixture(scope="session")
def tiny_recipe() -> Recipe:
    return TINY


@pytest.fixture(scope="module")
def tiny_family(tmp_path_factory):
    """A family trained in this process with the tiny recipe (read-only for the tests)."""
    from mergehub.family.train import train_family

    return train_family(tmp_path_factory.mktemp("family") / "fam", seed=0, recipe=TINY, workers=0)
