"""RAM, RAM+, nearswap and SCE through their kernels (kernels/elementwise.py, sce.py) give the
bits of the operators' torch statements (operators/ram.py, nearswap.py, sce.py): float32 and
bfloat16 checkpoints, odd sizes, output in either dtype, NaN and ±Inf inputs."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_helpers import (assert_same_bits, family, make_ctx, make_params, needs_kernels, through_kernel,
                            torch_statement)

from mergehub.engine import kernels

pytestmark = needs_kernels

SIZES = [1, 1025, 300_007]  # one entry, over a chunk, split over threads


@pytest.mark.parametrize("method", ["ram", "ramplus_tl"])
@pytest.mark.parametrize("eps", [1e-5, 0.1, 0.0])  # float32(0.1) lies above 0.1: the comparison is in float32
@pytest.mark.parametrize("models", [1, 3, 8])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("quantised", [False, True])
def test_ram_through_the_kernel_gives_the_torch_statements_bits(method, eps, models, n, quantised):
    base, xs = family(n, models, seed=models, quantised=quantised, scale=0.1)
    for x in xs:  # unchanged entries, so that counts of 0, 1 and several active models all occur
        x[::3] = base[::3]
    p = make_params(method, models, {"epsilon": eps})
    out = through_kernel(method, base, xs, p, make_ctx((n,)), base.dtype)
    assert_same_bits(out, torch_statement(method, base, xs, p, make_ctx((n,)), base.dtype))


def test_ram_takes_at_most_eight_models():
    base, xs = family(100, 9, seed=1, quantised=False)
    p = make_params("ram", 9, {})
    assert kernels.find("ram", "merge", base, xs, p, torch.float32, torch.float32) is None


@pytest.mark.parametrize("t", [0.001, 0.3, 0.0])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("quantised", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_nearswap_through_the_kernel_gives_the_torch_statements_bits(t, n, quantised, out_dtype):
    base, xs = family(n, 1, seed=n, quantised=quantised)
    p = make_params("nearswap", 1, {"t": t})
    out = through_kernel("nearswap", base, xs, p, make_ctx((n,)), out_dtype)
    assert_same_bits(out, torch_statement("nearswap", base, xs, p, make_ctx((n,)), out_dtype))


@pytest.mark.parametrize("method, shared", [("ram", {}), ("ramplus_tl", {}), ("nearswap", {"t": 0.01})])
def test_nan_and_infinities_give_the_torch_statements_bits(method, shared):
    base, xs = family(4099, 2, seed=3, quantised=False)
    base[7], base[100] = math.nan, -math.inf
    xs[0][5], xs[0][9], xs[-1][2000], xs[-1][3000] = math.nan, -math.inf, math.inf, math.nan
    models = 1 if method == "nearswap" else 2
    p = make_params(method, models, shared)
    assert_same_bits(through_kernel(method, base, xs[:models], p, make_ctx((4099,))),
                     torch_statement(method, base, xs[:models], p, make_ctx((4099,))))


@pytest.mark.parametrize("select_topk", [1.0, 0.3, 0.02, 0.0])
@pytest.mark.parametrize("models", [1, 3, 4])
@pytest.mark.parametrize("quantised", [False, True])  # bf16 deltas tie on the variance at the threshold
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_sce_through_the_kernel_gives_the_torch_statements_bits(select_topk, models, quantised, out_dtype):
    shape = (211, 977)  # several span blocks, an odd tail
    base, xs = family(math.prod(shape), models, seed=models, quantised=quantised, scale=0.05)
    base, xs = base.view(shape), [x.view(shape) for x in xs]
    p = make_params("sce", models, {"select_topk": select_topk}, {})
    out = through_kernel("sce", base, xs, p, make_ctx(shape), out_dtype)
    assert_same_bits(out, torch_statement("sce", base, xs, p, make_ctx(shape), out_dtype))


def test_sce_with_nan_and_infinities_gives_the_torch_statements_bits():
    shape = (31, 1031)
    base, xs = family(math.prod(shape), 3, seed=3, quantised=False, scale=0.05)
    base[7], xs[0][5], xs[1][900], xs[2][2000] = math.nan, math.nan, -math.inf, math.inf
    base, xs = base.view(shape), [x.view(shape) for x in xs]
    for select_topk in (1.0, 0.0):  # (a selection over NaN variances fails alike either way)
        p = make_params("sce", 3, {"select_topk": select_topk}, {})
        assert_same_bits(through_kernel("sce", base, xs, p, make_ctx(shape)),
                         torch_statement("sce", base, xs, p, make_ctx(shape)))
