"""The synthetic family generator (mergehub/demo; its command line is bench/generate.py): Llama
names and shapes, delta structure, sharding, seeds."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from safetensors import safe_open

from bench.generate import main  # the generator's command line
from mergehub.demo.deltas import DenseDelta
from mergehub.demo.safetensors_writer import CheckpointWriter
from mergehub.demo.shapes import choose_shape
from mergehub.demo.synthetic import generate_family
from mergehub.engine.config import parse_config
from mergehub.engine.errors import ConfigError
from mergehub.engine.operators.registry import OPERATORS, get_operator
from mergehub.engine.layout import read_model_layout

TINY = dict(hidden=128, layers=4, vocab=256, experts=2)  # about 1 MB per model in bf16


def load(model_dir) -> dict[str, torch.Tensor]:
    layout = read_model_layout(model_dir)
    out = {}
    for f in layout.files:
        with safe_open(f.path, "pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def raw_bytes(model_dir) -> dict[str, bytes]:
    layout = read_model_layout(model_dir)
    out = {}
    for t in layout.tensors.values():
        with open(t.file, "rb") as f:
            f.seek(t.start)
            out[t.name] = f.read(t.nbytes)
    return out


def digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.safetensors"))}


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return generate_family(tmp_path_factory.mktemp("dense") / "fam", seed=1, **TINY)


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    return generate_family(tmp_path_factory.mktemp("lora") / "fam", delta="lora", dtype="float32",
                           lora_rank=4, lora_layers=0.5, seed=2, **TINY)


def test_llama_names_shapes_and_config(dense):
    tensors = load(dense["base"])
    h, kv, ffn = 128, 64, 384  # head_dim 64: 2 query heads, 1 key/value head
    expected = {"model.embed_tokens.weight": (256, h), "model.norm.weight": (h,),
                "lm_head.weight": (256, h)}
    for n in range(4):
        p = f"model.layers.{n}."
        expected |= {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                     p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                     p + "mlp.gate_proj.weight": (ffn, h), p + "mlp.up_proj.weight": (ffn, h),
                     p + "mlp.down_proj.weight": (h, ffn), p + "input_layernorm.weight": (h,),
                     p + "post_attention_layernorm.weight": (h,)}
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    config = json.loads((dense["base"] / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"],
            config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"],
            config["tie_word_embeddings"]) == (h, 4, ffn, 2, 1, 256, False)
    for name in ("generation_config.json", "tokenizer_config.json", "tokenizer.json"):
        assert (dense["experts"][1] / name).is_file()
    vocab = json.loads((dense["base"] / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(vocab) == 256 and sorted(vocab.values()) == list(range(256))


def test_dense_deltas_are_on_every_tensor_at_their_drawn_scale(dense):
    base = load(dense["base"])
    for k, expert_dir in enumerate(dense["experts"]):
        expert = load(expert_dir)
        source = DenseDelta(seed=1, expert=k, sigma=1e-3, spread=1.0)
        for name, b in base.items():
            delta = expert[name].float() - b.float()
            assert delta.abs().max() > 0, name
            if b.dim() == 2:  # enough values for a stable std; bf16 rounding is far below σ here
                assert 0.8 < delta.std().item() / source.scale(name, tuple(b.shape)) < 1.2, name
    e0, e1 = load(dense["experts"][0]), load(dense["experts"][1])
    assert not torch.equal(e0["lm_head.weight"], e1["lm_head.weight"])


def test_lora_touches_only_chosen_modules_with_low_rank_deltas(lora):
    family = json.loads(lora["family"].read_text())
    base_raw = raw_bytes(lora["base"])
    base = load(lora["base"])
    for expert_dir in lora["experts"]:
        chosen = family["lora_layers_per_expert"][expert_dir.name]
        assert len(chosen) == 2  # half of 4 layers
        touched = {f"model.layers.{n}.self_attn.{m}.weight" for n in chosen for m in ("q_proj", "v_proj")}
        expert_raw = raw_bytes(expert_dir)
        expert = load(expert_dir)
        for name in base_raw:
            if name in touched:
                delta = expert[name].double() - base[name].double()
                s = torch.linalg.svdvals(delta)
                assert s[0] > 0 and s[4] / s[0] < 1e-3, name  # rank 4 up to fp32 rounding
            else:
                assert expert_raw[name] == base_raw[name], name
    layers = [tuple(v) for v in family["lora_layers_per_expert"].values()]
    assert len(layers) == 2


def test_sharding_writes_index_and_keeps_values(tmp_path, dense):
    paths = generate_family(tmp_path / "sharded", seed=1, shard_size="200KB", **TINY)
    files = sorted(p.name for p in paths["base"].glob("*.safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((paths["base"] / "model.safetensors.index.json").read_text())
    seen = {}
    for fname in files:
        with safe_open(paths["base"] / fname, "pt") as st:
            seen.update({k: fname for k in st.keys()})
    assert index["weight_map"] == seen
    layout = read_model_layout(paths["base"])
    assert index["metadata"]["total_size"] == layout.weight_bytes
    assert all(f.header_bytes % 8 == 0 for f in layout.files)  # data aligned like safetensors writes it
    assert max(f.size - f.header_bytes for f in layout.files
               if len([t for t in layout.tensors.values() if t.file == f.path]) > 1) <= 200_000
    single = load(dense["experts"][0])
    sharded = load(paths["experts"][0])
    assert single.keys() == sharded.keys()
    assert all(torch.equal(single[k], sharded[k]) for k in single)  # sharding changes no value


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, dense):
    again = generate_family(tmp_path / "again", seed=1, **TINY)
    other = generate_family(tmp_path / "other", seed=3, **TINY)
    assert digest(again["root"]) == digest(dense["root"])
    assert digest(other["root"])["base/model.safetensors"] != digest(dense["root"])["base/model.safetensors"]


def test_tied_embeddings_drop_lm_head(tmp_path):
    paths = generate_family(tmp_path / "tied", tied_embeddings=True, seed=0, **TINY)
    assert "lm_head.weight" not in load(paths["base"])
    assert json.loads((paths["base"] / "config.json").read_text())["tie_word_embeddings"] is True


def test_merge_configs_point_at_the_family(dense):
    ties = yaml.safe_load(dense["configs"]["ties"].read_text())
    assert ties["merge_method"] == "ties" and ties["base_model"] == str(dense["base"])
    assert [m["model"] for m in ties["models"]] == [str(p) for p in dense["experts"]]
    assert all(m["parameters"]["density"] == 0.5 for m in ties["models"])
    assert (ties["dtype"], ties["out_dtype"]) == ("float32", "bfloat16")
    ta = yaml.safe_load(dense["configs"]["task_arithmetic"].read_text())
    assert ta["merge_method"] == "task_arithmetic" and len(ta["models"]) == 2


def test_there_is_a_valid_config_for_every_method(dense):
    get_operator("ties")  # loads every operator module
    assert set(dense["configs"]) == set(OPERATORS)
    for method, path in dense["configs"].items():
        config = parse_config(yaml.safe_load(path.read_text()))  # raises on anything invalid
        assert config.operator.name == method


@pytest.mark.parametrize("target", [2_000_000, 50_000_000, 1_000_000_000, 7_000_000_000])
def test_shape_lands_close_to_the_target(target):
    for tied in (False, True):
        shape = choose_shape(target, tied_embeddings=tied)
        assert abs(shape.params - target) / target < 0.02
        assert shape.heads % shape.kv_heads == 0 and shape.kv_heads < shape.heads or shape.heads == 1
        assert shape.heads * shape.head_dim == shape.hidden


def test_bad_arguments_are_config_errors(tmp_path, dense):
    with pytest.raises(ConfigError, match="experts"):
        generate_family(tmp_path / "x", experts=0, **{k: v for k, v in TINY.items() if k != "experts"})
    with pytest.raises(ConfigError, match="already exists"):
        generate_family(dense["root"], seed=1, **TINY)
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="not a generated family"):
        generate_family(tmp_path / "mine", force=True, **TINY)
    with pytest.raises(ConfigError, match="float"):
        generate_family(tmp_path / "y", dtype="int8", **TINY)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_writer_refuses_short_or_long_data(tmp_path):
    writer = CheckpointWriter(tmp_path, [("a", (2, 3))], torch.float32, 1 << 20)
    with pytest.raises(ValueError, match="overflows"):
        writer.write(torch.zeros(3, 3))
    writer.write(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="not fully written"):
        writer.close()


def test_cli_generates_and_replaces_with_force(tmp_path, capsys):
    argv = [str(tmp_path / "cli"), "--size", "1MB", "--experts", "1", "--hidden", "128",
            "--layers", "2", "--delta", "lora"]
    assert main(argv) == 0
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert main(argv + ["--force", "--seed", "5"]) == 0
    assert json.loads((tmp_path / "cli" / "family.json").read_text())["arguments"]["seed"] == 5
