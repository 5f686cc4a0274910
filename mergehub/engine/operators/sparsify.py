"""Sparsifiers of the task-arithmetic family, applied to one delta δ at a time, in place.

Each returns δ with the dropped entries set to 0 and, with ``rescale``, the kept entries
multiplied by ‖δ‖₁ / ‖mask·δ‖₁ over the tensor (skipped when either norm is below 1e-7 or not
finite; float32 norms are summed exactly, exact_sum.py).
A density ≥ 1 leaves δ untouched (no rescale either); a density ≤ 0 zeroes it.

* magnitude (TIES): keep the k = max(1, int(density·n)) largest |δ| (selection.py tie rule);
* random (DARE): keep each entry with probability density (random_stream.py: u24 < ⌈density·2^24⌉);
* magnitude_outliers (breadcrumbs): order |δ| ascending, keep positions
  [n_bot, n_bot + target) with target = int(density·n), n_top = int(gamma·n),
  n_bot = max(0, n − target − n_top): the smallest and the gamma largest are dropped;
* della_magprune (DELLA): rank |δ| along dim 1 (a 1-D tensor is one row), normalise the
  rank to [0, 1], keep with probability p = density − ε + 2ε·rank.
"""

from __future__ import annotations

from typing import Callable

import torch

from .base import MergeContext
from .exact_sum import exponent_sums, rescale_factor
from .selection import largest_mask, smallest_mask

RESCALE_EPS = 1e-7

# sparsifier(delta, density, rescale, model params, ctx, model index) -> delta (same storage)
Sparsifier = Callable[[torch.Tensor, float, bool, dict, MergeContext, int], torch.Tensor]


def _apply(delta: torch.Tensor, keep: torch.Tensor, rescale: bool,
           ctx: MergeContext | None = None, k: int = 0) -> torch.Tensor:
    """δ ← keep·δ, then the optional L1 rescale. ``keep`` (always a fresh mask) is consumed.
    float32 norms are exact (exact_sum.py: the compiled kernels get the same factor); other
    working dtypes sum in that dtype, as mergekit does. Where ``ctx.rescale_factors`` holds
    model k's factor over the whole tensor (``delta`` is some rows of a big one), it is used."""
    exact = delta.dtype == torch.float32
    if rescale and ctx is not None and ctx.rescale_factors is not None:
        delta.masked_fill_(keep.logical_not_(), 0)
        factor = ctx.rescale_factors[k]
        return delta if factor is None else delta.mul_(factor)
    if rescale:
        before = exponent_sums(delta) if exact else delta.abs().sum()
    delta.masked_fill_(keep.logical_not_(), 0)
    if not rescale:
        return delta
    if exact:
        factor = rescale_factor(before, exponent_sums(delta), RESCALE_EPS)
        return delta if factor is None else delta.mul_(factor)
    after = delta.abs().sum()
    if before >= RESCALE_EPS and after >= RESCALE_EPS:
        delta.mul_(before / after)
    return delta


def magnitude_count(density: float, n: int) -> int:
    """Entries TIES keeps of n at ``density`` in (0, 1): mergekit's k = max(1, int(density·n))."""
    return max(1, int(density * n))


def magnitude(delta: torch.Tensor, density: float, rescale: bool, model: dict,
              ctx: MergeContext, k: int) -> torch.Tensor:
    n = delta.numel()
    if density >= 1 or n == 0:
        return delta
    if density <= 0:
        return delta.zero_()
    keep = largest_mask(delta.abs(), magnitude_count(density, n))
    return _apply(delta, keep, rescale)


def random(delta: torch.Tensor, density: float, rescale: bool, model: dict,
           ctx: MergeContext, k: int) -> torch.Tensor:
    if density >= 1:
        return delta
    return _apply(delta, random_keep(delta, density, model, ctx, k), rescale, ctx, k)


def random_keep(delta: torch.Tensor, density: float, model: dict, ctx: MergeContext, k: int) -> torch.Tensor:
    """DARE's keep mask for the rows ``delta`` holds (0 < density < 1)."""
    return ctx.random_keep(k, delta.shape, density)


def magnitude_outliers(delta: torch.Tensor, density: float, rescale: bool, model: dict,
                       ctx: MergeContext, k: int) -> torch.Tensor:
    if density >= 1:
        return delta
    n = delta.numel()
    target = int(density * n)
    n_top = int(model["gamma"] * n)
    n_bot = max(0, n - target - n_top)
    magnitudes = delta.abs()
    keep = smallest_mask(magnitudes, n_bot + target)
    if n_bot > 0:
        keep &= ~smallest_mask(magnitudes, n_bot)
    return _apply(delta, keep, rescale)


def della_magprune(delta: torch.Tensor, density: float, rescale: bool, model: dict,
                   ctx: MergeContext, k: int) -> torch.Tensor:
    if density >= 1:
        return delta
    if density <= 0:
        return delta.zero_()
    return _apply(delta, della_keep(delta, density, model, ctx, k), rescale, ctx, k)


def della_keep(delta: torch.Tensor, density: float, model: dict, ctx: MergeContext, k: int) -> torch.Tensor:
    """DELLA's keep mask for the rows ``delta`` holds (0 < density < 1): ranks within each row."""
    return ctx.uniform(k, delta.shape) < _probabilities(density, model["epsilon"], della_rank(delta))


def l1_sums(delta: torch.Tensor, keep: torch.Tensor) -> tuple[list[int], list[int]]:
    """Exact L1 slots (exact_sum.py) of float32 ``delta`` over all its entries and over those
    ``keep`` keeps: what the rescale factor ‖δ‖₁ / ‖kept δ‖₁ is made of, summable over rows."""
    return exponent_sums(delta), exponent_sums(delta * keep)


def _probabilities(density: float, epsilon: float, rank: torch.Tensor) -> torch.Tensor:
    """DELLA's keep probability density − ε + 2ε·rank (float32 ops, the compiled loops' table)."""
    return density - epsilon + (2 * epsilon) * rank


def della_probabilities(density: float, epsilon: float, width: int) -> torch.Tensor:
    """float32[width]: the keep probability of the entry ranked r (0-based) in a row of ``width``
    ≥ 2, computed with the same ops as ``della_magprune`` (for the compiled loops)."""
    steps = torch.arange(width, dtype=torch.float32) / (width - 1)
    return _probabilities(density, epsilon, steps)


def della_rank(delta: torch.Tensor) -> torch.Tensor:
    """Rank of |δ| along dim 1 normalised to [0, 1] (ascending, stable for ties), shaped
    like δ. A 1-D tensor is one row; a row of width 1 gets 0.5 (mergekit fails there)."""
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta
    width = rows.shape[1]
    if width <= 1:
        return torch.full_like(delta, 0.5)
    order = torch.sort(rows.abs(), dim=1, stable=True).indices
    steps = torch.arange(width, device=delta.device, dtype=delta.dtype) / (width - 1)
    steps = steps.view((1, width) + (1,) * (rows.dim() - 2)).expand_as(rows)
    rank = torch.empty_like(rows).scatter_(1, order, steps)
    return rank.reshape(delta.shape)


# The sparsifiers whose keep masks are drawn row by row: their only whole-tensor step is the
# rescale, whose sums add up over a tensor's pieces (the keep mask of some rows of δ)
ROW_MASKS = {"random": random_keep, "della_magprune": della_keep}

SPARSIFIERS: dict[str, Sparsifier] = {
    "magnitude": magnitude,
    "random": random,
    "magnitude_outliers": magnitude_outliers,
    "della_magprune": della_magprune,
}
