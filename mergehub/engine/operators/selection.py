"""Exact-k selection without sorting the whole tensor.

mergekit ranks |δ| with a full ``argsort`` (O(n log n), single-threaded on CPU). Here the
k-th order statistic is found on a small candidate set bracketed by a strided sample, so a
selection costs a few vectorised passes over the tensor.

``delta_topk_rule`` is the same streaming selection for TIES on the CPU, run by the compiled
loops of engine/native.

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

from .. import native
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
    bits inside it: counting passes instead of a sort (in the compiled loops on the CPU)."""
    flat = values.reshape(-1)
    n = flat.numel()
    for r in ranks:
        if not 1 <= r <= n:
            raise ValueError(f"rank {r} out of range for {n} elements")
    if flat.dtype != torch.float32 or n <= _SMALL:
        ordered = torch.sort(flat).values
        return [ordered[r - 1] for r in ranks]
    if native.available() and flat.device.type == "cpu" and n < 1 << 32 and len(ranks) < 256:
        return list(native.smallest(flat.contiguous(), ranks))
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
        out.append(torch.tensor(_float32(raw), dtype=torch.float32))
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
# and of the low 16: the same bins as the compiled loops
KEY_BINS, LOW_BINS = native.KEY_BINS, native.LOW_BINS
_SAMPLE_DELTAS = 1 << 14  # entries sampled to guess the k-th largest |δ|


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
        return _rule_in_bin(n, positions, values_at(positions), need)

    def count_nonzero() -> int:
        return sum(int(torch.count_nonzero(tile_values(a, b))) for a, b in tiles(n, tile))

    return rule_from_histogram(n, k, torch.bincount(keys, minlength=KEY_BINS), pick_in_bin, count_nonzero)


def values_topk_rule(values: torch.Tensor, k: int, hist: torch.Tensor, nonzero: int) -> TopKRule:
    """``topk_rule`` for flat float32 values held whole on the CPU (1 ≤ k < n), from the
    histogram and non-zero count of ``native.value_histogram`` (one pass on all cores, where
    topk_rule's torch ops make four); the chosen bin's positions come from the compiled loops
    too. The same rule, bit for bit."""
    n = values.numel()

    def pick_in_bin(key: int, need: int) -> TopKRule:
        positions = native.value_positions(values, key, int(hist[key]))
        return _rule_in_bin(n, positions, values[positions], need)

    return rule_from_histogram(n, k, hist, pick_in_bin, lambda: nonzero)


def _rule_in_bin(n: int, positions: torch.Tensor, values: torch.Tensor, need: int) -> TopKRule:
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


def delta_topk_rule(x: torch.Tensor, base: torch.Tensor, k: int) -> TopKRule:
    """The rule keeping the k largest |x − base| (flat CPU tensors, 1 ≤ k < numel), through the
    compiled loops (engine/native); the same rule as ``topk_rule``.

    Deltas of bf16 checkpoints take few distinct values, so the k-th largest |δ| usually sits
    in a long run of equal values that a strided sample hits: one counting pass confirms the
    guess (#above < k ≤ #above + #equal). When the sample doubts its guess, the same pass also
    collects the entries in a bracket around it, among which the exact value is found. Failing
    both, a histogram of the top 16 bits of |δ|'s float32 pattern finds its bin and one of the
    low 16 bits inside that bin the exact value. The first tie not kept is then looked up among
    the collected entries, or scanned for from the run of 64K entries that holds it (the
    counting pass tallies the ties per run), or from the start."""
    n = base.numel()

    def rule(t: _Threshold, ties_kept: int) -> TopKRule:
        cut = n if ties_kept == t.equal else t.tie_position(x, base, ties_kept)
        return TopKRule(_float32(t.pattern), cut)

    [guess] = _sampled_guesses(x, base, [k])
    if guess.pattern >> 16:  # bin 0 (zeros, subnormals): the zero shortcut below
        [found] = _try_guesses(x, base, [k], [guess])
        if found is not None and found.pattern >> 16:
            return rule(found, k - found.above)

    def pick_in_bin(key: int, need: int) -> TopKRule:
        low_hist = native.magnitude_low_histogram(x, base, key)
        low, above = bin_from_top(low_hist, need)
        return rule(_Threshold((key << 16) | low, k - need + above, int(low_hist[low])), need - above)

    def count_nonzero() -> int:
        return sum(int(torch.count_nonzero(x[a:b].float() - base[a:b].float())) for a, b in tiles(n))

    return rule_from_histogram(n, k, native.magnitude_histogram(x, base), pick_in_bin, count_nonzero)


def delta_outside_smallest(x: torch.Tensor, base: torch.Tensor,
                           ranks: list[int]) -> list[tuple[float, float, int]]:
    """For each r in ``ranks`` (1 ≤ r < numel; at most two), levels (λ before cut, λ from cut on,
    cut) such that |x − base| > λ holds exactly for the entries *not* among the r smallest
    (``smallest_mask``'s tie rule: the ties at the threshold that are among the r smallest come
    first in flat order). Through the compiled loops, like ``delta_topk_rule``; breadcrumbs keeps
    and drops with two of these, found together: one sample, one counting pass for both guesses
    (and their brackets), and at most one histogram of the top 16 bits."""
    n = base.numel()
    levels = []
    for t, r in zip(_delta_kth_largest(x, base, [n - r + 1 for r in ranks]), ranks):
        ties_inside = r - (n - t.above - t.equal)  # ties at the threshold among the r smallest, ≥ 1
        cut = n if ties_inside == t.equal else t.tie_position(x, base, ties_inside)
        threshold = TopKRule(_float32(t.pattern), cut)
        # below cut the ties are inside (|δ| > t leaves them out); from cut on outside (|δ| ≥ t)
        levels.append((threshold.threshold, threshold.below(), cut))
    return levels


@dataclass
class _Threshold:
    """The k-th largest |x − base|: its float32 pattern, the entries above it and equal to it,
    and where the equal ones (the ties) are: their flat positions when they were collected,
    or their count in each run of TALLY entries, or nothing known."""

    pattern: int
    above: int
    equal: int
    tallies: torch.Tensor | None = None
    tie_positions: torch.Tensor | None = None

    def tie_position(self, x: torch.Tensor, base: torch.Tensor, rank: int) -> int:
        """The flat position of the tie numbered ``rank`` (from 0, in flat order); numel past the last."""
        if self.tie_positions is not None:
            return int(self.tie_positions[rank]) if rank < self.tie_positions.numel() else base.numel()
        return native.magnitude_position(x, base, self.pattern, rank, self.tallies)


@dataclass
class _Guess:
    """A sampled guess at the k-th largest |δ|'s float32 pattern, with a bracket (lo, hi, room)
    of patterns around it when the sample doubts it (else None)."""

    pattern: int
    bracket: tuple[int, int, int] | None


def _delta_kth_largest(x: torch.Tensor, base: torch.Tensor, ks: list[int]) -> list[_Threshold]:
    """The k-th largest |x − base| for each k in ``ks`` (one or two): the guesses are tried
    together, and the ones that fail share one histogram."""
    found = _try_guesses(x, base, ks, _sampled_guesses(x, base, ks))
    if None in found:
        hist = native.magnitude_histogram(x, base)
        for i, k in enumerate(ks):
            if found[i] is None:
                key, above = bin_from_top(hist, k)
                low_hist = native.magnitude_low_histogram(x, base, key)
                low, above_in_bin = bin_from_top(low_hist, k - above)
                found[i] = _Threshold((key << 16) | low, above + above_in_bin, int(low_hist[low]))
    return found


def _try_guesses(x: torch.Tensor, base: torch.Tensor, ks: list[int],
                 guesses: list[_Guess]) -> list[_Threshold | None]:
    """One counting pass: each guess confirmed (#above < k ≤ #above + #equal), or the exact
    value found among the entries its bracket collected; None where neither holds."""
    counts, tallies, collected = native.magnitude_count(x, base, [g.pattern for g in guesses],
                                                        [g.bracket for g in guesses])
    found: list[_Threshold | None] = []
    for g, (above, equal), t, c, k in zip(guesses, counts, tallies, collected, ks):
        if above < k <= above + equal:
            found.append(_Threshold(g.pattern, above, equal, tallies=t))
        elif c is not None and c.above < k <= c.above + c.keys.numel():
            need = k - c.above  # the need-th largest of the collected
            pattern = int(torch.kthvalue(c.keys, c.keys.numel() - need + 1).values)
            ties = c.keys == pattern  # all of them: the bracket holds every entry of its range
            found.append(_Threshold(pattern, c.above + int((c.keys > pattern).sum()), int(ties.sum()),
                                    tie_positions=c.positions[ties]))
        else:
            found.append(None)
    return found


def _float32(pattern: int) -> float:
    """The float32 whose bit pattern is ``pattern`` (0 ≤ pattern < 2^32)."""
    return struct.unpack("<f", struct.pack("<I", pattern))[0]


# A doubted guess's bracket spans this many standard errors of its sampled rank each way (it
# misses the k-th largest about 0.3% of the time, which costs the two histogram passes). The
# collected entries take 8 bytes each while the pass runs, so there is none when more than
# _BRACKET_MAX of the sample falls in it or room for more than _BRACKET_ROOM entries would be
# needed (a huge embedding's: its two histogram passes cost less than the memory).
_BRACKET_ERRORS = 3
_BRACKET_MAX = 1 / 16
_BRACKET_ROOM = 1 << 21


def _sampled_guesses(x: torch.Tensor, base: torch.Tensor, ks: list[int]) -> list[_Guess]:
    """For each k in ``ks``: the float32 bit pattern of the k-th largest |x − base| estimated
    from one strided sample, and a bracket when the guess is doubtful: when the k-th largest's
    place in the sample lies near an end of the run of sampled values equal to it."""
    n = base.numel()
    step = max(1, n // _SAMPLE_DELTAS)
    sample = (x[::step].float() - base[::step].float()).abs_()
    size = sample.numel()
    ordered = torch.sort(sample, descending=True).values
    guesses = []
    for k in ks:
        place = k / n * size
        value = ordered[min(size - 1, int(place))]
        equal = (ordered == value).nonzero()
        error = math.sqrt(place * (1 - k / n))  # standard error of the sampled rank
        # Doubtful within half a standard error of an end: on the benchmark family (TIES,
        # breadcrumbs) that catches most guesses that fail; one or two errors were no faster.
        likely = int(equal[0]) + 0.5 * error <= place <= int(equal[-1]) + 1 - 0.5 * error
        bracket = None
        if not likely:
            hi = ordered[max(0, math.floor(place - _BRACKET_ERRORS * error - 2))]
            lo = ordered[min(size - 1, math.ceil(place + _BRACKET_ERRORS * error + 2))]
            inside = int(((ordered >= lo) & (ordered <= hi)).sum())
            room = 5 * inside * n // (4 * size) + 4096  # the expected count and a quarter (~5 errors)
            if inside <= _BRACKET_MAX * size and room <= _BRACKET_ROOM:
                bracket = (int(lo.view(torch.int32)), int(hi.view(torch.int32)), room)
        guesses.append(_Guess(int(value.view(torch.int32)), bracket))
    return guesses


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
