"""The planner: budget-sound, deterministic, every changed block at full budget, no unchanged one.

Block planning is tested here with sketches off (``sketch_rank=0``) unless a test says
otherwise; plans over sketches and blocks are tested in test_sketch.py."""

from __future__ import annotations

import math

import pytest
from conftest import BLOCK, make_family
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergehub.engine import api
from mergehub.engine.blocks import partition
from mergehub.engine.catalog import Catalog
from mergehub.engine.config import parse_config
from mergehub.engine.errors import BudgetError
from mergehub.engine.layout import read_model_layout
from mergehub.engine.budget import parse_budget
from mergehub.engine.planner import expand_ranges, make_plan


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A three-expert family indexed once for the whole module: (family, catalog dir)."""
    root = tmp_path_factory.mktemp("planner")
    fam = make_family(root / "family", experts=3)
    catalog = root / "catalog"
    for e in fam.experts:
        api.index_model(e, fam.base, catalog_dir=catalog, block_size=BLOCK)
    return fam, catalog


def _plan(fam, catalog, budget, **kwargs):
    config = parse_config(fam.config(**{k: v for k, v in kwargs.items() if k in ("method", "weights", "parameters")}))
    return api.plan_merge(config, budget=budget, catalog_dir=catalog, block_size=kwargs.get("block_size", BLOCK),
                          seed=kwargs.get("seed", 0), sketch_rank=kwargs.get("sketch_rank", 0))


def _changed_blocks(fam, catalog) -> tuple[set, dict]:
    """{(k, tensor, block)} of blocks whose bytes differ from the base, and their sizes."""
    base = read_model_layout(fam.base)
    changed, sizes = set(), {}
    for k, e in enumerate(fam.experts):
        entry = Catalog(catalog).lookup(read_model_layout(e), base, BLOCK)
        for name, stats in entry.tensors.items():
            for b, c in enumerate(stats.changed):
                sizes[(k, name, b)] = partition(base.tensors[name], BLOCK)[b].nbytes
                if c:
                    changed.add((k, name, b))
    return changed, sizes


def _access_set(plan) -> set:
    return {(k, t, b) for k, per in enumerate(plan.access) for t, bs in per.items() for b in bs}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(min_value=1e-6, max_value=1.0, allow_nan=False),
       nbytes=st.integers(min_value=1, max_value=20_000),
       weights=st.lists(st.floats(min_value=-2, max_value=2, allow_nan=False), min_size=3, max_size=3),
       use_bytes=st.booleans(), sketch_rank=st.sampled_from([0, 2]))
def test_planned_bytes_never_exceed_the_budget(indexed, fraction, nbytes, weights, use_bytes, sketch_rank):
    fam, catalog = indexed
    plan = _plan(fam, catalog, f"{nbytes}B" if use_bytes else fraction, weights=weights, sketch_rank=sketch_rank)
    limit = nbytes if use_bytes else math.floor(fraction * plan.full_expert_bytes) if fraction < 1 \
        else plan.full_expert_bytes
    assert plan.budget_bytes == limit
    assert plan.planned_expert_bytes <= plan.budget_bytes
    changed, sizes = _changed_blocks(fam, catalog)
    access = _access_set(plan)
    assert access <= changed  # never an unchanged block
    assert plan.planned_expert_bytes == sum(sizes[x] for x in access) + plan.sketch_bytes
    assert plan.blocks_planned == len(access)
    assert sum(pe["planned_bytes"] for pe in plan.per_expert) == plan.planned_expert_bytes


def test_full_budget_plans_exactly_the_changed_blocks(indexed):
    fam, catalog = indexed
    plan = _plan(fam, catalog, 1.0)
    changed, sizes = _changed_blocks(fam, catalog)
    assert _access_set(plan) == changed
    assert plan.planned_expert_bytes == plan.nonzero_expert_bytes == sum(sizes[x] for x in changed)
    assert plan.planned_expert_bytes < plan.full_expert_bytes  # the unchanged rows cost nothing
    assert plan.blocks_total == len(sizes)
    assert plan.certificate == 0.0
    # a byte budget at least the non-zero bytes is as good as full
    assert _access_set(_plan(fam, catalog, f"{plan.nonzero_expert_bytes}B")) == changed


def test_the_same_inputs_give_the_same_plan_byte_for_byte(indexed, tmp_path):
    fam, catalog = indexed
    a, b = _plan(fam, catalog, 0.37), _plan(fam, catalog, 0.37)
    assert a.to_dict() == b.to_dict() and a.access == b.access and a.digest == b.digest
    # an index built again from scratch elsewhere gives the same plan
    other = tmp_path / "catalog2"
    for e in fam.experts:
        api.index_model(e, fam.base, catalog_dir=other, block_size=BLOCK)
    c = _plan(fam, other, 0.37)
    assert c.access == a.access and c.digest == a.digest


def test_the_digest_covers_budget_parameters_seed_and_block_size(indexed):
    fam, catalog = indexed
    ref = _plan(fam, catalog, 0.5).digest
    assert _plan(fam, catalog, 0.4).digest != ref
    assert _plan(fam, catalog, 0.5, weights=[1.0, 0.75, 1.0]).digest != ref
    assert _plan(fam, catalog, 0.5, parameters={"lambda": 0.9}).digest != ref
    assert _plan(fam, catalog, 0.5, seed=1).digest != ref


def test_greedy_takes_the_most_valuable_block_per_byte_first(indexed):
    fam, catalog = indexed
    full = _plan(fam, catalog, 1.0)
    config = parse_config(fam.config())
    base = read_model_layout(fam.base)
    best, best_size = None, None
    for k, e in enumerate(fam.experts):
        entry = Catalog(catalog).lookup(read_model_layout(e), base, BLOCK)
        w = abs(config.models[k].parameters["weight"])
        for name, stats in entry.tensors.items():
            blocks = partition(base.tensors[name], BLOCK)
            for b, c in enumerate(stats.changed):
                score = w * stats.norm[b] / blocks[b].nbytes
                if c and (best is None or score > best[0]):
                    best, best_size = (score, (k, name, b)), blocks[b].nbytes
    plan = _plan(fam, catalog, f"{best_size}B")
    assert _access_set(plan) == {best[1]}
    assert plan.certificate > full.certificate == 0.0


def test_zero_value_blocks_only_fill_what_valuable_blocks_cannot(indexed):
    """Greedy order: a block of a zero-weight expert is taken only after every valuable block
    that fits, so each valuable block left out is larger than the budget left for it."""
    fam, catalog = indexed
    plan = _plan(fam, catalog, 0.2, weights=[0.0, 1.0, 1.0])
    changed, sizes = _changed_blocks(fam, catalog)
    access = _access_set(plan)
    valuable_read = sum(sizes[x] for x in access if x[0] != 0)
    left_out = [x for x in changed - access if x[0] != 0]
    assert left_out and valuable_read > 0
    assert all(sizes[x] > plan.budget_bytes - valuable_read for x in left_out)


def test_recorded_access_sets_replay(indexed):
    fam, catalog = indexed
    plan = _plan(fam, catalog, 0.3)
    again = make_plan(parse_config(fam.config()), read_model_layout(fam.base),
                      [read_model_layout(e) for e in fam.experts],
                      [Catalog(catalog).lookup(read_model_layout(e), read_model_layout(fam.base), BLOCK)
                       for e in fam.experts],
                      parse_budget(0.3), BLOCK, access=expand_ranges(plan.access_ranges()))
    assert again.access == plan.access and again.digest == plan.digest


def test_methods_without_a_base_accept_only_the_full_budget(indexed):
    fam, catalog = indexed
    config = parse_config(fam.config("linear", with_base=False))
    plan = api.plan_merge(config, budget=1.0, catalog_dir=catalog, block_size=BLOCK)
    assert plan.planned_expert_bytes == plan.full_expert_bytes and plan.certificate is None
    with pytest.raises(BudgetError, match="only budget 1.0"):
        api.plan_merge(config, budget=0.5, catalog_dir=catalog, block_size=BLOCK)


@pytest.mark.parametrize("bad", [0, "0", -0.5, "-0.5", 1.5, "abc", "nan", "inf", "0B", "", True])
def test_bad_budgets(bad):
    with pytest.raises(BudgetError) as info:
        parse_budget(bad)
    assert "\n" not in str(info.value)


def test_budget_spellings():
    assert parse_budget("0.25").fraction == 0.25 and parse_budget(1).fraction == 1.0
    assert parse_budget("2GiB").nbytes == 2 << 30 and parse_budget("512MB").nbytes == 512_000_000
    assert parse_budget(None).resolve(1000) == 1000
    assert parse_budget("1e-3").resolve(10_000) == 10
