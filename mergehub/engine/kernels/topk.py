"""The exact top-k of |x − base| through the kernels, for TIES's magnitude pruning and
breadcrumbs' two cuts: the rules of operators/selection.py (``topk_rule``, ``smallest_mask``'s
tie rule) found by counting passes over the stored checkpoints, without materialising δ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..operators.selection import TopKRule, bin_from_top, float32_of, rule_from_histogram, tiles
from . import binding
from .binding import check, tensor_ref

_SAMPLE_DELTAS = 1 << 14  # entries sampled to guess the k-th largest |δ|


@dataclass
class Collected:
    """The entries of |δ| whose float32 pattern lies in a bracket: their patterns and flat
    positions (int32), in flat order, and the number of entries above the bracket."""

    keys: torch.Tensor
    positions: torch.Tensor
    above: int


def magnitude_histogram(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """int64[MH_KEY_BINS]: counts of the top 16 bits of |x − base| (as float32)."""
    hist = torch.zeros(binding.LIB.MH_KEY_BINS, dtype=torch.int64)
    check(binding.LIB.mh_magnitude_histogram(*tensor_ref(x), *tensor_ref(base), base.numel(), binding.ptr(hist)))
    return hist


def magnitude_low_histogram(x: torch.Tensor, base: torch.Tensor, key: int) -> torch.Tensor:
    """int64[MH_LOW_BINS]: counts of the low 16 bits of |x − base| among entries whose top 16 are ``key``."""
    hist = torch.zeros(binding.LIB.MH_LOW_BINS, dtype=torch.int64)
    check(binding.LIB.mh_magnitude_low_histogram(*tensor_ref(x), *tensor_ref(base), base.numel(), key,
                                                 binding.ptr(hist)))
    return hist


def magnitude_count(x: torch.Tensor, base: torch.Tensor, patterns: list[int],
                    brackets: list[tuple[int, int, int] | None] | None = None
                    ) -> tuple[list[tuple[int, int]], torch.Tensor, list[Collected | None]]:
    """For each float32 bit pattern (one or two): (#entries whose |x − base| is above it, #equal
    to it), in one pass; int64[len(patterns), ⌈n / MH_TALLY⌉], each pattern's equal entries in
    each run of MH_TALLY, for ``magnitude_position``; and for each pattern given a bracket
    (lo, hi, cap), the entries with pattern in [lo, hi] collected in the same pass (None when
    no bracket was given, more than ``cap`` entries fell in it, or numel ≥ 2^31)."""
    ffi, lib = binding.FFI, binding.LIB
    n = base.numel()
    counts = torch.zeros(2 * len(patterns), dtype=torch.int64)
    tallies = torch.zeros((len(patterns), -(-n // lib.MH_TALLY)), dtype=torch.int32)
    brackets = brackets or [None] * len(patterns)
    c_brackets = ffi.new("mh_bracket[]", len(patterns))
    buffers = []
    for c, bracket in zip(c_brackets, brackets):
        lo, hi, cap = bracket or (0, 0, 0)
        cap = cap if n < 1 << 31 else 0  # positions are int32: no bracket for larger tensors
        keys, positions = torch.empty(cap, dtype=torch.int32), torch.empty(cap, dtype=torch.int32)
        c.lo, c.hi, c.cap = lo, hi, cap
        c.keys, c.positions = ffi.cast("uint32_t *", keys.data_ptr()), ffi.cast("uint32_t *", positions.data_ptr())
        buffers.append((keys, positions))
    check(lib.mh_magnitude_count(*tensor_ref(x), *tensor_ref(base), n, ffi.new("uint32_t[]", patterns),
                                 len(patterns), binding.ptr(counts), binding.ptr(tallies), c_brackets))
    collected = [None if c.cap == 0 or c.found > c.cap else  # (|δ|'s patterns are < 2^31)
                 Collected(keys[:c.found], positions[:c.found], c.above)
                 for c, (keys, positions) in zip(c_brackets, buffers)]
    pairs = counts.view(-1, 2).tolist()
    return [(above, equal) for above, equal in pairs], tallies.long(), collected


def magnitude_position(x: torch.Tensor, base: torch.Tensor, pattern: int, rank: int,
                       tallies: torch.Tensor | None = None) -> int:
    """Flat position of the entry numbered ``rank`` (from 0, in flat order) among those whose
    |x − base| has float32 bit pattern ``pattern``; numel when there are not that many.
    ``tallies`` (that pattern's row from ``magnitude_count``): the scan starts in the run of
    MH_TALLY entries that holds it instead of at the start."""
    start, tally = 0, binding.LIB.MH_TALLY
    if tallies is not None:
        before = torch.cumsum(tallies, 0)
        run = int(torch.searchsorted(before, rank, right=True))  # the first run whose tally passes rank
        if run >= before.numel():
            return base.numel()
        if run:
            start, rank = run * tally, rank - int(before[run - 1])
    return check(binding.LIB.mh_magnitude_position(*tensor_ref(x), *tensor_ref(base), base.numel(), pattern,
                                                   rank, start))


def delta_topk_rule(x: torch.Tensor, base: torch.Tensor, k: int) -> TopKRule:
    """The rule keeping the k largest |x − base| (flat CPU tensors, 1 ≤ k < numel), through the
    kernels; the same rule as ``selection.topk_rule``.

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
        return TopKRule(float32_of(t.pattern), cut)

    [guess] = _sampled_guesses(x, base, [k])
    if guess.pattern >> 16:  # bin 0 (zeros, subnormals): the zero shortcut below
        [found] = _try_guesses(x, base, [k], [guess])
        if found is not None and found.pattern >> 16:
            return rule(found, k - found.above)

    def pick_in_bin(key: int, need: int) -> TopKRule:
        low_hist = magnitude_low_histogram(x, base, key)
        low, above = bin_from_top(low_hist, need)
        return rule(_Threshold((key << 16) | low, k - need + above, int(low_hist[low])), need - above)

    def count_nonzero() -> int:
        return sum(int(torch.count_nonzero(x[a:b].float() - base[a:b].float())) for a, b in tiles(n))

    return rule_from_histogram(n, k, magnitude_histogram(x, base), pick_in_bin, count_nonzero)


def delta_outside_smallest(x: torch.Tensor, base: torch.Tensor,
                           ranks: list[int]) -> list[tuple[float, float, int]]:
    """For each r in ``ranks`` (1 ≤ r < numel; at most two), levels (λ before cut, λ from cut on,
    cut) such that |x − base| > λ holds exactly for the entries *not* among the r smallest
    (``selection.smallest_mask``'s tie rule: the ties at the threshold that are among the r
    smallest come first in flat order). Through the kernels, like ``delta_topk_rule``; breadcrumbs keeps
    and drops with two of these, found together: one sample, one counting pass for both guesses
    (and their brackets), and at most one histogram of the top 16 bits."""
    n = base.numel()
    levels = []
    for t, r in zip(_delta_kth_largest(x, base, [n - r + 1 for r in ranks]), ranks):
        ties_inside = r - (n - t.above - t.equal)  # ties at the threshold among the r smallest, ≥ 1
        cut = n if ties_inside == t.equal else t.tie_position(x, base, ties_inside)
        threshold = TopKRule(float32_of(t.pattern), cut)
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
        return magnitude_position(x, base, self.pattern, rank, self.tallies)


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
        hist = magnitude_histogram(x, base)
        for i, k in enumerate(ks):
            if found[i] is None:
                key, above = bin_from_top(hist, k)
                low_hist = magnitude_low_histogram(x, base, key)
                low, above_in_bin = bin_from_top(low_hist, k - above)
                found[i] = _Threshold((key << 16) | low, above + above_in_bin, int(low_hist[low]))
    return found


def _try_guesses(x: torch.Tensor, base: torch.Tensor, ks: list[int],
                 guesses: list[_Guess]) -> list[_Threshold | None]:
    """One counting pass: each guess confirmed (#above < k ≤ #above + #equal), or the exact
    value found among the entries its bracket collected; None where neither holds."""
    counts, tallies, collected = magnitude_count(x, base, [g.pattern for g in guesses],
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
