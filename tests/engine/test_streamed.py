"""Streamed tensors (streamed.py): a whole-tensor unit too big to hold is merged by pieces after
counting passes (TIES' top-k; DARE's and DELLA's rescale), and gives the bits of the
whole-tensor merge, whatever the pieces, the dtypes, the kernels, the budget, the sketches or
the references evaluated beside it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from conftest import BLOCK, assert_bit_identical, load_model, make_family

from mergehub.demo.tiny import TINY_SHAPES
from mergehub.engine import api, executor, kernels
from mergehub.engine import streamed as streamed_module
from mergehub.engine.config import parse_config
from mergehub.engine.layout import read_model_layout

SHAPES = dict(TINY_SHAPES, **{"model.embed_tokens.weight": (96, 40)})  # the tensor worth streaming


def _merge(mapping: dict, out, catalog, streamed: bool, monkeypatch, expect_streamed: bool | None = None,
           **kwargs) -> api.MergeResult:
    """Merge with every whole-tensor unit that can be streamed streamed in pieces of 2 blocks, or
    none streamed; check that the embedding was (``expect_streamed``, default ``streamed``)."""
    monkeypatch.setattr(executor, "STREAMED_TENSOR_BYTES", 0 if streamed else 1 << 40)
    monkeypatch.setattr(executor, "UNIT_BYTES", 2 * BLOCK)
    pieces = []
    real = executor.Executor._count

    def spy(self, loaded, p):
        pieces.append((loaded.unit.tensor, loaded.unit.stage, loaded.unit.row_start))
        return real(self, loaded, p)

    merged = []
    real_compute = executor.Executor.compute

    def spy_compute(self, loaded, p):
        merged.append(loaded.unit)
        return real_compute(self, loaded, p)

    monkeypatch.setattr(executor.Executor, "_count", spy)
    monkeypatch.setattr(executor.Executor, "compute", spy_compute)
    result = api.run_merge(parse_config(mapping), out, catalog_dir=catalog, device="cpu", block_size=BLOCK,
                           **kwargs)
    embed = [row for name, stage, row in pieces if name == "model.embed_tokens.weight" and stage in ("top", "sums")]
    expected = streamed if expect_streamed is None else expect_streamed
    assert (len(embed) > 2) == expected  # several pieces counted, or none
    units = [u for u in merged if u.tensor == "model.embed_tokens.weight"]
    if expected:  # merged in the pieces it was counted in: no unit holds the whole tensor
        assert [u.row_start for u in units] == embed and not any(u.whole for u in units)
    else:
        assert [u.whole for u in units] == [True]
    return result


def _ties(fam, density=0.5, **top) -> dict:
    return fam.config("ties", weights=[1.0, 0.6], parameters={"density": density}, **top)


def _method(fam, method: str, density=0.5, **top) -> dict:
    """A config of ``method`` with its defaults (DARE and DELLA rescale by default)."""
    parameters = {"density": density, "epsilon": 0.1} if method.startswith("della") else {"density": density}
    return fam.config(method, weights=[1.0, 0.6, -0.3][:len(fam.experts)], parameters=parameters, **top)


def _kernels(monkeypatch, compiled: bool) -> None:
    if compiled and not kernels.enabled():
        pytest.skip("the compiled kernels are not built")
    if not compiled:
        monkeypatch.setattr(kernels, "enabled", lambda: False)


@pytest.mark.parametrize("compiled", [True, False], ids=["kernels", "torch"])
@pytest.mark.parametrize("dtype, work", [(torch.bfloat16, "float32"), (torch.bfloat16, None),
                                         (torch.float32, None)])
def test_streamed_merge_is_bit_identical(tmp_path, catalog, monkeypatch, compiled, dtype, work):
    _kernels(monkeypatch, compiled)
    # bf16 deltas take few values: the k-th largest has many ties, and its cut falls in a piece
    fam = make_family(tmp_path / "f", change="dense", dtype=dtype, shapes=SHAPES, experts=3)
    mapping = _ties(fam, dtype=work) if work else _ties(fam)
    _merge(mapping, tmp_path / "whole", catalog, False, monkeypatch)
    located = []
    real = streamed_module.tie_position
    monkeypatch.setattr(streamed_module, "tie_position", lambda *args: located.append(args[-1]) or real(*args))
    progress = []
    result = _merge(mapping, tmp_path / "streamed", catalog, True, monkeypatch, progress=progress.append)
    assert_bit_identical(load_model(tmp_path / "streamed"), load_model(tmp_path / "whole"))
    merging = [(r.done, r.total) for r in progress if r.stage == "merge"]
    # progress counts merged rows once, not the counting passes: the model's bytes, in order
    assert merging[-1][0] == merging[-1][1] == sum(i.nbytes for i in read_model_layout(fam.base).tensors.values())
    assert [done for done, _ in merging] == sorted(done for done, _ in merging)
    if dtype == torch.bfloat16:  # some cut fell among ties inside a piece, and was located there
        assert located
    m = result.manifest["metrics"]
    assert m["expert_bytes_requested"] == m["full_expert_bytes"]  # the counting passes are apart
    assert m["reread_bytes_requested"] > 2 * m["full_expert_bytes"]  # every input, twice


@pytest.mark.parametrize("compiled", [True, False], ids=["kernels", "torch"])
@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_streamed_rescale_is_bit_identical(tmp_path, catalog, monkeypatch, compiled, method):
    """The rescale's exact L1 sums, gathered piece by piece, give the whole tensor's factor."""
    _kernels(monkeypatch, compiled)
    fam = make_family(tmp_path / "f", change="dense", dtype=torch.bfloat16, shapes=SHAPES, experts=3)
    mapping = _method(fam, method, dtype="float32")
    _merge(mapping, tmp_path / "whole", catalog, False, monkeypatch)
    _merge(mapping, tmp_path / "streamed", catalog, True, monkeypatch)
    assert_bit_identical(load_model(tmp_path / "streamed"), load_model(tmp_path / "whole"))


@pytest.mark.parametrize("compiled", [True, False], ids=["kernels", "torch"])
def test_streamed_rescale_with_nan_and_inf_inputs(tmp_path, catalog, monkeypatch, compiled):
    """One non-finite entry of δ makes ‖δ‖₁ non-finite, which switches that expert's rescale off
    over the whole tensor: the sums gathered piece by piece see it in the one piece it lies in."""
    _kernels(monkeypatch, compiled)
    fam = make_family(tmp_path / "f", change="dense", dtype=torch.bfloat16, shapes=SHAPES)
    path = fam.experts[0] / "model.safetensors"
    tensors = load_file(path)
    embed = tensors["model.embed_tokens.weight"].clone()
    embed[-1, 0] = float("nan")  # the last piece only
    save_file({**tensors, "model.embed_tokens.weight": embed}, path)
    mapping = _method(fam, "dare_ties", dtype="float32")
    _merge(mapping, tmp_path / "whole", catalog, False, monkeypatch)
    _merge(mapping, tmp_path / "streamed", catalog, True, monkeypatch)
    assert_bit_identical(load_model(tmp_path / "streamed"), load_model(tmp_path / "whole"))


def test_an_unread_big_tensor_is_the_base_copied_by_pieces(tmp_path, catalog, monkeypatch):
    """Where no access set reads or sketches a big tensor, nothing is counted: its pieces are the
    base's rows, as the whole tensor's merge of zero deltas gives."""
    embed = "model.embed_tokens.weight"
    fam = make_family(tmp_path / "f", change="dense", shapes=SHAPES)
    config = parse_config(_ties(fam))
    plan = api.plan_merge(config, catalog_dir=catalog, block_size=BLOCK, index_missing=True, sketch_rank=0)
    access = [{name: blocks for name, blocks in per.items() if name != embed} for per in plan.access]
    monkeypatch.setattr(executor, "STREAMED_TENSOR_BYTES", 0)
    monkeypatch.setattr(executor, "UNIT_BYTES", 2 * BLOCK)
    counted, merged = [], []
    for name, record in (("_count", counted), ("compute", merged)):
        real = getattr(executor.Executor, name)
        monkeypatch.setattr(executor.Executor, name, lambda self, loaded, p, real=real, record=record:
                            record.append(loaded.unit) or real(self, loaded, p))
    api.run_merge(config, tmp_path / "out", catalog_dir=catalog, device="cpu", block_size=BLOCK, access=access)
    assert not [u for u in counted if u.tensor == embed] and any(u.tensor != embed for u in counted)
    pieces = [u for u in merged if u.tensor == embed]
    assert len(pieces) > 2 and not any(u.whole or u.streamed for u in pieces)
    assert torch.equal(load_model(tmp_path / "out")[embed], load_model(fam.base)[embed])


def test_ties_in_float64_is_not_streamed(tmp_path, catalog, monkeypatch):
    """float64 values do not order as their float32 patterns: such a merge keeps whole tensors."""
    fam = make_family(tmp_path / "f", change="dense", shapes=SHAPES)
    _merge(_ties(fam, dtype="float64"), tmp_path / "out", catalog, True, monkeypatch, expect_streamed=False)


def test_rescale_in_a_narrow_working_dtype_is_not_streamed(tmp_path, catalog, monkeypatch):
    """bf16 sums depend on their order: a rescale computed in bf16 keeps whole tensors."""
    fam = make_family(tmp_path / "f", change="dense", dtype=torch.bfloat16, shapes=SHAPES)
    _merge(_method(fam, "dare_ties"), tmp_path / "out", catalog, True, monkeypatch, expect_streamed=False)


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_streamed_under_a_budget_with_sketches_and_references(tmp_path, catalog, monkeypatch, method):
    """Pieces an expert was not read in count as δ = 0, sketched tensors as their sketch, and
    each evaluated access set gets its own selections or rescale factors: the output and every
    deviation match (the deviation's first access set is the merge's own budget; it would be 0
    if the reference merges took the merge's statistics)."""
    fam = make_family(tmp_path / "f", change="low_rank", dtype=torch.bfloat16, shapes=SHAPES, rank=2)
    mapping = _method(fam, method, density=0.3, dtype="float32")
    options = dict(budget=0.4, measure_deviation=True, sketch_rank=2)
    whole = _merge(mapping, tmp_path / "whole", catalog, False, monkeypatch, **options)
    streamed = _merge(mapping, tmp_path / "streamed", catalog, True, monkeypatch, **options)
    assert_bit_identical(load_model(tmp_path / "streamed"), load_model(tmp_path / "whole"))
    w, s = whole.manifest["metrics"], streamed.manifest["metrics"]
    assert 0 < s["expert_bytes_requested"] == w["expert_bytes_requested"] < s["full_expert_bytes"]
    assert s["sketches_planned"] and s["deviation"]["absolute"] > 0
    # the same merges, their squared norms summed piece by piece instead of tensor by tensor
    for key in ("absolute", "update_norm", "update_relative", "weight_relative"):
        assert s["deviation"][key] == pytest.approx(w["deviation"][key], rel=1e-12)


def test_counting_passes_are_counted_apart(tmp_path, catalog, monkeypatch):
    """TIES' counting passes ask for the tensor twice more, counted apart from the merge's bytes
    (that storage gives them once: test_io_honesty.py)."""
    fam = make_family(tmp_path / "f", change="dense", shapes=SHAPES)
    seen = []
    real = executor.Executor._reader_stats

    def spy(self, *args):
        real(self, *args)
        seen.append(self.stats)

    monkeypatch.setattr(executor.Executor, "_reader_stats", spy)
    _merge(_ties(fam), tmp_path / "whole", catalog, False, monkeypatch)
    _merge(_ties(fam), tmp_path / "streamed", catalog, True, monkeypatch)
    whole, streamed = seen
    assert whole.reread_logical == 0
    assert streamed.expert_logical == whole.expert_logical
    merged = whole.base_logical + whole.expert_logical  # every 2-D tensor is streamed here
    assert merged < streamed.reread_logical <= 2 * merged
