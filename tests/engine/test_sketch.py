"""Low-rank sketches: computed while indexing, planned with blocks, applied by the executor,
bounded by the certificate, recorded for replay, and never used at full budget."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import BLOCK, load_model, make_family, run_cli, assert_bit_identical
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergehub.demo.tiny import save_model, tiny_config
from mergehub.engine import api
from mergehub.engine.catalog import Catalog
from mergehub.engine.config import parse_config
from mergehub.engine.errors import ConfigError, ReplayMismatch
from mergehub.engine.layout import read_model_layout
from mergehub.engine.sketch import (approximate_rows, factor_layout, ladder, low_rank, residual_norms, sketch_bytes,
                                    sketch_delta, worth_sketching)

RANK = 1


def low_rank_family(root, experts: int = 3, noise: float = 0.02):
    """Experts whose 2-D deltas are rank 1 plus a little noise (what a sketch captures well);
    1-D tensors get small dense deltas."""
    fam = make_family(root, experts=0)
    gen = torch.Generator().manual_seed(7)
    for k in range(experts):
        tensors = {}
        for name, b in fam.base_tensors.items():
            scale = 0.05 * (k + 1)
            if b.dim() == 2:
                u, v = torch.randn(b.shape[0], 1, generator=gen), torch.randn(1, b.shape[1], generator=gen)
                delta = scale * (u @ v) + noise * scale * torch.randn(b.shape, generator=gen)
            else:
                delta = 0.01 * torch.randn(b.shape, generator=gen)
            tensors[name] = b + delta
        fam.experts.append(save_model(root / f"expert_{k}", tensors, config=tiny_config()))
        fam.expert_tensors.append(tensors)
    return fam


@pytest.fixture(scope="module")
def sketched(tmp_path_factory):
    """(family, catalog) indexed once with rank-1 sketches."""
    root = tmp_path_factory.mktemp("sketch")
    fam = low_rank_family(root / "family")
    catalog = root / "catalog"
    for e in fam.experts:
        api.index_model(e, fam.base, catalog_dir=catalog, block_size=BLOCK, sketch_rank=RANK)
    return fam, catalog


def _config(fam, method="task_arithmetic", **kwargs):
    return parse_config(fam.config(method=method, **kwargs))


# ----- the factorisation -----------------------------------------------------------------------

def test_low_rank_is_the_truncated_svd_for_small_matrices():
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(40, 30, generator=gen)
    a, b = low_rank(d, 5)
    s = torch.linalg.svdvals(d)
    assert torch.linalg.norm(d - a @ b.T).item() == pytest.approx(float(s[5:].norm()), rel=1e-4)


def test_randomized_range_finder_recovers_a_low_rank_matrix():
    gen = torch.Generator().manual_seed(1)
    d = torch.randn(700, 4, generator=gen) @ torch.randn(4, 600, generator=gen)  # min dim > exact cut-off
    d += 1e-3 * torch.randn(700, 600, generator=gen)
    a, b = low_rank(d, 4)
    best = float(torch.linalg.svdvals(d)[4:].norm())
    assert torch.linalg.norm(d - a @ b.T).item() <= 1.05 * best
    a2, b2 = low_rank(d, 4)
    assert torch.equal(a, a2) and torch.equal(b, b2)  # seeded: the same inputs give the same sketch


def test_residual_is_measured_per_rung_and_block_with_the_stored_factors():
    gen = torch.Generator().manual_seed(2)
    d = torch.randn(12, 8, generator=gen)
    at, bt, per_rung = sketch_delta(d, [1, 2, 3], 4, torch.bfloat16)
    assert at.dtype == bt.dtype == torch.bfloat16 and at.shape == (3, 12) and bt.shape == (3, 8)
    for rank, norms in zip([1, 2, 3], per_rung):
        resid = d - at[:rank].float().T @ bt[:rank].float()  # a prefix of the factors is that rank's sketch
        assert norms == pytest.approx([float(resid[r:r + 4].norm()) for r in (0, 4, 8)], rel=1e-4)
    assert [sum(n * n for n in norms) for norms in per_rung] == sorted(
        [sum(n * n for n in norms) for norms in per_rung], reverse=True)


def test_residual_of_a_delta_the_sketch_nearly_holds_is_measured_directly():
    """A delta of rank 3 plus a trace of noise: from rank 3 on, the expansion ‖D‖² − 2⟨D, AB⟩ + ‖AB‖²
    would cancel to rounding; those blocks are measured directly, so the norms stay exact."""
    gen = torch.Generator().manual_seed(3)
    d = torch.randn(64, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 48, generator=gen, dtype=torch.float64)
    d = (d + 1e-6 * torch.randn(64, 48, generator=gen, dtype=torch.float64)).float()
    at, bt, _ = sketch_delta(d, [1, 2, 4], 16, torch.float32)
    norms = residual_norms(d, at, bt, [1, 2, 4], 16)
    for rank, per_block in zip([1, 2, 4], norms):
        resid = d.double() - at[:rank].double().T @ bt[:rank].double()
        exact = [float(resid[r:r + 16].norm()) for r in range(0, 64, 16)]
        assert per_block == pytest.approx(exact, rel=1e-6)
    assert max(norms[-1]) < 1e-4 * float(d.norm())  # the rank-4 rung is the cancelling case


def test_approximate_rows_computes_in_the_merges_accumulation_dtype():
    """A float64 merge gets the sketch's rows in float64, not a float32 product widened."""
    gen = torch.Generator().manual_seed(4)
    at, bt = torch.randn(3, 10, generator=gen).bfloat16(), torch.randn(3, 7, generator=gen).bfloat16()
    rows = approximate_rows(at, bt, 2, 6, (4, 7), torch.float64)
    assert rows.dtype == torch.float64
    assert torch.equal(rows, at[:, 2:6].double().T @ bt.double())
    assert approximate_rows(at, bt, 2, 6, (4, 7)).dtype == torch.float32


def test_the_ladder_of_ranks():
    assert ladder(0) == [] and ladder(1) == [1] and ladder(16) == [1, 2, 4, 8, 16] and ladder(12) == [1, 2, 4, 8, 12]


def test_only_matrices_whose_sketch_is_small_are_sketched(sketched):
    fam, _ = sketched
    base = read_model_layout(fam.base)
    assert not worth_sketching(base.tensors["model.norm.weight"], 1)  # 1-D
    assert worth_sketching(base.tensors["model.embed_tokens.weight"], 1)
    assert not worth_sketching(base.tensors["model.layers.0.self_attn.q_proj.weight"], 4)  # 4·16 of 64 entries
    assert not worth_sketching(base.tensors["model.embed_tokens.weight"], 0)


# ----- the catalog ---------------------------------------------------------------------------

def test_index_stores_factors_and_residuals(sketched):
    fam, catalog = sketched
    base, expert = read_model_layout(fam.base), read_model_layout(fam.experts[0])
    entry = Catalog(catalog).lookup(expert, base, BLOCK, sketch_rank=RANK)
    assert entry.sketch_rank == RANK and entry.sketch_file
    layout = factor_layout(Catalog(catalog).sketch_path(entry))
    for name, st_ in entry.tensors.items():
        info = base.tensors[name]
        if worth_sketching(info, RANK):
            assert st_.sketch_bytes == sketch_bytes(info, RANK) and name in layout
            assert st_.sketch_ranks == [1] and len(st_.residual[0]) == len(st_.norm)
            # rank 1 of a rank-1-plus-noise delta leaves a small part of each block
            assert all(r <= n + 1e-6 for r, n in zip(st_.residual[0], st_.norm))
            assert sum(r * r for r in st_.residual[0]) < 0.1 * sum(n * n for n in st_.norm)
        else:
            assert st_.sketch_bytes == 0 and not st_.residual and name not in layout
    summary = api.index_model(fam.experts[0], fam.base, catalog_dir=catalog, block_size=BLOCK,
                              sketch_rank=RANK).to_dict()
    assert summary["sketch_rank"] == RANK and summary["sketch_bytes"] == entry.sketch_total_bytes > 0


def test_an_entry_of_another_rank_is_stale_for_that_rank_only(sketched, tmp_path):
    fam, catalog = sketched
    base, expert = read_model_layout(fam.base), read_model_layout(fam.experts[0])
    assert Catalog(catalog).lookup(expert, base, BLOCK, sketch_rank=2) is None
    assert Catalog(catalog).lookup(expert, base, BLOCK, sketch_rank=0) is not None
    plain = tmp_path / "plain"
    summary = api.index_model(fam.experts[0], fam.base, catalog_dir=plain, block_size=BLOCK, sketch_rank=0)
    assert summary.entry.sketch_rank == 0 and not summary.entry.sketch_file
    assert not list(plain.glob("*.safetensors"))


def test_a_missing_factor_file_makes_the_entry_stale(sketched, tmp_path):
    fam, _ = sketched
    catalog = tmp_path / "cat"
    api.index_model(fam.experts[1], fam.base, catalog_dir=catalog, block_size=BLOCK, sketch_rank=RANK)
    for f in catalog.glob("*.sketch.safetensors"):
        f.unlink()
    assert Catalog(catalog).lookup(read_model_layout(fam.experts[1]), read_model_layout(fam.base), BLOCK) is None


# ----- planning ------------------------------------------------------------------------------

def test_full_budget_reads_every_changed_block_and_no_sketch(sketched):
    fam, catalog = sketched
    with_rank = api.plan_merge(_config(fam), budget=1.0, catalog_dir=catalog, block_size=BLOCK, sketch_rank=RANK)
    without = api.plan_merge(_config(fam), budget=1.0, catalog_dir=catalog, block_size=BLOCK, sketch_rank=0)
    assert with_rank.sketch_bytes == 0 and with_rank.access == without.access
    assert with_rank.digest == without.digest and with_rank.certificate == 0.0


@pytest.mark.parametrize("budget", [0.1, 0.25, 0.5])
def test_budgeted_plans_spend_on_sketches_and_shrink_the_certificate(sketched, budget):
    fam, catalog = sketched
    plan = api.plan_merge(_config(fam), budget=budget, catalog_dir=catalog, block_size=BLOCK, sketch_rank=RANK)
    blocks = api.plan_merge(_config(fam), budget=budget, catalog_dir=catalog, block_size=BLOCK, sketch_rank=0)
    assert plan.sketch_bytes > 0 and plan.sketches_planned > 0
    assert plan.planned_expert_bytes == plan.sketch_bytes + plan.block_bytes <= plan.budget_bytes
    assert sum(pe["planned_bytes"] for pe in plan.per_expert) == plan.planned_expert_bytes
    assert plan.certificate < blocks.certificate
    d = plan.to_dict()
    assert d["sketch_rank"] == RANK and d["sketch_bytes"] == plan.sketch_bytes
    assert d["sketches_available"] >= d["sketches_planned"]


def test_a_budget_below_any_sketch_falls_back_to_blocks(sketched):
    fam, catalog = sketched
    plan = api.plan_merge(_config(fam), budget="63B", catalog_dir=catalog, block_size=BLOCK, sketch_rank=RANK)
    blocks = api.plan_merge(_config(fam), budget="63B", catalog_dir=catalog, block_size=BLOCK, sketch_rank=0)
    assert plan.sketch_bytes == 0 and plan.access == blocks.access and blocks.planned_expert_bytes > 0


def test_the_config_sets_the_rank_and_bad_ranks_are_refused(sketched):
    fam, catalog = sketched
    mapping = fam.config()
    mapping["mergehub"] = {"sketch_rank": RANK}
    config = parse_config(mapping)
    assert api.merge_sketch_rank(config) == RANK
    assert api.merge_sketch_rank(_config(fam)) == api.DEFAULT_SKETCH_RANK  # on by default
    assert api.merge_sketch_rank(_config(fam, method="ties")) == api.DEFAULT_SKETCH_RANK
    mapping["mergehub"] = {"sketch_rank": 0}
    assert api.merge_sketch_rank(parse_config(mapping)) == 0
    mapping["mergehub"] = {"sketch_rank": RANK}
    for bad in (-1, 1000, 1.5, "x", True):
        with pytest.raises(ConfigError, match="sketch rank|sketch_rank"):
            api.merge_sketch_rank(config, bad)
    mapping["mergehub"] = {"sketch_rank": "lots"}
    with pytest.raises(ConfigError, match="mergehub.sketch_rank"):
        api.merge_sketch_rank(parse_config(mapping))


def test_plan_without_the_rank_indexed_says_how_to_index(sketched):
    fam, catalog = sketched
    with pytest.raises(api.NotIndexed, match="--sketch-rank 3"):
        api.plan_merge(_config(fam), budget=0.5, catalog_dir=catalog, block_size=BLOCK, sketch_rank=3)


def test_a_higher_rank_catalog_offers_every_lower_rung(tmp_path):
    fam = low_rank_family(tmp_path / "family", noise=0.3)
    catalog = tmp_path / "cat"
    for e in fam.experts:
        api.index_model(e, fam.base, catalog_dir=catalog, block_size=BLOCK, sketch_rank=2)
    capped = api.plan_merge(_config(fam), budget=0.3, catalog_dir=catalog, block_size=BLOCK, sketch_rank=1)
    assert capped.sketches_planned and all(r == 1 for per in capped.sketches for r in per.values())
    free = api.plan_merge(_config(fam), budget=0.5, catalog_dir=catalog, block_size=BLOCK, sketch_rank=2)
    assert {r for per in free.sketches for r in per.values()} <= {1, 2}
    assert free.certificate <= capped.certificate


# ----- merging -------------------------------------------------------------------------------

@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(min_value=0.02, max_value=1.0),
       weights=st.lists(st.floats(min_value=-1.5, max_value=1.5), min_size=3, max_size=3))
def test_certificate_bounds_the_deviation_with_sketches(sketched, tmp_path_factory, fraction, weights):
    fam, catalog = sketched
    config = _config(fam, weights=weights)
    out = tmp_path_factory.mktemp("cert") / "out"
    result = api.run_merge(config, out, budget=fraction, catalog_dir=catalog, block_size=BLOCK,
                           device="cpu", measure_deviation=True, sketch_rank=RANK)
    m = result.metrics
    assert m["planned_expert_bytes"] <= m["budget_bytes"]
    assert m["deviation"]["absolute"] <= m["certificate"] * (1 + 1e-4) + 1e-5


def test_sketched_merge_reads_the_planned_sketch_bytes_and_beats_blocks_only(sketched, tmp_path):
    fam, catalog = sketched
    results = {}
    for rank in (RANK, 0):
        results[rank] = api.run_merge(_config(fam), tmp_path / f"r{rank}", budget=0.25, catalog_dir=catalog,
                                      block_size=BLOCK, device="cpu", measure_deviation=True, sketch_rank=rank)
    m = results[RANK].metrics
    assert m["planned_sketch_bytes"] > 0
    assert m["sketch_bytes_requested"] == m["planned_sketch_bytes"]
    assert m["expert_bytes_requested"] <= m["planned_expert_bytes"] - m["planned_sketch_bytes"]
    assert m["deviation"]["absolute"] < 0.5 * results[0].metrics["deviation"]["absolute"]
    manifest = results[RANK].manifest["plan"]
    assert manifest["sketch_rank"] == RANK and any(manifest["sketches"])
    assert results[0].manifest["plan"]["sketches"] == [{}, {}, {}]


def test_full_budget_output_is_bit_identical_with_or_without_sketches(sketched, tmp_path):
    fam, catalog = sketched
    for rank in (RANK, 0):
        api.run_merge(_config(fam), tmp_path / f"r{rank}", budget=1.0, catalog_dir=catalog, block_size=BLOCK,
                      device="cpu", sketch_rank=rank)
    assert_bit_identical(load_model(tmp_path / f"r{RANK}"), load_model(tmp_path / "r0"))


def test_ties_takes_the_sketched_delta_as_its_input(sketched, tmp_path):
    fam, catalog = sketched
    config = _config(fam, method="ties", parameters={"density": 0.5})
    result = api.run_merge(config, tmp_path / "ties", budget=0.3, catalog_dir=catalog, block_size=BLOCK,
                           device="cpu", measure_deviation=True, sketch_rank=RANK)
    blocks = api.run_merge(config, tmp_path / "ties0", budget=0.3, catalog_dir=catalog, block_size=BLOCK,
                           device="cpu", measure_deviation=True, sketch_rank=0)
    assert result.metrics["planned_sketch_bytes"] > 0 and result.metrics["certificate"] is None
    assert math.isfinite(result.metrics["deviation"]["absolute"])
    assert result.metrics["deviation"]["absolute"] < blocks.metrics["deviation"]["absolute"]


def test_replay_of_a_sketched_merge_is_bit_identical_whatever_rank_the_catalog_holds_now(sketched, tmp_path):
    fam, _ = sketched
    catalog = tmp_path / "cat"
    out = tmp_path / "out"
    api.run_merge(_config(fam), out, budget=0.3, catalog_dir=catalog, block_size=BLOCK, device="cpu",
                  sketch_rank=RANK)
    again = api.replay(out, tmp_path / "again", catalog_dir=catalog)
    assert again.plan.sketches == api.read_manifest(out)["plan"]["sketches"]
    for rank in (2, 0):  # a higher rank holds the recorded rung; rank 0 is stale and rebuilt at rank 1
        for e in fam.experts:
            api.index_model(e, fam.base, catalog_dir=catalog, block_size=BLOCK, sketch_rank=rank, force=True)
        api.replay(out, tmp_path / f"then-{rank}", catalog_dir=catalog)
        assert_bit_identical(load_model(out), load_model(tmp_path / f"then-{rank}"))


def test_replay_refuses_a_sketch_the_catalog_cannot_have(sketched, tmp_path):
    fam, catalog = sketched
    config = _config(fam)
    base = read_model_layout(fam.base)
    experts = [read_model_layout(e) for e in fam.experts]
    entries = [Catalog(catalog).lookup(e, base, BLOCK) for e in experts]
    from mergehub.engine.budget import parse_budget
    from mergehub.engine.planner import make_plan

    with pytest.raises(ReplayMismatch, match="model.norm.weight"):
        make_plan(config, base, experts, entries, parse_budget(0.5), BLOCK, access=[{}, {}, {}],
                  sketch_rank=RANK, sketches=[{"model.norm.weight": 1}, {}, {}])


def test_sweep_compares_sketches_with_blocks_only(sketched):
    fam, catalog = sketched
    rows = api.sweep(_config(fam), [1.0, 0.2], catalog_dir=catalog, block_size=BLOCK, device="cpu", sketch_rank=RANK)
    assert [(r["budget"], r["mode"]) for r in rows] == [("1.0", "sketch"), ("1.0", "blocks"),
                                                        ("0.2", "sketch"), ("0.2", "blocks")]
    full_sketch, full_blocks, low_sketch, low_blocks = rows
    assert full_sketch["deviation"]["absolute"] == full_blocks["deviation"]["absolute"] == 0.0
    assert low_sketch["sketch_bytes"] > 0 and low_blocks["sketch_bytes"] == 0
    assert low_sketch["deviation"]["absolute"] < low_blocks["deviation"]["absolute"]
    assert low_sketch["deviation"]["absolute"] <= low_sketch["certificate"] * (1 + 1e-4) + 1e-5
    only = api.sweep(_config(fam), [0.2], catalog_dir=catalog, block_size=BLOCK, device="cpu", sketch_rank=0)
    assert [r["mode"] for r in only] == ["blocks"]


def test_cli_sketch_rank_flags(sketched, capsys, tmp_path):
    fam, _ = sketched
    catalog = tmp_path / "cli-cat"
    code, out, _ = run_cli(capsys, "index", str(fam.experts[0]), "--base", str(fam.base), "--catalog",
                           str(catalog), "--block-size", str(BLOCK), "--sketch-rank", str(RANK))
    assert code == 0 and "sketches: rank 1" in out
    config = fam.write_config()
    code, out, _ = run_cli(capsys, "plan", str(config), "--budget", "0.3", "--catalog", str(catalog),
                           "--block-size", str(BLOCK), "--sketch-rank", str(RANK))
    assert code == 0 and "of which sketches" in out
    code, out, _ = run_cli(capsys, "merge", str(config), str(tmp_path / "m"), "--budget", "0.3", "--catalog",
                           str(catalog), "--block-size", str(BLOCK), "--sketch-rank", str(RANK), "--device", "cpu")
    assert code == 0 and "sketches of rank ≤ 1" in out
    code, out, _ = run_cli(capsys, "sweep", str(config), "--budgets", "0.3", "--catalog", str(catalog),
                           "--block-size", str(BLOCK), "--sketch-rank", str(RANK), "--device", "cpu")
    assert code == 0 and "sketch" in out and "blocks" in out
    code, _, err = run_cli(capsys, "plan", str(config), "--catalog", str(catalog), "--sketch-rank", "999")
    assert code != 0 and "sketch rank" in err


@pytest.mark.parametrize("budget", [0.15, 0.3, 0.6])
def test_no_sketch_grows_past_the_rank_every_sketch_could_have(tmp_path, budget):
    """The rank cap: the highest rank in a plan is one at which all sketches fit the budget together."""
    fam = low_rank_family(tmp_path / "family", noise=0.3)
    catalog = tmp_path / "cat"
    for e in fam.experts:
        api.index_model(e, fam.base, catalog_dir=catalog, block_size=BLOCK, sketch_rank=2)
    plan = api.plan_merge(_config(fam), budget=budget, catalog_dir=catalog, block_size=BLOCK, sketch_rank=2)
    base = read_model_layout(fam.base)
    entries = [Catalog(catalog).lookup(read_model_layout(e), base, BLOCK) for e in fam.experts]
    top = max((r for per in plan.sketches for r in per.values()), default=0)
    all_at_top = sum(sketch_bytes(base.tensors[t], max(r for r in st.sketch_ranks if r <= top))
                     for entry in entries for t, st in entry.tensors.items() if st.sketch_ranks)
    assert top == 1 or all_at_top <= plan.budget_bytes
