"""The experts trained in spawned worker processes: the same bytes as in this process, steps
relayed as progress, and a cancel that stops the workers and leaves nothing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mergehub.engine.api import Cancelled
from mergehub.family.parallel import share_out
from mergehub.family.tasks import TASK_NAMES
from mergehub.family.train import train_family

pytestmark = pytest.mark.slow


def test_share_out_balances_by_steps():
    steps = {"reverse": 200, "sort": 300, "caesar": 200, "swap": 200}
    assert share_out(steps, 2) == [["sort", "swap"], ["reverse", "caesar"]]
    assert share_out(steps, 8) == [["sort"], ["reverse"], ["caesar"], ["swap"]]


def test_workers_give_the_same_bytes(tmp_path, tiny_family, tiny_recipe):
    reports = []
    info = train_family(tmp_path / "fam", recipe=tiny_recipe, workers=2, progress=reports.append)
    for name, path in info.models.items():
        expected = (tiny_family.models[name] / "model.safetensors").read_bytes()
        assert (path / "model.safetensors").read_bytes() == expected, name
    assert reports[-1].done == reports[-1].total == tiny_recipe.total_steps
    assert {p.message for p in reports} == {"base"} | {f"expert {t}" for t in info.tasks}


def test_cancel_stops_the_workers(tmp_path, tiny_recipe):
    import multiprocessing

    long_experts = replace(tiny_recipe, expert_steps={t: 10_000 for t in TASK_NAMES})
    reports = []
    with pytest.raises(Cancelled):
        train_family(tmp_path / "fam", recipe=long_experts, workers=2, progress=reports.append,
                     cancel=lambda: any(p.message != "base" for p in reports))
    assert list(tmp_path.iterdir()) == []
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("mergehub-family")]
