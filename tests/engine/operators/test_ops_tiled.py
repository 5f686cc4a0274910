"""The streaming TIES path (per-model top-k rule, then a tiled combine) gives the same bits as
the whole-tensor path (a top-k mask per model, then one combine), whatever the tile size.
(The same merges through the compiled kernels: tests/engine/kernels.)"""

from __future__ import annotations

import pytest
import torch
from operator_refs import make_ctx, make_params

from mergehub.engine.operators import selection
from mergehub.engine.operators.registry import get_operator
from mergehub.engine.operators.sparsify import magnitude


def whole_tensor_merge(method, base, inputs, p):
    op = get_operator(method)
    ctx = make_ctx(base.shape)

    def prune(delta, k, model):
        return magnitude(delta, model["density"], False, model, ctx, k)

    return op._combine(base, inputs, p, prune)


CASES = [
    ("ties", {}, [{"weight": 1.0, "density": 0.5}, {"weight": 0.6, "density": 0.3}, {"weight": 0.8, "density": 0.9}]),
    ("ties", {"normalize": False, "lambda": 0.7},
     [{"weight": -0.5, "density": 0.2}, {"weight": 1.0, "density": 1.0}, {"weight": 0.3, "density": 0.0}]),
    ("breadcrumbs_ties", {}, None),  # no magnitude sparsifier: must not take the streaming path
]


def record_calls(monkeypatch, owner, name: str) -> list[tuple]:
    """Wrap ``owner.name``; the returned list gets the positional arguments of every call."""
    calls: list[tuple] = []
    original = getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.mark.parametrize("method, shared, models", CASES)
@pytest.mark.parametrize("tile", [7, 64, 1 << 20])
@pytest.mark.parametrize("quantised", [False, True])  # bf16 inputs: heavy ties in |δ|
def test_streaming_ties_equals_the_whole_tensor_merge(monkeypatch, method, shared, models, tile, quantised):
    monkeypatch.setattr(selection, "TILE_ELEMENTS", tile)
    g = torch.Generator().manual_seed(tile)
    shape = (37, 11)
    base = torch.randn(shape, generator=g)
    xs = [base + 0.05 * torch.randn(shape, generator=g) for _ in range(3)]
    if quantised:
        base = base.bfloat16().float()
        xs = [x.bfloat16() for x in xs]  # stored dtype: the operator promotes exactly
    p = make_params(method, 3, shared, models or {"weight": 1.0, "density": 0.5})
    op = get_operator(method)
    streamed = record_calls(monkeypatch, type(op), "_merge_top_k")
    combined = record_calls(monkeypatch, type(op), "_combine")  # (self, base, inputs, p, prune)
    out = op.merge(base, xs, p, make_ctx(shape))
    # the path taken (the torch statements; their kernels: tests/engine/kernels)
    sizes = [args[1].numel() for args in combined]
    if method == "ties":
        # the streaming path: one top-k rule per model, then the combine tile by tile
        assert len(streamed) == 1
        assert sum(sizes) == base.numel() and max(sizes) <= tile
        assert len(sizes) == -(-base.numel() // tile)
    else:
        # no magnitude top-k: one combine over the whole tensor
        assert not streamed and sizes == [base.numel()]
    if method == "ties":
        assert torch.equal(out, whole_tensor_merge(method, base, [x.float() for x in xs], p))
    # the stored-dtype inputs give exactly what converted inputs give
    assert torch.equal(out, op.merge(base, [x.float() for x in xs], p, make_ctx(shape)))


def test_an_unread_expert_passed_as_the_base_contributes_nothing(monkeypatch):
    monkeypatch.setattr(selection, "TILE_ELEMENTS", 50)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(20, 10, generator=g)
    x = base + 0.1 * torch.randn(20, 10, generator=g)
    p = make_params("ties", 2, {}, {"weight": 1.0, "density": 0.4})
    op = get_operator("ties")
    alone = op.merge(base, [x], make_params("ties", 1, {}, {"weight": 1.0, "density": 0.4}), make_ctx(base.shape))
    assert torch.equal(op.merge(base, [x, base], p, make_ctx(base.shape)), alone)
