"""train_family / load_family on a tiny recipe: layout, loadability, determinism, reuse,
cancellation and bad output directories. Everything trains in this process (workers=0)."""

from __future__ import annotations

import json
import os

import pytest

from mergehub.engine.api import Cancelled, MergeHubError
from mergehub.family import load_family
from mergehub.family.recipe import DEFAULT_RECIPE
from mergehub.family.store import FAMILY_FILE, FamilyError
from mergehub.family.tasks import TASK_NAMES
from mergehub.family.train import train_family

MODEL_NAMES = ["base"] + [f"expert-{t}" for t in TASK_NAMES]


def _weights(info) -> dict[str, bytes]:
    return {name: (path / "model.safetensors").read_bytes() for name, path in info.models.items()}


def test_layout_and_family_json(tiny_family, tiny_recipe):
    root = tiny_family.root
    assert sorted(p.name for p in root.iterdir()) == sorted(MODEL_NAMES + [FAMILY_FILE])
    assert list(tiny_family.models) == MODEL_NAMES
    doc = json.loads((root / FAMILY_FILE).read_text())
    assert doc["seed"] == 0 and doc["tasks"] == list(TASK_NAMES)
    assert doc["recipe"] == tiny_recipe.to_dict()
    assert doc["models"] == {"base": "base", **{t: f"expert-{t}" for t in TASK_NAMES}}
    assert {"base", "experts", "total"} <= set(doc["seconds"])
    assert {"torch", "transformers", "tokenizers", "python"} <= set(doc["versions"])
    assert 500_000 < doc["parameters"] < 600_000
    for path in tiny_family.models.values():
        names = {p.name for p in path.iterdir()}
        assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json"} == names


def test_models_load_with_transformers(tiny_family):
    import torch
    from safetensors import safe_open
    from transformers import AutoTokenizer, LlamaForCausalLM

    for path in tiny_family.models.values():
        model = LlamaForCausalLM.from_pretrained(str(path))
        assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 2
        assert model.config.tie_word_embeddings is False
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
            assert "lm_head.weight" in f.keys()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        ids = tokenizer("reverse:abcd=", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, tiny_family, tiny_recipe):
    again = train_family(tmp_path / "again", seed=0, recipe=tiny_recipe, workers=0)
    assert _weights(again) == _weights(tiny_family)
    other = train_family(tmp_path / "other", seed=1, recipe=tiny_recipe, workers=0)
    assert all(a != b for a, b in zip(_weights(other).values(), _weights(tiny_family).values()))


def test_progress_counts_every_step(tmp_path, tiny_recipe):
    reports = []
    train_family(tmp_path / "fam", recipe=tiny_recipe, workers=0, progress=reports.append)
    assert {(p.stage, p.unit, p.total) for p in reports} == {("train", "steps", tiny_recipe.total_steps)}
    assert [p.done for p in reports] == list(range(1, tiny_recipe.total_steps + 1))
    assert reports[0].message == "base" and reports[-1].message == "expert swap"


def test_load_family_reuses_only_a_matching_family(tiny_family, tiny_recipe):
    found = load_family(tiny_family.root, seed=0, recipe=tiny_recipe)
    assert found is not None and found.reused and found.models == tiny_family.models
    assert load_family(tiny_family.root, seed=1, recipe=tiny_recipe) is None
    assert load_family(tiny_family.root, seed=0) is None  # the default recipe differs
    assert load_family(tiny_family.root / "nowhere", seed=0, recipe=tiny_recipe) is None


def test_train_family_returns_an_existing_family_without_training(tiny_family, tiny_recipe):
    reports = []
    info = train_family(tiny_family.root, seed=0, recipe=tiny_recipe, progress=reports.append)
    assert info.reused and reports == []


def test_incomplete_family_is_not_reused(tmp_path, tiny_recipe):
    info = train_family(tmp_path / "fam", recipe=tiny_recipe, workers=0)
    (info.experts["sort"] / "model.safetensors").unlink()
    assert load_family(info.root, recipe=tiny_recipe) is None
    with pytest.raises(FamilyError, match="--force"):
        train_family(info.root, recipe=tiny_recipe, workers=0)
    fixed = train_family(info.root, recipe=tiny_recipe, workers=0, force=True)
    assert not fixed.reused and load_family(info.root, recipe=tiny_recipe) is not None


def test_another_seed_needs_force(tmp_path, tiny_recipe):
    root = train_family(tmp_path / "fam", seed=0, recipe=tiny_recipe, workers=0).root
    with pytest.raises(FamilyError, match="seed 0"):
        train_family(root, seed=1, recipe=tiny_recipe, workers=0)
    info = train_family(root, seed=1, recipe=tiny_recipe, workers=0, force=True)
    assert info.seed == 1 and load_family(root, seed=1, recipe=tiny_recipe) is not None


def test_an_empty_directory_is_filled(tmp_path, tiny_recipe):
    (tmp_path / "fam").mkdir()
    info = train_family(tmp_path / "fam", recipe=tiny_recipe, workers=0)
    assert load_family(info.root, recipe=tiny_recipe) is not None


@pytest.mark.parametrize("make", ["file", "other_dir", "file_parent"])
def test_bad_output_directory(tmp_path, tiny_recipe, make):
    target = tmp_path / "out"
    if make == "file":
        target.write_text("x")
    elif make == "other_dir":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    else:
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "out"
    with pytest.raises(FamilyError) as err:
        train_family(target, recipe=tiny_recipe, workers=0, force=True)
    assert isinstance(err.value, MergeHubError) and "\n" not in str(err.value)
    if make == "other_dir":
        assert (target / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_parent(tmp_path, tiny_recipe):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(FamilyError, match="writable"):
            train_family(parent / "fam", recipe=tiny_recipe, workers=0)
    finally:
        parent.chmod(0o700)


def test_negative_seed_is_refused(tmp_path, tiny_recipe):
    with pytest.raises(FamilyError, match="seed"):
        train_family(tmp_path / "fam", seed=-1, recipe=tiny_recipe)


@pytest.mark.parametrize("stop_after", [2, 6])  # during the base, during an expert
def test_cancel_leaves_nothing(tmp_path, tiny_recipe, stop_after):
    reports = []
    with pytest.raises(Cancelled):
        train_family(tmp_path / "deep" / "fam", recipe=tiny_recipe, workers=0, progress=reports.append,
                     cancel=lambda: len(reports) >= stop_after)
    assert len(reports) == stop_after  # stopped at the first check after the request
    assert list(tmp_path.iterdir()) == []  # no family, no staging dir, no created parent


def test_scaled_recipe():
    short = DEFAULT_RECIPE.scaled(0.01)
    assert short.base_steps == 2 and set(short.expert_steps.values()) <= {2, 3}
    assert short.warmup_steps == 1 and short.expert_lr == DEFAULT_RECIPE.expert_lr


def test_a_daemonic_process_trains_the_experts_itself(tmp_path, tiny_recipe, tiny_family, monkeypatch):
    """django-q2 runs jobs in daemonic processes, which may not start children."""
    import multiprocessing

    from mergehub.family import parallel

    def refuse(*args, **kwargs):
        raise AssertionError("no worker processes from a daemonic process")

    monkeypatch.setattr(parallel, "ExpertWorkers", refuse)
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True)
    info = train_family(tmp_path / "fam", recipe=tiny_recipe, workers=2)
    monkeypatch.undo()
    assert _weights(info) == _weights(tiny_family)
