"""The executor: full-budget output equals a whole-tensor merge bit for bit, only planned expert
bytes are read, dtypes and formats survive, and memory does not grow with tensor size."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import BLOCK, assert_bit_identical, load_model, make_family, tensor_bytes
from safetensors import safe_open

from mergehub.demo.tiny import TINY_HIDDEN, TINY_SHAPES, save_model
from mergehub.engine import api, buffers, executor, kernels
from mergehub.engine.blocks import partition
from mergehub.engine.config import parse_config
from mergehub.engine.dtypes import torch_dtype
from mergehub.engine.layers import count_layers
from mergehub.engine.layout import read_model_layout
from mergehub.engine.model_files import INDEX_NAME
from mergehub.engine.operators import selection
from mergehub.engine.operators.base import MergeContext
from mergehub.engine.operators.registry import get_operator
from mergehub.engine.reader import RangeReader


def reference_merge(mapping: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """The unbudgeted merge on whole tensors: every input loaded with safetensors, the operator
    applied once per tensor, the result cast like the engine casts (out_dtype for floats)."""
    config = parse_config(mapping)
    op = config.operator
    base = load_model(config.base_model.path) if config.base_model is not None else None
    inputs = [load_model(m.path) for m in config.models]
    layout = read_model_layout(config.base_model.path if base is not None else config.models[0].path)
    layers = count_layers(list(layout.tensors))
    out = {}
    for name, info in layout.tensors.items():
        stored = torch_dtype(info.dtype)
        if not stored.is_floating_point:
            out[name] = (base or inputs[0])[name]
            continue
        work = config.dtype or stored
        ctx = MergeContext(name, seed, 0, info.rows, info.rows)
        merged = op.merge(None if base is None else base[name].to(work),
                          [x[name].to(work) for x in inputs], config.resolve(name, layers), ctx)
        out[name] = merged.to(config.out_dtype or stored)
    return out


def _merge(mapping, out_dir, catalog, **kwargs):
    kwargs.setdefault("block_size", BLOCK)
    return api.run_merge(parse_config(mapping), out_dir, catalog_dir=catalog, device="cpu", **kwargs)


CASES = {
    "task_arithmetic": dict(weights=[0.7, -0.4], parameters={"lambda": 1.3}),
    "task_arithmetic_normalized": dict(method="task_arithmetic", weights=[0.7, 0.4],
                                       parameters={"normalize": True}),
    "ties": dict(method="ties", weights=[1.0, 0.6], parameters={"density": 0.5}),
    "ties_dense": dict(method="ties", weights=[1.0, 0.6]),
    "dare_ties": dict(method="dare_ties", weights=[1.0, 0.8], parameters={"density": 0.6}),
    "dare_ties_blockwise": dict(method="dare_ties", weights=[1.0, 0.8],
                                parameters={"density": 0.6, "rescale": False}),
    "slerp": dict(method="slerp", weights=[1.0, 1.0], parameters={"t": 0.3}),
    "linear": dict(method="linear", weights=[0.3, 0.9], with_base=False),
    # no base: the stored-dtype fast path (merge_stored) is given none
    "nuslerp_no_base": dict(method="nuslerp", weights=[0.3, 0.9], with_base=False),
    "multislerp_no_base": dict(method="multislerp", weights=[0.6, 0.4], with_base=False),
}


def _mapping(fam, case: str, **top) -> dict:
    kwargs = dict(CASES[case])
    method = kwargs.pop("method", case)
    mapping = fam.config(method, **kwargs, **top)
    if method == "slerp":
        mapping["models"] = mapping["models"][:1]
        del mapping["models"][0]["parameters"]
    return mapping


@pytest.mark.parametrize("case", sorted(CASES))
def test_full_budget_is_bit_identical_to_the_whole_tensor_merge(tmp_path, catalog, case):
    fam = make_family(tmp_path / "f")
    mapping = _mapping(fam, case)
    result = _merge(mapping, tmp_path / "out", catalog, seed=7)
    assert_bit_identical(load_model(tmp_path / "out"), reference_merge(mapping, seed=7))
    m = result.metrics
    if mapping.get("base_model"):
        # only changed blocks were read, and they are all of them
        assert m["expert_bytes_requested"] == m["planned_expert_bytes"] == m["nonzero_expert_bytes"]
        assert m["planned_expert_bytes"] < m["full_expert_bytes"]
    else:
        assert m["expert_bytes_requested"] == m["full_expert_bytes"]


# In torch (no compiled fast path), these cases tile: the executor merges block-local units a
# few rows at a time (``Executor._compute_tiled``), and TIES, whose units are whole tensors,
# streams its top-k selection and combine over flat tiles. The other cases merge whole tensors
# in one call; test_full_budget_is_bit_identical covers them.
ROW_TILED = ("dare_ties_blockwise", "linear", "task_arithmetic", "task_arithmetic_normalized",
             "ties_dense")
STREAMED = ("ties",)


def _torch_only(monkeypatch) -> None:
    """No compiled kernel, as where the library is not built: the operators' torch statements run."""
    monkeypatch.setattr(kernels, "enabled", lambda: False)


def _spy(monkeypatch, owner, name: str, record) -> None:
    """Wrap ``owner.name`` so every call is passed to ``record(*args)`` before it runs."""
    original = getattr(owner, name)

    def spy(*args, **kwargs):
        record(*args, **kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)


@pytest.mark.parametrize("case", ROW_TILED + STREAMED)
def test_tiled_compute_is_bit_identical(tmp_path, catalog, monkeypatch, case):
    """Units merged a few rows at a time (tiles far smaller than a block or a unit here) give
    the bits of one whole-tensor merge, random operators included. The compiled fast paths are
    off, as where the library is not built, so the torch tiling runs; spies check that the
    merge really went tile by tile."""
    tile_elements = 12
    monkeypatch.setattr(executor, "TILE_ELEMENTS", tile_elements)
    monkeypatch.setattr(selection, "TILE_ELEMENTS", tile_elements)
    fam = make_family(tmp_path / "f", dtype=torch.bfloat16)
    mapping = _mapping(fam, case, dtype="float32")
    _torch_only(monkeypatch)

    row_tiles: dict[tuple[str, int, int], list[tuple[int, int]]] = {}  # unit -> rows merged

    def executor_merge(self, loaded, p, inputs_for, base, rows=None):
        if rows is not None:
            unit = loaded.unit
            row_tiles.setdefault((unit.tensor, unit.row_start, unit.row_end), []).append(rows)

    combined: list[int] = []  # elements per combine call of the TIES operator
    _spy(monkeypatch, executor.Executor, "_merge", executor_merge)
    if case in STREAMED:
        op_class = type(get_operator(mapping["merge_method"]))
        _spy(monkeypatch, op_class, "_combine", lambda self, base, *rest: combined.append(base.numel()))

    _merge(mapping, tmp_path / "out", catalog, seed=3)
    assert_bit_identical(load_model(tmp_path / "out"), reference_merge(mapping, seed=3))

    if case in ROW_TILED:
        assert row_tiles, "no unit was merged tile by tile"
        for (tensor, start, end), rows in row_tiles.items():
            # consecutive single-row tiles (a row is 8 or 16 elements) covering the unit
            assert rows == [(r, r + 1) for r in range(start, end)], tensor
        assert any(end - start > 1 for _, start, end in row_tiles), "every unit was one row"
    else:
        assert not row_tiles  # TIES top-k units are whole tensors
        assert combined and max(combined) <= tile_elements
        largest = max(info.numel() for info in load_model(fam.base).values())
        assert len(combined) >= largest // tile_elements  # the big tensors took many tiles


@pytest.mark.parametrize("dtype, work", [(torch.bfloat16, "float32"), (torch.float16, "float32"),
                                         (torch.bfloat16, None)])
def test_half_precision_is_bit_identical_and_keeps_its_dtype(tmp_path, catalog, dtype, work):
    fam = make_family(tmp_path / "f", dtype=dtype)
    mapping = _mapping(fam, "ties")
    if work:
        mapping["dtype"] = work
    _merge(mapping, tmp_path / "out", catalog)
    out = load_model(tmp_path / "out")
    assert {t.dtype for t in out.values()} == {dtype}
    assert_bit_identical(out, reference_merge(mapping))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == \
        str(dtype).removeprefix("torch.")


def test_out_dtype_changes_tensors_and_config(tmp_path, catalog):
    fam = make_family(tmp_path / "f", dtype=torch.bfloat16)
    mapping = _mapping(fam, "task_arithmetic", dtype="float32", out_dtype="float16")
    _merge(mapping, tmp_path / "out", catalog)
    out = load_model(tmp_path / "out")
    assert {t.dtype for t in out.values()} == {torch.float16}
    assert_bit_identical(out, reference_merge(mapping))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["torch_dtype"] == "float16" and config["model_type"] == "llama"


def test_dare_replays_exactly_and_depends_on_the_seed(tmp_path, catalog):
    fam = make_family(tmp_path / "f", change="dense")
    mapping = _mapping(fam, "dare_ties_blockwise")
    _merge(mapping, tmp_path / "a", catalog, seed=3)
    _merge(mapping, tmp_path / "b", catalog, seed=3)
    _merge(mapping, tmp_path / "c", catalog, seed=4)
    a, b, c = (load_model(tmp_path / n) for n in "abc")
    assert_bit_identical(a, b)
    assert any(tensor_bytes(a[n]) != tensor_bytes(c[n]) for n in a)


def test_non_weight_files_are_copied_from_the_base(tmp_path, catalog, family):
    _merge(family.config(), tmp_path / "out", catalog)
    for name in ("tokenizer.json", "generation_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (family.base / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "generation_config.json", "mergehub_manifest.json", "model.safetensors",
        "tokenizer.json"]


def test_tied_embeddings(tmp_path, catalog):
    fam = make_family(tmp_path / "f", tied=True)
    mapping = _mapping(fam, "task_arithmetic")
    _merge(mapping, tmp_path / "out", catalog)
    out = load_model(tmp_path / "out")
    assert "lm_head.weight" not in out
    assert_bit_identical(out, reference_merge(mapping))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True


def test_sharded_inputs_and_sharded_output(tmp_path, catalog):
    names = list(TINY_SHAPES)
    fam = make_family(tmp_path / "f", shards=[names[:2], names[2:5], names[5:]],
                      expert_shards=[names[:6], names[6:]])
    mapping = _mapping(fam, "ties")
    _merge(mapping, tmp_path / "out", catalog, shard_bytes=300)
    out_dir = tmp_path / "out"
    index = json.loads((out_dir / INDEX_NAME).read_text())
    shards = sorted(p.name for p in out_dir.glob("*.safetensors"))
    assert len(shards) > 2 and "model.safetensors" not in shards
    assert set(index["weight_map"]) == set(TINY_SHAPES) and sorted(set(index["weight_map"].values())) == shards
    total = 0
    for shard in shards:
        with safe_open(str(out_dir / shard), "pt") as f:
            sizes = [f.get_tensor(name).numel() * 4 for name in f.keys()]
            assert all(index["weight_map"][name] == shard for name in f.keys())
        assert sum(sizes) <= 300 or len(sizes) == 1  # a shard overflows only to hold one big tensor
        total += sum(sizes)
    assert index["metadata"]["total_size"] == total == sum(4 * t.numel() for t in fam.base_tensors.values())
    assert_bit_identical(load_model(out_dir), reference_merge(mapping))
    assert read_model_layout(out_dir).weight_bytes == total  # our own reader accepts it too


def test_zero_delta_blocks_are_never_read(tmp_path, catalog, monkeypatch):
    """A LoRA-like family: only layer 0's q_proj changed; nothing else of an expert is read."""
    fam = make_family(tmp_path / "f", change="lora", experts=2)
    api.index_model(fam.experts[0], fam.base, catalog_dir=catalog, block_size=BLOCK)
    api.index_model(fam.experts[1], fam.base, catalog_dir=catalog, block_size=BLOCK)
    reads = []
    real = RangeReader.read_range

    def spy(self, path, offset, nbytes, slab=None):
        reads.append((path, offset, nbytes))
        return real(self, path, offset, nbytes, slab)

    monkeypatch.setattr(RangeReader, "read_range", spy)
    mapping = _mapping(fam, "task_arithmetic")
    result = _merge(mapping, tmp_path / "out", catalog)
    q = read_model_layout(fam.experts[0]).tensors["model.layers.0.self_attn.q_proj.weight"]
    changed = sum(b.nbytes for b in partition(q, BLOCK))  # the rank-1 delta changes every row
    m = result.metrics
    assert m["expert_bytes_requested"] == m["planned_expert_bytes"] == 2 * changed
    assert m["nonzero_expert_bytes"] == 2 * changed < m["full_expert_bytes"] / 10
    for path, offset, n in reads:
        if path.parent in (fam.experts[0], fam.experts[1]):
            assert q.start <= offset and offset + n <= q.start + q.nbytes
    assert_bit_identical(load_model(tmp_path / "out"), reference_merge(mapping))


@pytest.mark.parametrize("budget", [0.05, 0.3, 0.77, "700B"])
def test_the_merge_requests_exactly_the_planned_bytes(tmp_path, catalog, family, budget):
    m = _merge(family.config(), tmp_path / "out", catalog, budget=budget).metrics
    assert m["expert_bytes_requested"] + m["sketch_bytes_requested"] == m["planned_expert_bytes"] <= m["budget_bytes"]
    assert sum(pe["requested_bytes"] for pe in m["per_expert"]) == m["expert_bytes_requested"]
    assert m["base_bytes_requested"] == read_model_layout(family.base).weight_bytes


def test_unread_blocks_take_the_base_values(tmp_path, catalog, family):
    """Under a budget without sketches, every position no expert was read at equals the base
    exactly (with sketches, test_sketch.py)."""
    result = _merge(family.config(), tmp_path / "out", catalog, budget=0.25, sketch_rank=0)
    out = load_model(tmp_path / "out")
    layout = read_model_layout(family.base)
    for name, info in layout.tensors.items():
        read_rows = torch.zeros(info.rows, dtype=torch.bool)
        for per in result.plan.access:
            for b in per.get(name, ()):
                blk = partition(info, BLOCK)[b]
                read_rows[blk.row_start:blk.row_end] = True
        if info.rows == 1 or len(info.shape) < 2:
            if not read_rows.any():
                assert torch.equal(out[name], family.base_tensors[name])
            continue
        assert torch.equal(out[name][~read_rows], family.base_tensors[name][~read_rows])


def _largest_merge_call(tmp_path, catalog, monkeypatch, rows: int) -> tuple[int, int]:
    shapes = dict(TINY_SHAPES, **{"model.embed_tokens.weight": (rows, 8)})
    fam = make_family(tmp_path / f"f{rows}", change="dense", shapes=shapes)
    config = parse_config(fam.config())
    largest = [0]
    real = config.operator.merge

    def spy(base, inputs, p, ctx):
        largest[0] = max(largest[0], max(x.numel() for x in [base, *inputs] if x is not None))
        return real(base, inputs, p, ctx)

    monkeypatch.setattr(config.operator, "merge", spy)
    api.run_merge(config, tmp_path / f"out{rows}", catalog_dir=catalog, block_size=BLOCK, device="cpu")
    return largest[0], rows * 8


def test_block_local_memory_does_not_grow_with_tensor_size(tmp_path, catalog, monkeypatch):
    monkeypatch.setattr(executor, "UNIT_BYTES", 4 * BLOCK)  # 8 rows of 8 fp32 per unit
    small, small_numel = _largest_merge_call(tmp_path, catalog, monkeypatch, 64)
    large, large_numel = _largest_merge_call(tmp_path, catalog, monkeypatch, 4096)
    assert small == large <= 4 * BLOCK // 4
    assert large < large_numel / 100 and small < small_numel


@pytest.mark.parametrize("method", ["della", "ties"])
def test_whole_tensor_units_fit_their_slabs(tmp_path, catalog, monkeypatch, method):
    """What an operator takes from a slab beyond the unit's inputs and output (DELLA's masks)
    fits in it: no memory of its own, and no slab replaced by a larger one, whose fresh pages the
    kernel would zero all over again."""
    shapes = dict(TINY_SHAPES, **{"model.embed_tokens.weight": (512, 512)})  # 512 KiB a model: pages add little slack
    fam = make_family(tmp_path / "f", change="dense", dtype=torch.bfloat16, shapes=shapes)
    allocated = []
    real = executor.SlabPool.__init__

    def spy_pool(pool, size, capacity=0):
        real(pool, size, capacity)
        allocated.append(("pool", size))

    monkeypatch.setattr(executor.SlabPool, "__init__", spy_pool)
    real_empty = buffers.aligned_empty
    monkeypatch.setattr(buffers, "aligned_empty", lambda n: allocated.append(n) or real_empty(n))
    _merge(fam.config(method, weights=[1.0, 0.6], parameters={"density": 0.5}, dtype="float32"),
           tmp_path / "out", catalog)  # float32 working copies of bf16 inputs take twice their bytes
    assert allocated[-1] == ("pool", executor.POOL_SLABS)
    assert len(allocated) == executor.POOL_SLABS + 1  # the pool's slabs, nothing after


def test_non_block_local_operators_get_whole_tensors(tmp_path, catalog, monkeypatch):
    fam = make_family(tmp_path / "f")
    config = parse_config(_mapping(fam, "ties"))
    seen = {}
    real, real_find = config.operator.merge, kernels.find

    def spy(base, inputs, p, ctx):
        seen[ctx.tensor] = (ctx.row_start, ctx.row_end, base.shape)
        return real(base, inputs, p, ctx)

    def find(*args):  # TIES through its kernel (where built)
        kernel = real_find(*args)
        if kernel is None:
            return None

        def run(base, inputs, p, ctx, out_dtype):
            seen[ctx.tensor] = (ctx.row_start, ctx.row_end, base.shape)
            return kernel.run(base, inputs, p, ctx, out_dtype)

        return dataclasses.replace(kernel, run=run)

    monkeypatch.setattr(config.operator, "merge", spy)
    monkeypatch.setattr(kernels, "find", find)
    api.run_merge(config, tmp_path / "out", catalog_dir=catalog, block_size=BLOCK, device="cpu")
    for name, shape in TINY_SHAPES.items():
        if name != "model.norm.weight":  # unchanged everywhere: copied without computing
            assert seen[name][2] == torch.Size(shape)


def test_measuring_deviation_reads_unplanned_one_row_tensors(tmp_path, catalog, family):
    """measure_deviation also reads the omitted blocks; a 1-D tensor left out of the plan is
    one such block (regression: its bytes were assigned as if it had rows)."""
    result = _merge(family.config(), tmp_path / "out", catalog, budget=0.1, block_size=32,
                    measure_deviation=True, sketch_rank=0)  # a sketch would cover the 1-D tensors' matrices
    unplanned_1d = [name for name, shape in TINY_SHAPES.items() if len(shape) == 1 and name != "model.norm.weight"
                    and not any(name in per for per in result.plan.access)]
    assert unplanned_1d
    m = result.metrics
    assert m["deviation"]["absolute"] > 0
    assert m["expert_bytes_requested"] == m["planned_expert_bytes"]
    plain = _merge(family.config(), tmp_path / "plain", catalog, budget=0.1, block_size=32, sketch_rank=0)
    assert_bit_identical(load_model(tmp_path / "out"), load_model(tmp_path / "plain"))
    assert plain.metrics["deviation"] is None


@pytest.mark.parametrize("budget", [1.0, 0.3])
def test_integer_empty_and_scalar_tensors(tmp_path, catalog, budget):
    """Integer buffers are copied from the base; empty and 0-D tensors merge like any other."""
    fam = make_family(tmp_path / "f")
    for k, (directory, tensors) in enumerate([(fam.base, fam.base_tensors), *zip(fam.experts, fam.expert_tensors)]):
        extra = {"model.position_ids": torch.arange(16).reshape(1, 16) + (k > 0),
                 "model.empty": torch.zeros(0, 8), "model.scale": torch.tensor(2.0 + k)}
        tensors.update(extra)
        save_model(directory, tensors)
    mapping = fam.config(weights=[0.5, 0.25])
    result = _merge(mapping, tmp_path / "out", catalog, budget=budget, measure_deviation=True)
    out = load_model(tmp_path / "out")
    assert torch.equal(out["model.position_ids"], fam.base_tensors["model.position_ids"])
    assert out["model.empty"].shape == (0, 8)
    if budget == 1.0:
        assert out["model.scale"].item() == 2.0 + 0.5 * 1 + 0.25 * 2
        assert_bit_identical(out, reference_merge(mapping))
        assert result.metrics["deviation"]["absolute"] == 0.0


BIG_ENDS = {  # an embedding and an LM head far larger than the layers, as in a real model
    "model.embed_tokens.weight": (400, TINY_HIDDEN),
    "model.layers.0.self_attn.q_proj.weight": (TINY_HIDDEN, TINY_HIDDEN),
    "model.layers.0.mlp.up_proj.weight": (2 * TINY_HIDDEN, TINY_HIDDEN),
    "model.layers.1.self_attn.q_proj.weight": (TINY_HIDDEN, TINY_HIDDEN),
    "model.layers.1.mlp.down_proj.weight": (TINY_HIDDEN, 2 * TINY_HIDDEN),
    "model.norm.weight": (TINY_HIDDEN,),
    "lm_head.weight": (400, TINY_HIDDEN),
}


def _data_order(out_dir) -> list[str]:
    with open(out_dir / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header.pop("__metadata__", None)
    return sorted(header, key=lambda name: header[name]["data_offsets"][0])


@pytest.mark.parametrize("method, moved", [("ties", True), ("task_arithmetic", False)])
def test_big_whole_tensors_are_merged_in_the_middle(tmp_path, catalog, monkeypatch, method, moved):
    monkeypatch.setattr(executor, "UNIT_BYTES", 1)  # the fixture's tensors are tiny
    fam = make_family(tmp_path / "f", shapes=BIG_ENDS)
    mapping = fam.config(method, weights=[1.0, 0.6], parameters={"density": 0.5} if method == "ties" else None)
    _merge(mapping, tmp_path / "out", catalog)
    big = {"model.embed_tokens.weight", "lm_head.weight"}
    base_order, order = _data_order(fam.base), _data_order(tmp_path / "out")
    assert {base_order[0], base_order[-1]} & big  # the base has a big tensor at an end
    if moved:  # TIES merges whole tensors: the big ones go where smaller units surround them
        assert not {order[0], order[-1]} & big and sorted(order) == sorted(base_order)
    else:  # task arithmetic splits them into blocks: the base's order stays
        assert order == base_order
    assert_bit_identical(load_model(tmp_path / "out"), reference_merge(mapping))
