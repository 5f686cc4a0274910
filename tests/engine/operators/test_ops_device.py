"""Devices and working dtypes: on CUDA every operator gives the CPU result (random draws are
made on the CPU, so DARE/DELLA masks are identical across devices; skipped without CUDA), and
every operator also runs in bfloat16, float16 and float64."""

from __future__ import annotations

import pytest
import torch
from operator_refs import assert_rel, make_ctx, make_params

from mergehub.engine.operators import get_operator

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CASES = [
    ("task_arithmetic", 3, {}, {"weight": 0.4}),
    ("ties", 3, {}, {"weight": 0.4, "density": 0.3}),
    ("dare_ties", 3, {}, {"weight": 0.4, "density": 0.3}),
    ("dare_linear", 3, {"rescale": False}, {"weight": 0.4, "density": 0.3}),
    ("breadcrumbs_ties", 3, {}, {"weight": 0.4, "density": 0.3, "gamma": 0.05}),
    ("della", 3, {}, {"weight": 0.4, "density": 0.3, "epsilon": 0.1}),
    ("linear", 3, {}, {"weight": 0.4}),
    ("slerp", 1, {"t": 0.3}, {}),
    ("nuslerp", 2, {"nuslerp_flatten": False}, {"weight": 0.4}),
    ("multislerp", 3, {}, {"weight": 0.4}),
    ("karcher", 3, {}, {}),
    ("model_stock", 3, {}, {}),
    ("sce", 3, {"select_topk": 0.3}, {}),
    ("ram", 3, {"epsilon": 0.05}, {}),
    ("ramplus_tl", 3, {"epsilon": 0.05}, {}),
    ("nearswap", 1, {"t": 0.05}, {}),
    ("arcee_fusion", 1, {}, {}),
    ("passthrough", 1, {}, {"scale": 0.5}),
]


@needs_cuda
@pytest.mark.parametrize("method,n,shared,models", CASES, ids=[c[0] for c in CASES])
def test_cuda_matches_cpu(method, n, shared, models):
    op = get_operator(method)
    g = torch.Generator().manual_seed(0)
    shape = (300, 70)
    base = torch.randn(shape, generator=g)
    xs = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(n)]
    p = make_params(method, n, shared, models)
    b = None if op.base == "ignored" else base
    cpu = op.merge(b, xs, p, make_ctx(shape))
    cuda = torch.device("cuda")
    ctx = make_ctx(shape)
    ctx.device = cuda
    gpu = op.merge(None if b is None else b.to(cuda), [x.to(cuda) for x in xs], p, ctx)
    assert gpu.device.type == "cuda"
    assert_rel(gpu.cpu(), cpu, tol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("method,n,shared,models", CASES, ids=[c[0] for c in CASES])
def test_other_working_dtypes_run_on_cpu(method, n, shared, models, dtype):
    """The executor may compute in another dtype: every operator accepts it and stays close
    to the float32 result where no mask decision depends on rounding."""
    op = get_operator(method)
    g = torch.Generator().manual_seed(1)
    shape = (12, 9)
    base = torch.randn(shape, generator=g)
    xs = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(n)]
    p = make_params(method, n, shared, models)
    b = None if op.base == "ignored" else base
    ref = op.merge(b, xs, p, make_ctx(shape))
    out = op.merge(None if b is None else b.to(dtype), [x.to(dtype) for x in xs], p,
                   make_ctx(shape))
    assert out.shape == base.shape and out.dtype.is_floating_point
    assert torch.isfinite(out).all()
    if dtype == torch.float64 or method in ("task_arithmetic", "linear", "slerp", "karcher"):
        assert_rel(out.float(), ref, tol=1e-5 if dtype == torch.float64 else 2e-2)
