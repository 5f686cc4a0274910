"""No silent garbage: a merge that turns finite inputs into Inf/NaN fails with NonFiniteOutput,
naming the first such tensor, and publishes nothing; inputs that already hold Inf/NaN pass
them through as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import BLOCK, listing, load_model, make_family, run_cli
from safetensors.torch import save_file

from mergehub.engine import api
from mergehub.engine.config import parse_config
from mergehub.engine.errors import NonFiniteOutput
from mergehub.engine.executor import all_finite
from mergehub.engine.layout import read_model_layout

HUGE = 1e308  # finite, but 1e308·δ overflows float32


def _merge(mapping, out_dir, catalog, **kwargs):
    return api.run_merge(parse_config(mapping), out_dir, catalog_dir=catalog, device="cpu",
                         block_size=BLOCK, **kwargs)


def _first_changed(family, k: int = 0) -> str:
    """The first tensor, in the base's (= the executor's) order, that expert k changes."""
    return next(name for name in read_model_layout(family.base).tensors
                if not torch.equal(family.expert_tensors[k][name], family.base_tensors[name]))


def _rewrite(directory: Path, name: str, edit) -> None:
    """Overwrite a single-file model with ``edit`` applied to one of its tensors."""
    tensors = load_model(directory)
    tensors[name] = edit(tensors[name].clone())
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _assert_nothing_published(out_dir: Path) -> None:
    assert not out_dir.exists()
    assert not [p for p in listing(out_dir.parent) if "staging" in p], listing(out_dir.parent)


@pytest.mark.parametrize("method", ["task_arithmetic", "linear"])
def test_an_overflowing_weight_fails_naming_the_first_tensor(tmp_path, family, catalog, method):
    mapping = family.config(method, weights=[HUGE, 0.5], dtype="float32", with_base=method != "linear",
                            **({"parameters": {"normalize": False}} if method == "linear" else {}))
    out = tmp_path / "out"
    with pytest.raises(NonFiniteOutput) as info:
        _merge(mapping, out, catalog)
    msg = str(info.value)
    first = _first_changed(family) if method != "linear" else next(iter(read_model_layout(family.base).tensors))
    assert msg.startswith(f"the merge produced Inf/NaN in tensor '{first}'"), msg
    assert "from finite inputs: a weight or parameter overflows float32" in msg
    assert "largest |weight| is 1e+308" in msg and "dtype: float64" in msg
    assert msg.endswith("; nothing was published") and "\n" not in msg
    _assert_nothing_published(out)


def test_measure_deviation_fails_the_same_way(tmp_path, family, catalog):
    out = tmp_path / "out"
    with pytest.raises(NonFiniteOutput, match=f"in tensor '{_first_changed(family)}'"):
        _merge(family.config(weights=[HUGE, 0.5]), out, catalog, measure_deviation=True, budget=0.5)
    _assert_nothing_published(out)


def test_a_sweep_fails_rather_than_report_nan_deviations(family, catalog):
    with pytest.raises(NonFiniteOutput, match="from finite inputs") as info:
        api.sweep(parse_config(family.config(weights=[HUGE, 0.5])), [1.0, 0.5], device="cpu",
                  catalog_dir=catalog, block_size=BLOCK)
    assert "published" not in str(info.value)  # a sweep publishes nothing anyway


def test_an_overflow_on_the_cast_to_float16_is_caught(tmp_path, family, catalog):
    # base + 1e7·δ (|δ| ~ 0.05) is ~5e5: finite in float32, beyond float16's 65504
    mapping = family.config(weights=[1e7, 0.5], dtype="float32", out_dtype="float16")
    out = tmp_path / "out"
    with pytest.raises(NonFiniteOutput) as info:
        _merge(mapping, out, catalog)
    msg = str(info.value)
    assert msg.startswith(f"the merge produced Inf/NaN in tensor '{_first_changed(family)}'"), msg
    assert "finite in float32 but exceed float16's range (±6.55e+04); use a wider out_dtype" in msg
    _assert_nothing_published(out)


def test_a_copied_base_tensor_that_overflows_bfloat16_is_caught(tmp_path, catalog):
    # model.norm.weight is the same in every model, so its rows are copied from the base (no
    # compute); 3.4e38 is finite in float32 but rounds to Inf in bfloat16 (max ≈ 3.39e38).
    family = make_family(tmp_path / "family")
    for model in (family.base, *family.experts):
        _rewrite(model, "model.norm.weight", lambda t: t.fill_(3.4e38))
    out = tmp_path / "out"
    with pytest.raises(NonFiniteOutput) as info:
        _merge(family.config(out_dtype="bfloat16"), out, catalog)
    msg = str(info.value)
    assert msg.startswith("the merge produced Inf/NaN in tensor 'model.norm.weight' from finite inputs"), msg
    assert "exceed bfloat16's range" in msg
    _assert_nothing_published(out)


@pytest.mark.parametrize("where", ["base", "expert"])
def test_inputs_that_already_hold_inf_or_nan_pass_through(tmp_path, catalog, where):
    family = make_family(tmp_path / "family")
    name = "model.layers.0.mlp.up_proj.weight"
    changed = (family.expert_tensors[0][name] != family.base_tensors[name]).any(dim=1).nonzero()[0, 0]
    if where == "base":
        _rewrite(family.base, name, lambda t: t.index_put_((torch.tensor(0), torch.tensor(0)),
                                                            torch.tensor(float("inf"))))
    else:
        _rewrite(family.experts[0], name, lambda t: t.index_put_((changed, torch.tensor(0)),
                                                                 torch.tensor(float("nan"))))
    result = _merge(family.config(), tmp_path / "out", catalog)  # today's behaviour: no error
    merged = load_model(tmp_path / "out")
    assert not torch.isfinite(merged[name]).all()
    assert all(torch.isfinite(t).all() for n, t in merged.items() if n != name)
    if where == "expert":
        assert any("NaN or Inf" in w for w in result.metrics["warnings"])


def test_the_cli_exits_2_with_one_line(tmp_path, family, catalog, capsys):
    config = family.write_config(weights=[HUGE, 0.5])
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "merge", config, out, "--catalog", catalog, "--block-size", BLOCK,
                              "--device", "cpu")
    assert rc == 2
    assert err.count("\n") == 1, err
    assert err.startswith(f"mergehub: error: the merge produced Inf/NaN in tensor '{_first_changed(family)}'")
    assert err.rstrip().endswith("nothing was published")
    _assert_nothing_published(out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_all_finite_reads_the_bits_right(dtype):
    finfo = torch.finfo(dtype)
    edges = torch.tensor([finfo.max, -finfo.max, finfo.tiny, -finfo.tiny, 0.0, -0.0], dtype=dtype)
    assert all_finite(edges) and all_finite(edges[:0]) and all_finite(edges.reshape(2, 3).t())
    for bad in (float("inf"), float("-inf"), float("nan"), -float("nan")):
        x = torch.zeros(300_000, dtype=dtype)  # several of all_finite's pieces
        x[-1] = bad
        assert not all_finite(x), (dtype, bad)
        assert not all_finite(x.reshape(-1, 2).t())  # not contiguous: the torch route
        assert not all_finite(torch.tensor(bad, dtype=dtype))  # 0-D
