"""95% intervals: Wilson score for proportions, and a t-interval for perplexity.

Perplexity is exp of the mean negative log-likelihood per token, a ratio of sums over documents
(total NLL / total tokens). Its interval comes from the ratio's delta-method standard error with
documents as the sampling unit, a t quantile with (documents - 1) degrees of freedom, and is
exponentiated at the end, so it is asymmetric around the perplexity.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # standard normal 97.5% quantile
# Student t 97.5% quantiles for 1..30 degrees of freedom (beyond: Cornish-Fisher, error < 1e-5)
T95 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
       2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
       2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError("a t interval needs at least one degree of freedom")
    if df <= len(T95):
        return T95[df - 1]
    z = Z95
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def perplexity_interval(nll_sums: list[float], token_counts: list[int]) -> tuple[float, float, float]:
    """(perplexity, low, high) over documents; low == high == perplexity with one document."""
    total_tokens = sum(token_counts)
    mean_nll = sum(nll_sums) / total_tokens
    ppl = math.exp(mean_nll)
    docs = len(nll_sums)
    if docs < 2:
        return ppl, ppl, ppl
    mean_tokens = total_tokens / docs
    # delta method for a ratio estimator: residuals of each document's NLL from mean_nll * tokens
    residual_var = sum((s - mean_nll * n) ** 2 for s, n in zip(nll_sums, token_counts)) / (docs - 1)
    se = math.sqrt(residual_var / docs) / mean_tokens
    half = t_quantile_975(docs - 1) * se
    return ppl, math.exp(mean_nll - half), math.exp(mean_nll + half)
