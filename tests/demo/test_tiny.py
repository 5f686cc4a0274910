"""The tests' tiny families (mergehub/demo/tiny.py): what each ``change`` alters, determinism,
sharding, and that a small Llama family is a model transformers loads."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mergehub.demo.tiny import (FINAL_NORM, LORA_TARGET, TINY_SHAPES, save_model, small_llama_family,
                                tiny_family)


def files_of(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def changed_rows(base: torch.Tensor, expert: torch.Tensor) -> int:
    """Rows of a 2-D tensor (or the one row of a 1-D tensor) whose bytes differ from the base's."""
    rows = base.reshape(base.shape[0], -1) if base.dim() > 1 else base.reshape(1, -1)
    other = expert.reshape(rows.shape)
    return int((rows.view(torch.int32) != other.view(torch.int32)).any(dim=1).sum())


def test_the_same_arguments_write_the_same_bytes_and_another_seed_does_not(tmp_path):
    one, two = tiny_family(tmp_path / "one"), tiny_family(tmp_path / "two")
    three = tiny_family(tmp_path / "three", seed=1)
    for a, b, c in zip([one.base, *one.experts], [two.base, *two.experts], [three.base, *three.experts]):
        assert files_of(a) == files_of(b)
        assert files_of(a)["model.safetensors"] != files_of(c)["model.safetensors"]
    # what is written is what the family hands back
    assert load_file(str(one.experts[1] / "model.safetensors")).keys() == one.expert_tensors[1].keys()
    for name, tensor in load_file(str(one.experts[1] / "model.safetensors")).items():
        assert torch.equal(tensor, one.expert_tensors[1][name])


def test_rows_change_half_of_each_matrix_and_every_vector_but_the_final_norm(tmp_path):
    family = tiny_family(tmp_path, experts=1)
    expert = family.expert_tensors[0]
    for name, base in family.base_tensors.items():
        changed = changed_rows(base, expert[name])
        if name == FINAL_NORM:
            assert changed == 0
        elif base.dim() == 2:
            assert changed == base.shape[0] // 2, name
        else:
            assert changed == 1, name


def test_lora_changes_one_matrix_by_a_rank_one_delta_and_dense_changes_everything(tmp_path):
    lora = tiny_family(tmp_path / "lora", experts=1, change="lora")
    for name, base in lora.base_tensors.items():
        same = torch.equal(base, lora.expert_tensors[0][name])
        assert same == (name != LORA_TARGET), name
    delta = lora.expert_tensors[0][LORA_TARGET] - lora.base_tensors[LORA_TARGET]
    assert torch.linalg.matrix_rank(delta, rtol=1e-4) == 1
    dense = tiny_family(tmp_path / "dense", experts=1, change="dense")
    for name, base in dense.base_tensors.items():
        assert (base != dense.expert_tensors[0][name]).all(), name


def test_low_rank_deltas_have_the_rank_asked_for_and_expert_k_moves_further(tmp_path):
    family = tiny_family(tmp_path, experts=2, change="low_rank", rank=2, dtype=torch.float64)
    name = "model.layers.0.mlp.up_proj.weight"
    deltas = [expert[name] - family.base_tensors[name] for expert in family.expert_tensors]
    # rank 2 up to the fp32 rounding of the product that made them
    assert [int(torch.linalg.matrix_rank(d, rtol=1e-5)) for d in deltas] == [2, 2]
    assert deltas[1].norm() > deltas[0].norm()


def test_shards_tied_embeddings_and_base_only_files(tmp_path):
    names = list(TINY_SHAPES)
    family = tiny_family(tmp_path, experts=1, tied=True, shards=[names[:3], names[3:-1]],
                         base_extra={"tokenizer.json": "{}"})
    index = json.loads((family.base / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == ["model-00001-of-00002.safetensors",
                                                         "model-00002-of-00002.safetensors"]
    assert "lm_head.weight" not in index["weight_map"]
    assert json.loads((family.base / "config.json").read_text())["tie_word_embeddings"] is True
    assert (family.base / "tokenizer.json").exists() and not (family.experts[0] / "tokenizer.json").exists()
    with pytest.raises(ValueError, match="every tensor exactly once"):
        save_model(tmp_path / "bad", family.base_tensors, shards=[names[:2]])
    with pytest.raises(ValueError, match="change must be one of"):
        tiny_family(tmp_path / "bad", change="sparse")


def test_a_small_llama_family_loads_in_transformers_and_its_experts_compute_other_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    family = small_llama_family(tmp_path, experts=1, hidden=16, layers=2)
    ids = torch.tensor([[1, 5, 9, 3]])
    logits = []
    for directory in (family.base, family.experts[0]):
        model = AutoModelForCausalLM.from_pretrained(directory)
        with torch.no_grad():
            logits.append(model(ids).logits)
    assert logits[0].shape == (1, 4, 64)
    assert not torch.equal(logits[0], logits[1])
