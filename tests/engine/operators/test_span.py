"""Gram matrices and linear combinations (operators/span.py): accurate, and the span route of
each operator agrees with its whole-tensor code. (The kernels' passes give the same bits:
tests/engine/kernels/test_kernel_span.py.)"""

from __future__ import annotations

import pytest
import torch

from mergehub.engine.operators import span


def inputs(n: int, k: int, seed: int, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g)
    xs = [(base + 0.05 * torch.randn(n, generator=g)).to(dtype) for _ in range(k)]
    return base.to(dtype), xs


@pytest.mark.parametrize("n", [1, 7, 1025, span.BLOCK + 13, 3 * span.BLOCK])  # tails of lanes, chunks, blocks
@pytest.mark.parametrize("with_base", [False, True])
def test_the_gram_matrix_is_accurate(n, with_base):
    base, xs = inputs(n, 3, seed=n)
    vs = [x.double() - base.double() if with_base else x.double() for x in xs]
    g = span.gram(xs, base if with_base else None)
    for i in range(3):
        for j in range(3):
            exact = float(torch.dot(vs[i], vs[j]))
            assert g[i][j] == g[j][i]
            assert abs(g[i][j] - exact) <= 1e-12 * max(1.0, abs(exact)) * n ** 0.5


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_base", [False, True])
def test_the_combination_rounds_once_to_float32(out_dtype, with_base):
    n = span.BLOCK + 999
    base, xs = inputs(n, 3, seed=5)
    coefs = [0.3, -1.7, 2.0 / 3.0]
    b, c = (base, 0.1234567) if with_base else (None, 0.0)
    out = span.TORCH.combine(xs, coefs, b, c, torch.empty(n, dtype=out_dtype))
    exact = sum(ci * x.double() for ci, x in zip(coefs, xs)) + (c * base.double() if with_base else 0)
    assert torch.equal(out, exact.float().to(out_dtype))  # one rounding to float32, then out's dtype


SPAN_CASES = [
    ("slerp", True, 1, {"t": 0.3}, {}),
    ("nuslerp", True, 2, {}, [{"weight": 0.7}, {"weight": 0.2}]),
    ("nuslerp", False, 2, {}, [{"weight": 0.7}, {"weight": 0.2}]),
    ("multislerp", True, 3, {}, [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.4}]),
    ("multislerp", False, 3, {"normalize_weights": False}, [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.4}]),
    ("karcher", False, 4, {}, {}),
    ("karcher", False, 3, {"max_iter": 2, "tol": 1e-6}, {}),
    ("model_stock", True, 3, {}, {}),
]


@pytest.mark.parametrize("method, with_base, k, shared, models", SPAN_CASES)
def test_operators_through_the_span_match_their_whole_tensor_code(monkeypatch, method, with_base, k, shared, models):
    """The coefficient-space route (Gram matrix, then one combination) against the operator's
    own float32 whole-tensor code, on a tensor large enough to take the route: stored bf16
    inputs, a float32 base, the output in float32 and (merge_stored) straight in bf16."""
    from operator_refs import make_ctx, make_params

    from mergehub.engine.operators.registry import get_operator

    shape = (300, 700)
    g = torch.Generator().manual_seed(len(method) + k)
    base = torch.randn(shape, generator=g)
    xs = [(base + 0.3 * torch.randn(shape, generator=g)).bfloat16() for _ in range(k)]
    op = get_operator(method)
    p = make_params(method, k, shared, models)
    b = base if with_base else None
    taken = []
    real_gram = span.gram
    monkeypatch.setattr(span, "gram", lambda *a, **kw: taken.append(1) or real_gram(*a, **kw))
    ctx = make_ctx(shape)
    ctx.work_dtype = torch.float32  # the inputs are stored bf16, the merge works in float32
    out = op.merge(b, xs, p, ctx)
    assert taken, "the span route was not taken"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(span, "applies", lambda *tensors: False)
        float32 = op.merge(b, [x.float() for x in xs], p, make_ctx(shape))
    # the operator's own code in float64 is the yardstick for both float32 routes
    exact = op.merge(None if b is None else b.double(), [x.double() for x in xs], p, make_ctx(shape))
    assert out.dtype == torch.float32 and out.shape == shape

    def error(a):
        return ((a.double() - exact).abs().max() / exact.abs().max()).item()

    assert error(out) < 1e-6 and error(out) <= 2 * error(float32) + 1e-7, (error(out), error(float32))
    stored = op.merge_stored(b, xs, p, make_ctx(shape), torch.float32, torch.bfloat16)
    assert stored is not None and torch.equal(stored, out.bfloat16())
