"""Exact-k selection without sorting the whole tensor.

mergekit ranks |δ| with a full ``argsort`` (O(n log n), single-threaded on CPU). Here the
k-th order statistic is found on a small candidate set bracketed by a strided sample, so a
selection costs a few vectorised passes over the tensor.

The compiled kernels find the same rules for |x − base| without materialising it
(engine/kernels/topk.py).

Tie rule (documented in docs/operators.md): elements are ordered by (value, flat index), as
a stable sort would order them. ``smallest_mask(v, r)`` keeps the r smallest, and among values
equal to the threshold the ones first in flattened order; ``largest_mask(v, k)`` keeps the k
largest, and among values equal to the threshold again the ones first in flattened order
(a stable descending sort). Either way exactly the requested count is kept.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..buffers import TILE_ELEMENTS

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


def smallest_values(values: torch.Tensor, ranks: list[int]) -> list[torch.Tensor]:
    """The r-th smallest (1-based) of a float32 tensor for each r in ``ranks``, as 0-D tensors:
    the values sorting gives (NaN last), from a histogram of the top 16 bits of an
    order-preserving integer form of the values and, per bin holding a rank, one of the low 16
    bits inside it: counting passes instead of a sort."""
    flat = values.reshape(-1)
    n = flat.numel()
    for r in ranks:
        if not 1 <= r <= n:
            raise ValueError(f"rank {r} out of range for {n} elements")
    if flat.dtype != torch.float32 or n <= _SMALL:
        ordered = torch.sort(flat).values
        return [ordered[r - 1] for r in ranks]
    bits = flat.view(torch.int32).long() & 0xFFFFFFFF
    # order-preserving: a negative float's bits all flipped, a non-negative one's sign bit
    # set; every NaN is the largest key, as sorting puts NaN last
    keys = torch.where(bits >= 1 << 31, bits ^ 0xFFFFFFFF, bits | (1 << 31))
    keys.masked_fill_(flat.isnan(), 0xFFFFFFFF)
    high = keys >> 16
    high_counts = torch.bincount(high, minlength=1 << 16)

    def low_counts(bins: list[int]) -> torch.Tensor:
        return torch.stack([torch.bincount(keys[high == b] & 0xFFFF, minlength=LOW_BINS) for b in bins])

    cumulative = high_counts.cumsum(0)
    bins = [int(torch.searchsorted(cumulative, r)) for r in ranks]
    distinct = sorted(set(bins))
    lows = dict(zip(distinct, low_counts(distinct).cumsum(1)))
    out = []
    for r, key in zip(ranks, bins):
        below = int(cumulative[key - 1]) if key else 0
        pattern = (key << 16) | int(torch.searchsorted(lows[key], r - below))
        raw = pattern ^ (1 << 31) if pattern >= 1 << 31 else pattern ^ 0xFFFFFFFF
        out.append(torch.tensor(float32_of(raw), dtype=torch.float32))
    return out


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


# --- Streaming top-k over a tensor too large to handle at once -----------------------------

# histograms of the top 16 bits of a non-negative float32 (sign 0, exponent, 7 mantissa bits)
# and of the low 16 (the compiled kernels' MH_KEY_BINS and MH_LOW_BINS)
KEY_BINS, LOW_BINS = 1 << 15, 1 << 16


def tiles(n: int, size: int | None = None):
    """[start, stop) ranges of at most ``size`` (default ``TILE_ELEMENTS``) covering range(n)."""
    size = size or TILE_ELEMENTS
    for start in range(0, n, size):
        yield start, min(start + size, n)


@dataclass(frozen=True)
class TopKRule:
    """Which entries of a tensor are among its k largest, as an elementwise test: keep
    v > threshold, and v == threshold at flat positions before ``cut`` (the tie rule above).
    When the k largest include zeros the rule may keep every zero: it is made for pruning,
    where a kept zero and a dropped one are the same."""

    threshold: float
    cut: int

    def shifted(self, offset: int) -> "TopKRule":
        """The same rule for a slice of the tensor starting at flat position ``offset``."""
        return self if offset == 0 else TopKRule(self.threshold, max(0, self.cut - offset))

    def prune(self, delta: torch.Tensor, start: int) -> torch.Tensor:
        """``delta`` (a flat slice from ``start``) with entries whose |δ| the rule drops set to 0.

        hardshrink(x, λ) keeps x where |x| > λ: with λ the float just below the threshold that is
        |x| ≥ threshold, with λ = threshold it is |x| > threshold. It is a float op, several times
        faster on CPU than building a bool mask and filling through it."""
        stop = start + delta.numel()
        if stop <= self.cut:
            return self._at_least(delta)
        if start >= self.cut:
            return F.hardshrink(delta, self.threshold)
        split = self.cut - start
        out = self._at_least(delta)
        out[split:] = F.hardshrink(delta[split:], self.threshold)
        return out

    def _at_least(self, delta: torch.Tensor) -> torch.Tensor:
        if self.threshold <= 0:
            return delta
        return F.hardshrink(delta, self.below(delta.dtype))

    def below(self, dtype: torch.dtype = torch.float32) -> float:
        """The largest ``dtype`` value under the threshold: |x| > it means |x| ≥ threshold."""
        return float(torch.nextafter(torch.tensor(self.threshold, dtype=dtype),
                                     torch.tensor(-math.inf, dtype=dtype)))

    def levels(self) -> tuple[float, float, int]:
        """(λ before ``cut``, λ from ``cut`` on, cut) for float32 deltas: keep where |δ| > λ."""
        return (self.below() if self.threshold > 0 else -math.inf), self.threshold, self.cut


def topk_rule(n: int, k, tile_values, values_at, tile: int | None = None) -> TopKRule | None:
    """The rule selecting exactly the k largest of n non-negative float values (1 ≤ k < n;
    ``k`` may be a function, called once every tile has been seen).

    ``tile_values(start, stop)`` returns the flat slice [start, stop) of the values (called
    once per tile); ``values_at(positions)`` the values at a few flat positions. The float32
    bit pattern of a non-negative number orders like the number, so a histogram of its top
    16 bits finds the bin holding the k-th largest in one pass (``rule_from_histogram``).
    ``tile``: elements per ``tile_values`` call (default ``TILE_ELEMENTS``).
    """
    keys = torch.empty(n, dtype=torch.int16)
    for start, stop in tiles(n, tile):
        # float32 rounding is monotone, so other dtypes bin correctly through it; the final
        # choice inside the bin compares the exact values
        keys[start:stop] = tile_values(start, stop).reshape(-1).float().view(torch.int32) >> 16
    k = k() if callable(k) else k
    if not 1 <= k < n:
        return None  # a callable k asked for nothing or everything: the caller decides

    def pick_in_bin(key: int, need: int) -> TopKRule:
        positions = (keys == key).nonzero().squeeze(1)  # ascending flat positions
        return rule_in_bin(n, positions, values_at(positions), need)

    def count_nonzero() -> int:
        return sum(int(torch.count_nonzero(tile_values(a, b))) for a, b in tiles(n, tile))

    return rule_from_histogram(n, k, torch.bincount(keys, minlength=KEY_BINS), pick_in_bin, count_nonzero)


def rule_in_bin(n: int, positions: torch.Tensor, values: torch.Tensor, need: int) -> TopKRule:
    """The rule keeping everything above a bin and the ``need`` largest of its members (their
    ascending flat ``positions`` and ``values``), ties first in flat order."""
    threshold = _kth_largest_in_bin(values, need)
    ties_kept = need - int((values > threshold).sum())
    tie_positions = positions[values == threshold]
    cut = int(tie_positions[ties_kept]) if ties_kept < tie_positions.numel() else n
    return TopKRule(float(threshold), cut)


def rule_from_histogram(n: int, k: int, hist: torch.Tensor, pick_in_bin, count_nonzero) -> TopKRule:
    """The k-largest rule (1 ≤ k < n) from ``hist``, the counts of the values' top 16 float32
    bits: finds the bin holding the k-th largest, then ``pick_in_bin(key, need)`` returns the
    rule keeping everything above that bin and its ``need`` largest members.
    ``count_nonzero()`` gives the number of non-zero values (asked only when that bin is 0).
    """
    key, above = bin_from_top(hist, k)
    need = k - above  # 1 ≤ need ≤ hist[key]
    if key == 0:
        # The k-th largest is 0 or a tiny subnormal, and bin 0 is mostly zeros (an expert read in
        # part under a budget). If bin 0 has at most `need` non-zero values, keeping every entry
        # keeps the same non-zero values as the top k: kept or dropped, a zero adds nothing.
        if count_nonzero() - above <= need:
            return TopKRule(0.0, n)
    return pick_in_bin(key, need)


def float32_of(pattern: int) -> float:
    """The float32 whose bit pattern is ``pattern`` (0 ≤ pattern < 2^32)."""
    return struct.unpack("<f", struct.pack("<I", pattern))[0]


def bin_from_top(hist: torch.Tensor, r: int) -> tuple[int, int]:
    """(the bin holding the r-th largest value, how many values lie in higher bins)."""
    from_top = hist.flip(0).cumsum(0)
    position = int(torch.searchsorted(from_top, r))  # first bin from the top reaching r
    index = hist.numel() - 1 - position
    return index, int(from_top[position]) - int(hist[index])


def _kth_largest_in_bin(values: torch.Tensor, r: int) -> torch.Tensor:
    """The r-th largest of non-negative ``values`` whose float32 patterns share their top 16
    bits: a histogram of the low 16 bits finds its exact pattern without sorting."""
    low = values.float().view(torch.int32) & 0xFFFF
    pattern, above = bin_from_top(torch.bincount(low, minlength=LOW_BINS), r)
    same = values[low == pattern]
    if values.dtype in (torch.float32, torch.bfloat16, torch.float16):
        return same[0]  # the float32 pattern is the exact value
    return torch.sort(same, descending=True).values[r - above - 1]  # float64: order within the pattern


# --- The same rule over a tensor seen in pieces, for merges bigger than memory ------------

class StreamedTopK:
    """``topk_rule`` for n non-negative values seen piece by piece in flat order, in two passes,
    without holding them: the values' float32 patterns are counted, never kept.

    Pass one adds each piece's histogram of the top 16 bits (``add_top``); ``end_top`` finds the
    bin holding the k-th largest. Pass two adds each piece's histogram of the low 16 bits of its
    entries in that bin (``add_low``, with its non-zero count when that bin is 0); ``end_low``
    finds the exact threshold and how many ties at it are kept. Merging then asks for the rule
    piece by piece, in order (``rule_for``): ties are counted piece by piece until the piece
    holding the first tie not kept, where its position is looked up; until then every tie is
    kept. Memory stays two histograms whatever the tensor's size. The rule is ``topk_rule``'s,
    tie rule included (tests/engine/operators/test_ops_selection.py)."""

    def __init__(self, n: int, k: int):
        if not 1 <= k < n:
            raise ValueError(f"keeping {k} of {n} needs no selection")
        self.n, self.k = n, k
        # allocated at the first piece: an executor creates one per streamed tensor and expert
        # before any is merged, and frees them as each tensor's passes end
        self.top: torch.Tensor | None = None
        self.low: torch.Tensor | None = None
        self.key: int | None = None  # the bin of the k-th largest, once pass one has ended
        self._nonzero = 0
        self.rule: TopKRule | None = None  # once pass two has ended (cut provisional while pending)
        self.pattern = 0  # the threshold's float32 bit pattern
        self._pending: int | None = None  # ties at the threshold still to pass before the cut

    def add_top(self, hist: torch.Tensor) -> None:
        """Pass one: ``hist`` counts one piece's values by their top 16 bits (KEY_BINS)."""
        self.top = hist.clone() if self.top is None else self.top.add_(hist)

    def end_top(self) -> None:
        self.key, _ = bin_from_top(self.top, self.k)

    def add_low(self, hist: torch.Tensor, nonzero: int) -> None:
        """Pass two: ``hist`` counts one piece's values in bin ``key`` by their low 16 bits
        (LOW_BINS); ``nonzero`` its non-zero values (needed only when ``key`` is 0)."""
        self.low = hist.clone() if self.low is None else self.low.add_(hist)
        self._nonzero += nonzero

    def end_low(self) -> None:
        def pick_in_bin(key: int, need: int) -> TopKRule:
            low, above = bin_from_top(self.low, need)
            self.pattern = (key << 16) | low
            ties_kept = need - above  # so the first tie not kept is the one numbered ties_kept
            if ties_kept < int(self.low[low]):
                self._pending = ties_kept
            return TopKRule(float32_of(self.pattern), self.n)  # provisional cut while pending

        self.rule = rule_from_histogram(self.n, self.k, self.top, pick_in_bin, lambda: self._nonzero)
        self.top = self.low = None  # done with

    @property
    def settled(self) -> bool:
        """Is the rule final (no tie cut left to locate)?"""
        return self.rule is not None and self._pending is None

    def rule_for(self, start: int, count_ties, tie_position) -> TopKRule:
        """The rule, valid over the piece from flat ``start`` (pieces asked for in order).
        ``count_ties(pattern)``: how many of this piece's values have that float32 pattern;
        ``tie_position(pattern, rank)``: the position in this piece of its value numbered ``rank``
        (from 0, flat order) among those. Asked only until the first tie not kept is found."""
        assert self.rule is not None, "both passes must end first"
        if self._pending is not None:
            here = count_ties(self.pattern)
            if self._pending < here:
                self.rule = TopKRule(self.rule.threshold, start + tie_position(self.pattern, self._pending))
                self._pending = None
            else:
                self._pending -= here  # every tie of this piece is kept
        return self.rule
