"""Exact-k selection without sorting the whole tensor.

mergekit ranks |δ| with a full ``argsort`` (O(n log n), single-threaded on CPU). Here the
k-th order statistic is found on a small candidate set bracketed by a strided sample, so a
selection costs a few vectorised passes over the tensor.

Tie rule (documented in docs/operators.md): elements are ordered by (value, flat index), as
a stable sort would order them. ``smallest_mask(v, r)`` keeps the r smallest, and among values
equal to the threshold the ones first in flattened order; ``largest_mask(v, k)`` keeps the k
largest, and among values equal to the threshold again the ones first in flattened order
(a stable descending sort). Either way exactly the requested count is kept.
"""

from __future__ import annotations

import math

import torch

_SMALL = 1 << 18  # below this, sorting the whole tensor is already cheap
_SAMPLE = 1 << 16


def _sorted_pick(values: torch.Tensor, r: int) -> torch.Tensor:
    # torch.kthvalue degrades badly on reverse-sorted CPU input (seconds for 1e5 entries);
    # a sort is O(n log n) whatever the order.
    return torch.sort(values).values[r - 1]


def kth_smallest(values: torch.Tensor, r: int) -> torch.Tensor:
    """The r-th smallest element (1-based) of ``values`` as a 0-D tensor, 1 ≤ r ≤ numel.

    A strided sample brackets the answer between two sample order statistics; the exact
    value is then the (r − #below)-th smallest of the few elements inside the bracket.
    If the sample misjudged the bracket (adversarial layout) it falls back to a full sort.
    """
    flat = values.reshape(-1)
    n = flat.numel()
    if not 1 <= r <= n:
        raise ValueError(f"rank {r} out of range for {n} elements")
    if n <= _SMALL:
        return _sorted_pick(flat, r)
    stride = n // _SAMPLE
    sample = torch.sort(flat[::stride]).values
    s = sample.numel()
    q = r / n
    margin = 5.0 * (s * q * (1 - q)) ** 0.5 + 8
    lo_i, hi_i = math.floor(q * s - margin), math.ceil(q * s + margin)
    lo = sample[lo_i] if lo_i >= 0 else None
    hi = sample[hi_i] if hi_i < s else None
    # Quantised deltas (bf16 inputs) put huge runs of equal values, often 0, at the answer:
    # test the bracket ends first so such a run is never sorted.
    below = 0
    if lo is not None:
        below = int((flat < lo).sum())
        at_lo = int((flat == lo).sum())
        if below < r <= below + at_lo:
            return lo
        below += at_lo
    inside = None  # lo < flat < hi (the flat < hi mask counted just below is reused)
    if hi is not None:
        inside = flat < hi
        below_hi = int(inside.sum())
        if below_hi < r <= below_hi + int((flat == hi).sum()):
            return hi
    if lo is not None:
        inside = flat > lo if inside is None else inside.logical_and_(flat > lo)
    candidates = flat if inside is None else flat[inside]
    if below < r <= below + candidates.numel():
        return _sorted_pick(candidates, r - below)
    return _sorted_pick(flat, r)  # the sample missed (NaNs or an adversarial layout)


def _complete(mask: torch.Tensor, ties: torch.Tensor, need: int) -> torch.Tensor:
    """Add the first ``need`` positions of ``ties`` (flattened order) to ``mask``."""
    if need <= 0:
        return mask
    tie_count = int(ties.sum())
    if tie_count == need:
        mask |= ties
    else:
        index = ties.reshape(-1).nonzero().squeeze(1)[:need]
        mask.view(-1)[index] = True
    return mask


def largest_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly min(max(k, 0), numel) largest elements (tie rule above)."""
    n = values.numel()
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    threshold = kth_smallest(values, n - k + 1)
    mask = values > threshold
    return _complete(mask, values == threshold, k - int(mask.sum()))


def smallest_mask(values: torch.Tensor, r: int) -> torch.Tensor:
    """Boolean mask of exactly min(max(r, 0), numel) smallest elements (tie rule above)."""
    n = values.numel()
    if r >= n:
        return torch.ones_like(values, dtype=torch.bool)
    if r <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    threshold = kth_smallest(values, r)
    mask = values < threshold
    return _complete(mask, values == threshold, r - int(mask.sum()))
