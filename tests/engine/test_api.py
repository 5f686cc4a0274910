"""The library entry points: progress and cancellation, the certificate, measured deviation."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import BLOCK, listing, load_model, make_family
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergehub.demo.tiny import save_model
from mergehub.engine import api
from mergehub.engine.blocks import partition
from mergehub.engine.config import parse_config
from mergehub.engine.errors import Cancelled
from mergehub.engine.layout import read_model_layout


def test_progress_is_reported_with_increasing_done(tmp_path, family, catalog):
    seen = []
    api.run_merge(parse_config(family.config()), tmp_path / "out", catalog_dir=catalog, block_size=BLOCK,
                  budget=0.5, progress=seen.append)
    stages = [p.stage for p in seen]
    assert stages.index("merge") > stages.index("index") and set(stages) == {"index", "merge"}
    for stage in ("index", "merge"):
        done = [p.done for p in seen if p.stage == stage]
        assert len(done) > 3 and done == sorted(done) and len(set(done)) == len(done)
        last = [p for p in seen if p.stage == stage][-1]
        assert last.done == last.total and last.fraction == 1.0


@pytest.mark.parametrize("after", [0, 1, 5, 20])
def test_cancel_raises_and_publishes_nothing(tmp_path, family, catalog, after):
    """cancel() is polled between units; True at any point stops the job with nothing visible."""
    api.index_model(family.experts[0], family.base, catalog_dir=catalog, block_size=BLOCK)
    calls = [0]

    def cancel() -> bool:
        calls[0] += 1
        return calls[0] > after

    with pytest.raises(Cancelled, match="nothing was published"):
        api.run_merge(parse_config(family.config()), tmp_path / "out", catalog_dir=catalog,
                      block_size=BLOCK, cancel=cancel)
    assert calls[0] == after + 1
    assert [p for p in listing(tmp_path) if not p.startswith(("catalog", "family"))] == []


def test_cancel_during_the_last_step_publishes_nothing(tmp_path, family, catalog):
    """Even when the merge is complete, a cancel seen before the rename wins."""
    api.index_model(family.experts[0], family.base, catalog_dir=catalog, block_size=BLOCK)
    api.index_model(family.experts[1], family.base, catalog_dir=catalog, block_size=BLOCK)
    polls = []
    api.run_merge(parse_config(family.config()), tmp_path / "probe", catalog_dir=catalog, block_size=BLOCK,
                  cancel=lambda: polls.append(1) and False)
    total = len(polls)
    state = [0]

    def cancel() -> bool:
        state[0] += 1
        return state[0] == total

    with pytest.raises(Cancelled):
        api.run_merge(parse_config(family.config()), tmp_path / "out", catalog_dir=catalog,
                      block_size=BLOCK, cancel=cancel)
    assert not (tmp_path / "out").exists() and not [p for p in listing(tmp_path) if "staging" in p]


def test_plan_needs_an_index_unless_asked_to_build_it(family, catalog):
    config = parse_config(family.config())
    with pytest.raises(api.NotIndexed, match="mergehub index"):
        api.plan_merge(config, catalog_dir=catalog, block_size=BLOCK)
    plan = api.plan_merge(config, catalog_dir=catalog, block_size=BLOCK, index_missing=True)
    assert plan.planned_expert_bytes > 0
    assert api.plan_merge(config, catalog_dir=catalog, block_size=BLOCK).digest == plan.digest


def test_nonfinite_experts_are_merged_with_a_warning(tmp_path, family, catalog):
    tensors = dict(family.expert_tensors[0])
    bad = tensors["lm_head.weight"].clone()
    bad[0, 0] = float("inf")
    tensors["lm_head.weight"] = bad
    save_model(family.experts[0], tensors)
    result = api.run_merge(parse_config(family.config()), tmp_path / "out", catalog_dir=catalog,
                           block_size=BLOCK)
    (warning,) = result.metrics["warnings"]
    assert "lm_head.weight" in warning and str(family.experts[0]) in warning
    assert torch.isinf(load_model(tmp_path / "out")["lm_head.weight"][0, 0])


def test_metrics_split_time_and_bytes(tmp_path, family, catalog):
    m = api.run_merge(parse_config(family.config()), tmp_path / "out", catalog_dir=catalog,
                      block_size=BLOCK, budget=0.5).metrics
    assert set(m["seconds"]) == {"plan", "read", "compute", "write", "total", "index"}
    assert all(v >= 0 for v in m["seconds"].values()) and m["seconds"]["index"] > 0
    assert m["indexed_now"] == [str(e) for e in family.experts]
    assert m["bytes_written"] == (tmp_path / "out" / "model.safetensors").stat().st_size
    assert m["deviation"] is None  # only measured on request


# --------------------------------------------------------------------------------------------
# The certificate bounds the deviation of additive operators


def _coefficients(method: str, weights: list[float], lam: float, normalize: bool) -> list[float]:
    """c_k of out = base + Σ c_k δ_k, from mergekit's definitions (see docs/operators.md)."""
    if method == "ties":  # a single expert: the sign election keeps its non-zero entries
        return [lam * (1.0 if normalize else weights[0])]
    total = sum(weights)
    divisor = total if normalize and abs(total) >= 1e-8 else 1.0
    return [w * lam / divisor for w in weights]


def _independent_deviation(fam, plan, coeffs) -> tuple[float, float]:
    """‖θ_A − θ_full‖₂ and ‖θ_full − θ₀‖₂ in float64 from the raw tensors and the access set."""
    layout = read_model_layout(fam.base)
    diff_sq = update_sq = 0.0
    for name, info in layout.tensors.items():
        base = fam.base_tensors[name].double()
        full = torch.zeros_like(base)
        omitted = torch.zeros_like(base)
        for k, tensors in enumerate(fam.expert_tensors):
            d = coeffs[k] * (tensors[name].double() - base)
            full += d
            mask = torch.ones(info.rows, dtype=torch.bool)
            for b in plan.access[k].get(name, ()):
                blk = partition(info, plan.block_size)[b]
                mask[blk.row_start:blk.row_end] = False
            omitted += d * (mask.view(-1, *[1] * (d.dim() - 1)) if d.dim() >= 2 else mask[0])
        diff_sq += float((omitted ** 2).sum())
        update_sq += float((full ** 2).sum())
    return math.sqrt(diff_sq), math.sqrt(update_sq)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), experts=st.integers(1, 3), change=st.sampled_from(["rows", "dense", "lora"]),
       block=st.sampled_from([32, 64, 96, 160, 1024]), budget=st.floats(0.01, 1.0),
       weights=st.lists(st.floats(-2, 2).filter(lambda w: abs(w) > 1e-3), min_size=3, max_size=3),
       lam=st.floats(0.1, 2.0), normalize=st.booleans(), ties=st.booleans())
def test_the_certificate_bounds_the_measured_deviation(tmp_path, seed, experts, change, block, budget,
                                                       weights, lam, normalize, ties):
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    method = "ties" if ties else "task_arithmetic"
    experts = 1 if ties else experts
    fam = make_family(root / "f", experts=experts, seed=seed, change=change)
    weights = weights[:experts]
    if normalize and not ties and abs(sum(weights)) < 0.1:
        weights[0] += 1.0  # keep Σw away from 0 so coefficients stay moderate
    mapping = fam.config(method, weights=weights, parameters={"lambda": lam, "normalize": normalize})
    result = api.run_merge(parse_config(mapping), root / "out", catalog_dir=root / "cat", block_size=block,
                           budget=budget, measure_deviation=True, device="cpu",
                           sketch_rank=0)  # blocks only: tests/engine/test_sketch.py bounds sketched plans
    cert = result.plan.certificate
    measured = result.metrics["deviation"]["absolute"]
    independent, update = _independent_deviation(fam, result.plan, _coefficients(method, weights, lam, normalize))
    slack = 1e-5 * (update + 1.0)  # float32 rounding of the engine's arithmetic
    assert cert is not None
    # the catalog's norms come from float32 deltas: the bound holds up to that rounding
    assert independent <= cert * (1 + 1e-6) + 1e-12
    assert measured <= cert + slack
    assert measured == pytest.approx(independent, rel=1e-3, abs=slack)
    assert result.metrics["deviation"]["update_norm"] == pytest.approx(update, rel=1e-3, abs=slack)
    if result.plan.planned_expert_bytes == result.plan.nonzero_expert_bytes:
        assert cert == 0.0 and measured == 0.0
    # the published output is the budgeted merge, not the full one
    out = load_model(root / "out")
    base = fam.base_tensors
    coeffs = _coefficients(method, weights, lam, normalize)
    name = "model.layers.0.self_attn.q_proj.weight"
    info = read_model_layout(fam.base).tensors[name]
    expected = base[name].double().clone()
    for k, tensors in enumerate(fam.expert_tensors):
        for b in result.plan.access[k].get(name, ()):
            blk = partition(info, block)[b]
            rows = slice(blk.row_start, blk.row_end)
            expected[rows] += coeffs[k] * (tensors[name][rows].double() - base[name][rows].double())
    assert torch.allclose(out[name].double(), expected, rtol=1e-5, atol=1e-6)


def test_certificate_is_none_for_operators_that_are_not_additive(family, catalog):
    config = parse_config(family.config("ties", parameters={"density": 0.5}))
    assert api.plan_merge(config, catalog_dir=catalog, block_size=BLOCK, index_missing=True,
                          budget=0.5).certificate is None
