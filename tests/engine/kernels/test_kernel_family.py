"""The task-arithmetic family's kernel (kernels/family.py) gives the bits of the operators'
torch statement (operators/generalized.py): every registered method, with and without
rescale, float32 and bfloat16 checkpoints, odd sizes (one entry, under and over a chunk,
split over threads), more models than one register group, DELLA's row shapes, unread experts,
and NaN / ±Inf inputs."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_helpers import (assert_same_bits, family, make_ctx, make_params, needs_kernels, through_kernel,
                            torch_statement)

from mergehub.engine import kernels
from mergehub.engine.kernels import binding
from mergehub.engine.kernels import family as family_kernel
from mergehub.engine.operators import get_operator
from mergehub.engine.operators.base import MergeContext
from mergehub.engine.operators.exact_sum import exact_total

pytestmark = needs_kernels

MODELS = [
    ({}, [{"weight": 1.0, "density": 0.5}, {"weight": 0.6, "density": 0.3}, {"weight": 0.8, "density": 0.9}]),
    ({"normalize": False, "lambda": 0.7},
     [{"weight": -0.5, "density": 0.2}, {"weight": 1.0, "density": 1.0}, {"weight": 0.3, "density": 0.0}]),
    ({"lambda": 1.3}, [{"weight": 0.0, "density": 0.4}, {"weight": 2.0, "density": 0.01}, {"weight": 1.0, "density": 0.999}]),
]
PRUNING = [m for m in family_kernel.KERNEL_METHODS if not m.startswith("della")]
RESCALE = [None, True, False]  # the method's default, or forced


def _shared(method: str, shared: dict, rescale: bool | None) -> dict:
    shared = shared if rescale is None else {**shared, "rescale": rescale}
    if method in ("dare_linear", "breadcrumbs"):
        # the plain sum divided by Σ w of every model, pruned-away and weight-0 ones included
        shared = {**shared, "normalize": True}
    return shared


@pytest.mark.parametrize("method", PRUNING)
@pytest.mark.parametrize("rescale", RESCALE)
@pytest.mark.parametrize("shared, models", MODELS)
@pytest.mark.parametrize("n", [1, 1000, 1025, 300_007])  # one entry, under/over a chunk, split over threads
@pytest.mark.parametrize("quantised", [False, True])
def test_the_kernel_gives_the_torch_statements_bits(method, rescale, shared, models, n, quantised):
    base, xs = family(n, 3, seed=n, quantised=quantised)
    p = make_params(method, 3, _shared(method, shared, rescale), models)
    out = through_kernel(method, base, xs, p, make_ctx((n,)), base.dtype)
    assert_same_bits(out, torch_statement(method, base, xs, p, make_ctx((n,)), base.dtype))


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
@pytest.mark.parametrize("quantised", [False, True])
def test_more_models_than_the_kernel_sums_in_one_group(method, quantised):
    """kernels.c sums the consensus of up to GROUP (8) models in registers; 11 models take two
    groups, and the sums must be the same float additions in model order as torch's."""
    k = 11
    base, xs = family(1025, k, seed=k, quantised=quantised)
    models = [{"weight": w, "density": d} for w, d in zip([1.0, 0.6, -0.5, 0.0, 2.0, 0.3, 0.8, 1.2, -0.1, 0.9, 0.4],
                                                            [0.5, 0.3, 0.9, 0.4, 1.0, 0.0, 0.7, 0.2, 0.6, 0.99, 0.05])]
    p = make_params(method, k, {}, models)
    out = through_kernel(method, base, xs, p, make_ctx((1025,)))
    assert_same_bits(out, torch_statement(method, base, xs, p, make_ctx((1025,))))


DELLA_MODELS = [{"weight": 1.0, "density": 0.5, "epsilon": 0.15}, {"weight": 0.6, "density": 0.3, "epsilon": 0.2},
                {"weight": -0.4, "density": 0.9, "epsilon": 0.05}]


@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize("rescale", RESCALE)
@pytest.mark.parametrize("shape", [(300_007,), (37, 1031), (5, 2)])  # one row, rows, the narrowest rows
@pytest.mark.parametrize("quantised", [False, True])
def test_della_through_the_kernel_gives_the_torch_statements_bits(method, rescale, shape, quantised):
    base, xs = family(math.prod(shape), 3, seed=len(shape), quantised=quantised)
    base, xs = base.view(shape), [x.view(shape) for x in xs]
    p = make_params(method, 3, {} if rescale is None else {"rescale": rescale}, DELLA_MODELS)
    out = through_kernel(method, base, xs, p, make_ctx(shape), base.dtype)
    assert_same_bits(out, torch_statement(method, base, xs, p, make_ctx(shape), base.dtype))


@pytest.mark.parametrize("shape", [(3, 1), (2, 3, 4)])
def test_della_rows_the_kernel_cannot_rank_stay_with_torch(shape):
    base, xs = family(math.prod(shape), 2, seed=1, quantised=False)
    p = make_params("della", 2, {}, DELLA_MODELS[:2])
    assert kernels.find("della", "merge", base.view(shape), [x.view(shape) for x in xs], p,
                        torch.float32, torch.float32) is None


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della_linear"])
def test_random_drops_of_a_row_slice_are_the_whole_tensors(method):
    """Without rescale DARE is block-local: the kernel, given rows 5-12 of a tensor, draws what
    the torch statement draws for those rows of the whole tensor."""
    shape = (13, 1031)
    base, xs = family(shape[0] * shape[1], 2, seed=4, quantised=False)
    base, xs = base.view(shape), [x.view(shape) for x in xs]
    p = make_params(method, 2, {"rescale": False}, {"weight": 0.7, "density": 0.4})
    whole = torch_statement(method, base, xs, p, make_ctx(shape))
    part = through_kernel(method, base[5:], [x[5:] for x in xs], p, make_ctx(shape, rows=(5, 13)))
    assert_same_bits(part, whole[5:])


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della", "della_linear"])
@pytest.mark.parametrize("quantised", [False, True])
def test_rescale_sums_of_a_row_slice_are_the_torch_statements(method, quantised):
    """The "rescale_sums" step (a streamed tensor's counting pass), given rows 5-12: the same
    exact L1 sums as the torch statement's for those rows, before and after each mask; and the
    slices' sums add up to the whole tensor's."""
    shape = (13, 1031)
    base, xs = family(shape[0] * shape[1], 3, seed=7, quantised=quantised)
    base, xs = base.view(shape), [x.view(shape) for x in xs]
    models = [{"weight": 0.7, "density": 0.4}, {"weight": 1.0, "density": 1.0}, {"weight": 0.5, "density": 0.6}]
    if method.startswith("della"):
        models = [dict(m, epsilon=0.1) for m in models]
    p = make_params(method, 3, {"rescale": True}, models)
    op = get_operator(method)

    def kernel_sums(rows):
        piece = (base[rows[0]:rows[1]], [x[rows[0]:rows[1]] for x in xs])
        kernel = kernels.find(method, "rescale_sums", piece[0], piece[1], p, torch.float32, torch.float32)
        return kernel.run(*piece, p, make_ctx(shape, rows=rows), torch.float32)

    def torch_sums(rows):
        work = base[rows[0]:rows[1]].float()
        return op.rescale_sums(work, [x[rows[0]:rows[1]].float() for x in xs], p, make_ctx(shape, rows=rows))

    def totals(sums):
        return [None if s is None else [exact_total(half) for half in s] for s in sums]

    part = totals(kernel_sums((5, 13)))
    assert part == totals(torch_sums((5, 13))) and part[1] is None and part[0][1] < part[0][0]
    whole, first = totals(torch_sums((0, 13))), totals(kernel_sums((0, 5)))
    assert [None if w is None else [a + b for a, b in zip(f, q)] for w, f, q in zip(whole, first, part)] == whole


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("quantised", [False, True])
def test_unread_experts_add_nothing(out_dtype, quantised):
    """An expert not read under a budget is passed as the base itself."""
    base, xs = family(70_001, 4, seed=3, quantised=quantised)
    p = make_params("ties", 4, {}, [{"weight": w, "density": d} for w, d in
                                    [(0.3, 0.5), (0.2, 0.7), (0.4, 0.3), (0.1, 0.5)]])
    ctx = MergeContext("w", 0, 0, 1, 1)
    inputs = [xs[0], base, xs[2], xs[3]]
    assert_same_bits(through_kernel("ties", base, inputs, p, ctx, out_dtype),
                     torch_statement("ties", base, inputs, p, ctx, out_dtype))


@pytest.mark.parametrize("method", family_kernel.KERNEL_METHODS)
def test_nan_and_infinities_give_the_torch_statements_bits(method):
    """Non-finite inputs (the executor reports a non-finite result, but the bits must agree
    up to then): NaN and ±Inf in the base and in the experts."""
    shape = (17, 1031)
    base, xs = family(math.prod(shape), 3, seed=21, quantised=False)
    base[7], base[100] = math.nan, math.inf
    xs[0][5], xs[1][9], xs[2][2000], xs[1][3000] = math.nan, -math.inf, math.inf, math.nan
    base, xs = base.view(shape), [x.view(shape) for x in xs]
    p = make_params(method, 3, {}, [{"weight": 1.0, "density": 0.5, "epsilon": 0.1}] * 3)
    assert_same_bits(through_kernel(method, base, xs, p, make_ctx(shape)),
                     torch_statement(method, base, xs, p, make_ctx(shape)))


def test_a_large_tensor_splits_over_threads_without_seams(monkeypatch):
    monkeypatch.setattr(binding, "MIN_SPLIT", 1000)
    base, xs = family(10_007, 2, seed=5, quantised=True)
    p = make_params("ties", 2, {}, {"weight": 1.0, "density": 0.3})
    assert_same_bits(through_kernel("ties", base, xs, p, make_ctx(base.shape)),
                     torch_statement("ties", base, xs, p, make_ctx(base.shape)))


def test_bfloat16_rounding_matches_torch_on_special_values():
    # no experts: out = base + 0, rounded to bf16, which exercises the rounding alone
    values = torch.tensor([0.0, -0.0, 1.0, -1.5, math.inf, -math.inf, math.nan, 3.4e38, 1e-40, -1e-45,
                           1.00390625, 1.01171875, 1.0078125 + 2 ** -24, 65504.0, 2 ** -126])
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (100_000,), generator=torch.Generator().manual_seed(0),
                         dtype=torch.int64).to(torch.int32).view(torch.float32)
    base = torch.cat([values, bits, 1 + torch.arange(-300, 300) * 2.0 ** -9])  # halfway cases
    specs = binding.FFI.new("mh_model[]", 0)
    out = family_kernel.family_combine(base, specs, True, False, 1.0, torch.empty_like(base, dtype=torch.bfloat16),
                                       sum_divisor=1.0)
    ref = (torch.zeros_like(base) + base).to(torch.bfloat16)
    assert ref.isnan().sum() > 100
    assert_same_bits(out, ref)


def test_an_empty_tensor():
    base, xs = family(0, 2, seed=0, quantised=True)
    p = make_params("ties", 2, {}, {"weight": 1.0, "density": 0.5})
    out = through_kernel("ties", base, xs, p, MergeContext("w", 0, 0, 1, 1), torch.bfloat16)
    assert out.numel() == 0
