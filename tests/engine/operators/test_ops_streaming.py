"""Whole-tensor operators that stream over tiles (sce, ramplus_tl): the result does not depend
on the tile size beyond float64-summed reductions, and matches the whole-tensor formula (one
tile). The span-based ones (slerp, model_stock, ...) are in test_span.py."""

from __future__ import annotations

import pytest
import torch
from operator_refs import make_ctx, make_params

from mergehub.engine.operators import selection
from mergehub.engine.operators.registry import get_operator

SHAPE = (97, 1031)  # 100k entries: tens of tiles of 4096


def family(experts: int, seed: int, stored=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=g)
    xs = [(base + 0.01 * torch.randn(SHAPE, generator=g)).to(stored) for _ in range(experts)]
    return base, xs


def merged(monkeypatch, method, base, xs, p, tile):
    monkeypatch.setattr(selection, "TILE_ELEMENTS", tile)
    return get_operator(method).merge(base, xs, p, make_ctx(SHAPE))


def relative(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def test_ramplus_tl_is_bit_identical_whatever_the_tiles(monkeypatch):
    base, xs = family(3, 0)
    p = make_params("ramplus_tl", 3, {"epsilon": 0.004, "r": 0.3, "alpha": 0.5}, {})
    whole = merged(monkeypatch, "ramplus_tl", base, xs, p, base.numel())
    assert torch.equal(merged(monkeypatch, "ramplus_tl", base, xs, p, 4096), whole)
    assert torch.equal(merged(monkeypatch, "ramplus_tl", base, [x.float() for x in xs], p, 777), whole)


@pytest.mark.parametrize("select_topk", [1.0, 0.3, 0.01, 0.0])
def test_sce_streams_like_the_whole_tensor_formula(monkeypatch, select_topk):
    base, xs = family(4, 1)
    p = make_params("sce", 4, {"select_topk": select_topk}, {})
    op = get_operator("sce")
    reference = op._merge_whole(base, [x.float() for x in xs], p)
    for tile in (4096, 1000):
        out = merged(monkeypatch, "sce", base, xs, p, tile)
        assert torch.equal(out != base, reference != base)  # the same positions are selected
        assert relative(out, reference) < 1e-6


def test_sce_keeps_exactly_k_when_variances_tie(monkeypatch):
    """Quantised deltas tie on the variance at the threshold; the tie rule (first in flat
    order) must hold across tile boundaries."""
    g = torch.Generator().manual_seed(2)
    base = torch.zeros(SHAPE)
    xs = [torch.randint(-2, 3, SHAPE, generator=g).float() for _ in range(3)]
    p = make_params("sce", 3, {"select_topk": 0.37}, {})
    reference = get_operator("sce")._merge_whole(base, xs, p)
    assert torch.equal(merged(monkeypatch, "sce", base, xs, p, 999) != 0, reference != 0)


@pytest.mark.parametrize("shape", [(97, 1031), (1200, 1000)])  # under and over the 1M-entry sample
def test_arcee_fusion_over_row_blocks_is_bit_identical(monkeypatch, shape):
    from mergehub.engine.operators import arcee_fusion

    g = torch.Generator().manual_seed(4)
    base = torch.randn(shape, generator=g)
    x = base + 0.05 * torch.randn(shape, generator=g)
    op = get_operator("arcee_fusion")
    p = make_params("arcee_fusion", 1, {}, {})
    monkeypatch.setattr(arcee_fusion, "TILE_ELEMENTS", 20_000)  # blocks of a few rows
    blocks = op.merge(base, [x], p, make_ctx(shape))
    whole = op.merge(base.unsqueeze(0), [x.unsqueeze(0)], p, make_ctx((1,) + shape))[0]  # 3-D: the whole-tensor code
    assert torch.equal(blocks, whole)
    assert 0 < (blocks != base).float().mean() < 0.5  # some, not all, changes kept
