"""Exact L1 norms (operators/exact_sum.py): order-free integer slots, one rounding to float32."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from mergehub.engine.operators import exact_sum as es


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
