"""Wilson and perplexity intervals against known numbers."""

from __future__ import annotations

import math

import pytest

from mergehub.scoring.stats import perplexity_interval, t_quantile_975, wilson_interval


@pytest.mark.parametrize("k, n, low, high", [
    (8, 10, 0.4902, 0.9433),    # textbook values (e.g. Newcombe 1998, Agresti & Coull 1998)
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (50, 100, 0.4038, 0.5962),
    (1, 1, 0.2065, 1.0),
])
def test_wilson_known_values(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-4)


def test_wilson_without_examples():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_t_quantiles():
    assert t_quantile_975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile_975(30) == pytest.approx(2.0423, abs=1e-4)
    assert t_quantile_975(40) == pytest.approx(2.02108, abs=1e-4)
    assert t_quantile_975(10**6) == pytest.approx(1.95996, abs=1e-4)


def test_perplexity_interval_by_hand():
    nll, tokens = [10.0, 14.0, 9.0], [5, 5, 4]
    ppl, low, high = perplexity_interval(nll, tokens)
    mean = 33 / 14
    residuals = [s - mean * n for s, n in zip(nll, tokens)]
    se = math.sqrt(sum(r * r for r in residuals) / 2 / 3) / (14 / 3)
    assert ppl == pytest.approx(math.exp(mean))
    assert (low, high) == pytest.approx((math.exp(mean - 4.3027 * se), math.exp(mean + 4.3027 * se)))


def test_perplexity_interval_of_one_document_has_no_width():
    assert perplexity_interval([6.0], [3]) == pytest.approx((math.exp(2),) * 3)
