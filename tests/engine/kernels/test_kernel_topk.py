"""The kernels' exact top-k of |x − base| (kernels/topk.py) finds the torch statement's rules
(operators/selection.py): TIES's magnitude rule and breadcrumbs' two cuts, whether a sampled
guess holds, its bracket holds the value, or the two histograms find it."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import family, needs_kernels

from mergehub.engine.kernels import binding, topk
from mergehub.engine.operators import generalized, selection
from mergehub.engine.operators.sparsify import magnitude_count

pytestmark = needs_kernels


def kernel_rule(x, base, density):
    n = base.numel()
    k = magnitude_count(density, n)
    return topk.delta_topk_rule(x, base, k) if k < n else None


def torch_rule(x, base, density):
    return generalized._magnitude_rule(x.float(), base.float(), density, None)


@pytest.mark.parametrize("density", [0.05, 0.5, 0.95])
@pytest.mark.parametrize("quantised", [False, True])
def test_the_rule_is_the_torch_rule(density, quantised):
    base, xs = family(200_003, 1, seed=7, quantised=quantised)
    assert kernel_rule(xs[0], base, density) == torch_rule(xs[0], base, density)


def _spy_histograms(monkeypatch) -> list:
    calls, real = [], topk.magnitude_histogram
    monkeypatch.setattr(topk, "magnitude_histogram", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("guess", ["sampled", "wrong", "zero"])
@pytest.mark.parametrize("density", [0.05, 0.5, 0.95])
def test_both_routes_to_the_rule_agree(monkeypatch, guess, density):
    """A confirmed sample guess, and the two histograms when the guess is refuted (or is 0,
    which leaves the zero shortcut to rule_from_histogram), give the torch rule."""
    base, xs = family(200_003, 1, seed=11, quantised=True)
    histograms = _spy_histograms(monkeypatch)
    if guess != "sampled":
        pattern = 0x3F800000 if guess == "wrong" else 0  # |δ| = 1.0 is far above any of these deltas
        monkeypatch.setattr(topk, "_sampled_guesses", lambda x, base, ks: [topk._Guess(pattern, None)] * len(ks))
    rule = kernel_rule(xs[0], base, density)
    assert rule == torch_rule(xs[0], base, density)
    # bf16 deltas: the sample lands in the run of ties, unless the k-th largest is 0
    assert bool(histograms) == (guess != "sampled" or rule.threshold == 0)


def test_the_counting_pass_tallies_ties_where_they_are():
    """magnitude_count's per-run tallies let magnitude_position start next to the tie it looks
    for: the same position as a scan from the start, for ties in every run of MH_TALLY entries."""
    tally = binding.LIB.MH_TALLY
    base, xs = family(5 * tally + 123, 1, seed=5, quantised=True)
    delta = (xs[0].float() - base.float()).abs()
    pattern = int(torch.mode(delta[delta > 0]).values.view(torch.int32))  # the commonest non-zero |δ|
    [(above, equal)], tallies, collected = topk.magnitude_count(xs[0], base, [pattern])
    ties = (delta.view(torch.int32) == pattern).nonzero().squeeze(1)
    assert (above, equal) == (int((delta.view(torch.int32) > pattern).sum()), ties.numel())
    assert collected == [None] and tallies.shape == (1, 6) and int(tallies.sum()) == equal
    assert all(int(t) > 0 for t in tallies[0])  # ties in every run, the last one short
    for rank in [0, 1, int(tallies[0, 0]) - 1, int(tallies[0, 0]), equal // 2, equal - 1, equal]:
        expected = int(ties[rank]) if rank < equal else base.numel()
        assert topk.magnitude_position(xs[0], base, pattern, rank, tallies[0]) == expected
        assert topk.magnitude_position(xs[0], base, pattern, rank) == expected


def test_the_counting_pass_counts_two_thresholds_and_collects_their_brackets():
    base, xs = family(300_007, 1, seed=6, quantised=True)
    bits = (xs[0].float() - base.float()).abs().view(torch.int32)
    patterns = [int(bits[10]), int(bits[20_000])]
    ordered = bits.sort().values
    lo, hi = int(ordered[1000]), int(ordered[5000])
    inside = (bits >= lo) & (bits <= hi)
    counts, tallies, collected = topk.magnitude_count(
        xs[0], base, patterns, [(lo, hi, int(inside.sum())), (lo, hi, int(inside.sum()) - 1)])
    assert counts == [(int((bits > p).sum()), int((bits == p).sum())) for p in patterns]
    assert tallies.sum(1).tolist() == [c[1] for c in counts]
    assert collected[0].keys.tolist() == bits[inside].tolist()
    assert collected[0].positions.tolist() == inside.nonzero().squeeze(1).tolist()
    assert collected[0].above == int((bits > hi).sum())
    assert collected[1] is None  # one entry more than it had room for


def _guesses_around(delta: torch.Tensor, ranks: list[int], where: str) -> list:
    """Guesses for the k-th largest of ``delta`` (k = n − r + 1) that are wrong, with a bracket
    that holds the true value, misses it, or has too little room."""
    n = delta.numel()
    bits = delta.view(torch.int32).sort(descending=True).values
    guesses = []
    for r in ranks:
        k = n - r + 1
        centre = k if where == "holds" else k + 5000  # "misses": a bracket wholly below the k-th largest
        hi, lo = int(bits[max(0, centre - 2000)]), int(bits[min(n - 1, centre + 2000)])
        room = 16 if where == "too small" else n
        guesses.append(topk._Guess(0x3F800000, (lo, hi, room)))  # |δ| = 1.0: far above these deltas
    return guesses


@pytest.mark.parametrize("guess", ["sampled", "wrong, no bracket", "wrong, bracket holds", "wrong, bracket misses",
                                   "wrong, bracket too small"])
def test_breadcrumbs_cuts_found_together_are_the_cuts_found_alone(monkeypatch, guess):
    """Both of breadcrumbs' cuts come from shared passes (one sample, one counting pass, at most
    one histogram); each equals the cut found alone and keeps exactly the torch tie rule's set."""
    base, xs = family(200_003, 1, seed=7, quantised=True)
    n = base.numel()
    delta = (xs[0].float() - base.float()).abs()
    ranks = [int(0.49 * n), int(0.99 * n)]
    histograms = _spy_histograms(monkeypatch)
    if guess == "wrong, no bracket":
        monkeypatch.setattr(topk, "_sampled_guesses", lambda x, b, ks: [topk._Guess(0x3F800000, None)] * len(ks))
    elif guess != "sampled":
        where = guess.split("bracket ")[1]
        monkeypatch.setattr(topk, "_sampled_guesses",
                            lambda x, b, ks: _guesses_around(delta, [n - k + 1 for k in ks], where))
    together = topk.delta_outside_smallest(xs[0], base, ranks)
    if guess != "sampled":  # (a sampled guess may fail and fall back too)
        assert bool(histograms) == (guess in ("wrong, no bracket", "wrong, bracket misses", "wrong, bracket too small"))
    assert together == [topk.delta_outside_smallest(xs[0], base, [r])[0] for r in ranks]
    for (before, after, cut), r in zip(together, ranks):
        outside = torch.cat([delta[:cut] > before, delta[cut:] > after])
        assert torch.equal(~outside, selection.smallest_mask(delta, r))


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5])  # (a k-th largest in bin 0, zeros, takes the histograms)
def test_the_rule_from_a_bracket_is_the_torch_rule(monkeypatch, density):
    base, xs = family(200_003, 1, seed=12, quantised=True)
    delta = (xs[0].float() - base.float()).abs()
    n = base.numel()
    monkeypatch.setattr(topk, "_sampled_guesses",
                        lambda x, b, ks: _guesses_around(delta, [n - k + 1 for k in ks], "holds"))
    monkeypatch.setattr(topk, "magnitude_histogram", None)  # the bracket must suffice
    rule = kernel_rule(xs[0], base, density)
    monkeypatch.undo()
    assert rule == torch_rule(xs[0], base, density)


def test_the_rule_when_the_kth_largest_is_zero():
    # an expert read in part: most of its delta is exactly zero, so the k-th largest is 0
    base, xs = family(50_000, 1, seed=2, quantised=True)
    x = base.clone()
    x[:1000] = xs[0][:1000]
    for density in (0.01, 0.5):
        assert kernel_rule(x, base, density) == torch_rule(x, base, density)
