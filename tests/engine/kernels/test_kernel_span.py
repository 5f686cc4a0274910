"""The span operators' kernel (kernels/span.py: the Gram and combination passes in kernels.c)
gives the bits of their torch statements (operators/span.py's passes, same summation order):
the passes alone over odd sizes and thread splits, then slerp, nuslerp, multislerp, karcher
and model_stock through the registry, float32 and bfloat16, with NaN and ±Inf."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from kernel_helpers import assert_same_bits, make_ctx, make_params, needs_kernels, through_kernel, torch_statement

from mergehub.engine.kernels import binding
from mergehub.engine.kernels import span as span_kernel
from mergehub.engine.operators import span

sys.path.insert(0, str(Path(__file__).parent.parent / "operators"))
from test_span import SPAN_CASES, inputs  # noqa: E402

pytestmark = needs_kernels


@pytest.mark.parametrize("n", [1, 7, 1025, span.BLOCK + 13, 3 * span.BLOCK])  # tails of lanes, chunks, blocks
@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_kernel_sums_the_gram_matrix_in_the_same_order(monkeypatch, n, with_base, dtype):
    monkeypatch.setattr(binding, "MIN_SPLIT", 1000)  # several threads even for small n
    base, xs = inputs(n, 4, seed=n + 1, dtype=dtype)
    b = base if with_base else None
    assert span.gram(xs, b, span_kernel.PASSES) == span.gram(xs, b)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_base", [False, True])
def test_the_kernel_combines_in_the_same_order(monkeypatch, out_dtype, with_base):
    monkeypatch.setattr(binding, "MIN_SPLIT", 1000)
    n = span.BLOCK + 999
    base, xs = inputs(n, 3, seed=5)
    coefs = [0.3, -1.7, 2.0 / 3.0]
    b, c = (base, 0.1234567) if with_base else (None, 0.0)
    out = span_kernel.combine(xs, coefs, b, c, torch.empty(n, dtype=out_dtype))
    assert_same_bits(out, span.TORCH.combine(xs, coefs, b, c, torch.empty(n, dtype=out_dtype)))


@pytest.mark.parametrize("method, with_base, k, shared, models", SPAN_CASES)
@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_span_operators_through_the_kernel_give_the_torch_statements_bits(method, with_base, k, shared, models,
                                                                         stored, out_dtype):
    shape = (300, 700)  # large enough for the span route
    g = torch.Generator().manual_seed(len(method) + k)
    base = torch.randn(shape, generator=g).to(stored)
    xs = [(base.float() + 0.3 * torch.randn(shape, generator=g)).to(stored) for _ in range(k)]
    p = make_params(method, k, shared, models)
    b = base if with_base else None
    ctx = make_ctx(shape)
    ctx.work_dtype = torch.float32
    out = through_kernel(method, b, xs, p, ctx, out_dtype)
    if b is None:  # base-less: the torch statement on the widened inputs
        from mergehub.engine.operators.registry import get_operator
        ref = get_operator(method).merge(None, [x.float() for x in xs], p, ctx).to(out_dtype)
    else:
        ref = torch_statement(method, b, xs, p, ctx, out_dtype)
    assert_same_bits(out, ref)


@pytest.mark.parametrize("method, with_base, k, shared, models", SPAN_CASES[:1] + SPAN_CASES[-2:])
def test_small_tensors_and_nan_give_the_torch_statements_bits(method, with_base, k, shared, models):
    """Under a block of entries the span route does not apply: the kernel hands the unit to the
    torch statement. NaN and ±Inf flow through both routes alike."""
    for shape in [(3, 5), (300, 700)]:
        g = torch.Generator().manual_seed(k)
        base = torch.randn(shape, generator=g)
        xs = [base + 0.3 * torch.randn(shape, generator=g) for _ in range(k)]
        xs[0].view(-1)[7], xs[-1].view(-1)[11], base.view(-1)[13] = math.nan, math.inf, -math.inf
        p = make_params(method, k, shared, models)
        b = base if with_base else None
        ctx = make_ctx(shape)
        out = through_kernel(method, b, xs, p, ctx)
        if b is None:
            from mergehub.engine.operators.registry import get_operator
            ref = get_operator(method).merge(None, list(xs), p, ctx)
        else:
            ref = torch_statement(method, b, xs, p, ctx)
        assert_same_bits(out, ref)
