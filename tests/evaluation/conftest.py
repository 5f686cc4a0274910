"""Fixtures for the evaluation app: a tiny language-model family (a random Llama base with a
character tokenizer, and experts that are the base with a few tensors nudged), registered and
indexed in acme, and a small exact-match task file under the checkpoint root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mergehub.scoring.tiny_model import write_tiny_model

TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def _nudged_copy(base: Path, out: Path, seed: int) -> Path:
    """``base`` with every MLP weight moved by a little seeded noise (a dense fine-tune)."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (base / name).exists():
            shutil.copy(base / name, out / name)
    tensors = load_file(str(base / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in tensors.items():
        if "mlp" in name:
            tensors[name] = tensor + 0.05 * torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _low_rank_copy(base: Path, out: Path, seed: int, rank: int = 2) -> Path:
    """``base`` with every attention and MLP matrix moved by a seeded product of two thin
    matrices (a delta of rank ``rank``, as a fine-tune's nearly is): the index's low-rank
    sketches hold it almost exactly, so budgeted task arithmetic plans read them."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (base / name).exists():
            shutil.copy(base / name, out / name)
    tensors = load_file(str(base / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in tensors.items():
        if tensor.dim() == 2 and ("mlp" in name or "self_attn" in name):
            u = torch.randn(tensor.shape[0], rank, generator=gen)
            v = torch.randn(tensor.shape[1], rank, generator=gen)
            tensors[name] = tensor + 0.05 * (u @ v.T / rank ** 0.5).to(tensor.dtype)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture
def lm_family(tmp_path) -> dict:
    root = tmp_path / "lm"
    base = write_tiny_model(root / "base", hidden=32, layers=1, heads=2, intermediate=64, seed=0)
    experts = [_nudged_copy(base, root / f"expert-{k}", seed=k) for k in (1, 2)]
    return {"base": base, "experts": experts}


@pytest.fixture
def registered_lm(lm_family, alice, acme, run_on_commit) -> dict:
    from mergehub.registry.services import register_checkpoint

    with run_on_commit():
        base = register_checkpoint(team=acme, user=alice, name="lm-base", role="base", family_name="lm",
                                   local_path=str(lm_family["base"]))
    experts = []
    for k, path in enumerate(lm_family["experts"], start=1):
        with run_on_commit():
            ckpt = register_checkpoint(team=acme, user=alice, name=f"lm-expert-{k}", role="expert",
                                       family_name="lm", local_path=str(path))
        ckpt.refresh_from_db()
        assert ckpt.is_ready, ckpt.index_error
        experts.append(ckpt)
    base.refresh_from_db()
    return {"base": base, "experts": experts}


@pytest.fixture
def registered_sketch_lm(tmp_path, alice, acme, run_on_commit) -> dict:
    """A tiny language-model family whose experts' deltas are of rank 2, registered in acme and
    indexed (with the index's low-rank sketches): budgeted task arithmetic reads sketches."""
    from mergehub.registry.services import register_checkpoint

    root = tmp_path / "sketch-lm"
    base_dir = write_tiny_model(root / "base", hidden=64, layers=1, heads=2, intermediate=128, seed=0)
    with run_on_commit():
        base = register_checkpoint(team=acme, user=alice, name="sk-base", role="base", family_name="sketch-lm",
                                   local_path=str(base_dir))
    experts = []
    for k in (1, 2):
        path = _low_rank_copy(base_dir, root / f"expert-{k}", seed=k)
        with run_on_commit():
            ckpt = register_checkpoint(team=acme, user=alice, name=f"sk-expert-{k}", role="expert",
                                       family_name="sketch-lm", local_path=str(path))
        ckpt.refresh_from_db()
        assert ckpt.is_ready, ckpt.index_error
        assert ckpt.index_stats["sketched_tensors"] > 0
        experts.append(ckpt)
    base.refresh_from_db()
    return {"base": base, "experts": experts}


@pytest.fixture
def task_file(tmp_path) -> Path:
    """Six reverse-the-word examples in the character tokenizer's alphabet."""
    path = tmp_path / "tasks" / "reverse.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    words = ["abcd", "word", "merge", "hub", "tiny", "llama"]
    path.write_text("".join(json.dumps({"prompt": f"reverse:{w}=", "target": w[::-1]}) + "\n" for w in words))
    return path


@pytest.fixture
def reverse_task(task_file, acme, alice):
    from mergehub.evaluation.task_registry import register_task

    return register_task(team=acme, user=alice, name="reverse", path=str(task_file),
                         task_settings={"max_new_tokens": 6})


def lm_merge_inputs(registered_lm, budget: str = "0.5") -> dict:
    """Keyword arguments for runs.services.create_run: task arithmetic of both LM experts."""
    return {"method": "task_arithmetic", "base": registered_lm["base"],
            "experts": [(e, {"weight": 0.5}) for e in registered_lm["experts"]], "budget": budget}


@pytest.fixture
def lm_run(registered_lm, alice, acme, run_on_commit):
    """A succeeded merge of the LM experts that nobody asked to evaluate."""
    from mergehub.runs.services import create_run

    with run_on_commit():
        run = create_run(user=alice, team=acme, name="lm merge", **lm_merge_inputs(registered_lm))
    run.refresh_from_db()
    assert run.status == "succeeded", (run.status, run.error)
    return run


@pytest.fixture
def evaluated_run(registered_lm, reverse_task, alice, acme, run_on_commit):
    """A succeeded merge of the LM experts evaluated on ``reverse`` after the merge (with its
    base and experts): the run, its evaluation job and the task."""
    from mergehub.runs.services import create_run

    with run_on_commit():
        run = create_run(user=alice, team=acme, name="evaluated merge", evaluate_tasks=[reverse_task],
                         **lm_merge_inputs(registered_lm))
    run.refresh_from_db()
    assert run.status == "succeeded", (run.status, run.error)
    job = run.evaluations.get()
    assert job.status == "succeeded", (job.status, job.error)
    return {"run": run, "job": job, "task": reverse_task}
