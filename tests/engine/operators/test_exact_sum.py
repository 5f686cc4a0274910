"""Exact L1 norms (operators/exact_sum.py): order-free integer slots, one rounding to float32."""

from __future__ import annotations

import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from mergehub.engine import native
from mergehub.engine.operators import exact_sum as es

sys.path.insert(0, str(Path(__file__).parent))
from operator_refs import same_sum  # noqa: E402


def exact_float32(values: torch.Tensor) -> float:
    """Σ|v| rounded once to float32, through Fractions (slow, obviously right)."""
    total = sum(Fraction(abs(float(v))) for v in values.tolist())
    candidate = np.float32(float(total))  # within one ulp of the answer; pick the nearest neighbour
    neighbours = [np.nextafter(candidate, np.float32(-np.inf)), candidate, np.nextafter(candidate, np.float32(np.inf))]
    return float(min(neighbours, key=lambda c: (abs(Fraction(float(c)) - total), int(np.float32(c).view(np.int32)) & 1)))


@pytest.mark.parametrize("scale", [1.0, 1e-30, 1e-42, 1e30])  # normal, tiny, subnormal-heavy, large
def test_the_sum_is_exact_and_rounded_once(scale):
    g = torch.Generator().manual_seed(int(-math.log10(scale) + 50))
    values = (torch.randn(2000, generator=g, dtype=torch.float64) * scale).float()
    assert es.float32_from_sums(es.exponent_sums(values)) == exact_float32(values)


def test_the_order_does_not_matter():
    g = torch.Generator().manual_seed(1)
    values = torch.randn(100_000, generator=g) * torch.logspace(-20, 20, 100_000)
    shuffled = values[torch.randperm(values.numel(), generator=g)]
    assert es.exponent_sums(values) == es.exponent_sums(shuffled)
    # a float32 sum in another order usually differs in the last bits; the slots never do
    assert es.float32_from_sums(es.exponent_sums(values)) == es.float32_from_sums(es.exponent_sums(shuffled))


def test_halfway_sums_round_to_even():
    one_ulp_half = 2.0 ** -24  # 1 + 2^-24 lies halfway between 1 and 1 + 2^-23
    values = torch.tensor([1.0, one_ulp_half], dtype=torch.float32)
    assert es.float32_from_sums(es.exponent_sums(values)) == 1.0
    values = torch.tensor([1.0 + 2.0 ** -23, one_ulp_half], dtype=torch.float32)
    assert es.float32_from_sums(es.exponent_sums(values)) == 1.0 + 2.0 ** -22


def test_non_finite_and_overflowing_sums_are_infinite():
    for bad in (math.inf, -math.inf, math.nan):
        assert es.float32_from_sums(es.exponent_sums(torch.tensor([1.0, bad]))) == math.inf
    big = torch.full((4,), 3e38)
    assert es.float32_from_sums(es.exponent_sums(big)) == math.inf
    assert es.float32_from_sums(es.exponent_sums(torch.zeros(5))) == 0.0


def test_rescale_factor():
    ones = es.exponent_sums(torch.ones(8))
    halves = es.exponent_sums(torch.ones(3))
    assert es.rescale_factor(ones, halves, 1e-7) == float(np.float32(8.0) / np.float32(3.0))
    assert es.rescale_factor(ones, es.exponent_sums(torch.zeros(3)), 1e-7) is None  # nothing kept
    assert es.rescale_factor(es.exponent_sums(torch.tensor([math.nan])), halves, 1e-7) is None


@pytest.mark.skipif(not native.available(), reason="the compiled loops are not built")
def test_the_compiled_loops_describe_the_same_sums():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(100_003, generator=g).bfloat16()
    x = (base.float() + 0.01 * torch.randn(100_003, generator=g)).bfloat16()
    delta = x.float() - base.float()
    before, after = native.prune_sums(base, native.model_spec(x, 1.0))  # keeps everything
    assert same_sum(before, es.exponent_sums(delta)) and same_sum(after, before)
    keep = native.model_spec(x, 1.0, threshold=0)  # keeps nothing (random drop at density 0)
    before, after = native.prune_sums(base, keep)
    assert same_sum(before, es.exponent_sums(delta)) and not any(after)


@pytest.mark.skipif(not native.available(), reason="the compiled loops are not built")
def test_the_compiled_loops_sums_whatever_a_chunks_exponent_span():
    """mh_prune_sums adds a chunk of 1024 as one integer when its exponents span at most 29
    binades, else per exponent (wider spans, Inf): both give the exact sums."""
    g = torch.Generator().manual_seed(3)
    base = torch.zeros(5000)
    delta = 0.01 * torch.randn(5000, generator=g)
    delta[1024:2048:5] = 1e-30  # a chunk spanning ~80 binades
    delta[2048:3072:3] *= 1e-36  # subnormals among normals
    delta[3100] = math.inf
    delta[4096:] = 0.0
    x = base + delta
    spec = native.model_spec(x, 1.0, key=(3, 4), offset=0, threshold=1 << 23)  # keeps draws below 2^23
    before, after = native.prune_sums(base, spec)
    keep = native.draws24((3, 4), 0, torch.empty(5000, dtype=torch.int32)) < (1 << 23)
    assert 0 < int(keep.sum()) < 5000
    assert same_sum(before, es.exponent_sums(delta))
    assert same_sum(after, es.exponent_sums(torch.where(keep, delta, 0.0)))
