"""Exact-k selection: counts, the tie rule, the sampled fast path against kthvalue, and the
same rule found over a tensor seen in pieces (StreamedTopK)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergehub.engine.operators import selection
from mergehub.engine.operators.selection import kth_smallest, largest_mask, smallest_mask


def stable_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    flat = values.reshape(-1).numpy()
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argsort(-flat, kind="stable")[:max(k, 0)]] = True
    return torch.from_numpy(mask).reshape(values.shape)


def stable_smallest(values: torch.Tensor, r: int) -> torch.Tensor:
    flat = values.reshape(-1).numpy()
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argsort(flat, kind="stable")[:max(r, 0)]] = True
    return torch.from_numpy(mask).reshape(values.shape)


@pytest.mark.parametrize("n", [1, 7, 50, 1000])
@pytest.mark.parametrize("levels", [3, 1000000])  # heavy ties / almost none
def test_masks_match_a_stable_sort(n, levels):
    g = torch.Generator().manual_seed(n + levels)
    values = torch.randint(0, levels, (n,), generator=g).float().reshape(-1, 1)
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n, n + 5}):
        assert torch.equal(largest_mask(values, k), stable_largest(values, k)), k
        assert torch.equal(smallest_mask(values, k), stable_smallest(values, k)), k


@pytest.mark.parametrize("kind", ["random", "ties", "adversarial", "sorted"])
def test_kth_smallest_on_large_tensors(kind):
    n = (1 << 18) + 12345  # above the sampling threshold
    g = torch.Generator().manual_seed(5)
    if kind == "random":
        values = torch.randn(n, generator=g)
    elif kind == "ties":
        values = torch.randint(0, 5, (n,), generator=g).float()
    elif kind == "sorted":
        values = torch.arange(n, dtype=torch.float32).flip(0)
    else:  # the strided sample sees only large values: the bracket misses, fallback path
        values = torch.zeros(n)
        values[:: n // selection._SAMPLE] = 1.0
    ordered = torch.sort(values).values
    for r in [1, 17, n // 4, n // 2, n - 3, n]:
        assert kth_smallest(values, r) == ordered[r - 1], r


def test_large_mask_counts_are_exact_with_ties():
    n = (1 << 18) + 3
    values = (torch.arange(n) % 7).float()
    for k in [1, 1000, n // 2, n - 1]:
        mask = largest_mask(values, k)
        assert int(mask.sum()) == k
        assert torch.equal(mask, stable_largest(values, k))


def test_rank_out_of_range_is_an_error():
    with pytest.raises(ValueError):
        kth_smallest(torch.zeros(3), 4)


def assert_same_top_k(mask: torch.Tensor, values: torch.Tensor, k: int) -> None:
    """The rule's mask is the stable top-k mask on every non-zero value; it may keep zeros the
    top k leaves out (for pruning, a kept zero and a dropped one are the same)."""
    expected = stable_largest(values, k)
    nonzero = values != 0
    assert torch.equal(mask[nonzero], expected[nonzero]), k
    if not (values[expected] == 0).any() and k < int(nonzero.sum()):
        assert int(mask.sum()) == k


def _rule_mask(values: torch.Tensor, k: int, tile: int) -> torch.Tensor:
    """The rule found by the streaming pass (values read ``tile`` at a time), as a mask: keep
    v > threshold, and v == threshold at flat positions before ``cut``."""
    flat = values.reshape(-1)
    rule = selection.topk_rule(flat.numel(), k, lambda a, b: flat[a:b], lambda at: flat[at], tile)
    before_cut = torch.arange(flat.numel()) < rule.cut
    mask = (flat > rule.threshold) | ((flat == rule.threshold) & before_cut)
    return mask.reshape(values.shape)


@pytest.mark.parametrize("n", [2, 7, 50, 1000, 5000])
@pytest.mark.parametrize("levels", [2, 3, 40, 1000000])  # ties at the threshold, or almost none
@pytest.mark.parametrize("tile", [1, 16, 333, 1 << 20])
def test_streaming_top_k_rule_matches_a_stable_sort(n, levels, tile):
    g = torch.Generator().manual_seed(n * 7 + levels)
    values = torch.randint(0, levels, (n,), generator=g).float() * 0.37
    for k in {1, n // 3, n // 2, n - 1} - {0}:
        assert_same_top_k(_rule_mask(values, k, tile), values, k)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_streaming_top_k_rule_in_other_dtypes(dtype):
    """Bins come from float32 rounding (monotone); the final choice uses the exact values."""
    g = torch.Generator().manual_seed(3)
    values = torch.randn(4000, generator=g, dtype=torch.float64).abs().to(dtype)
    values[::7] = values[1]  # plenty of exact ties
    for k in (1, 999, 2000, 3999):
        assert_same_top_k(_rule_mask(values, k, 256), values.double(), k)


@pytest.mark.parametrize("tile", [64, 1 << 20])
def test_pruning_with_the_rule_equals_masking_with_the_top_k(tile):
    """prune() (hardshrink on signed deltas) keeps exactly what the top-k mask of |δ| keeps,
    including when the k largest run into zeros (an expert read in part under a budget)."""
    g = torch.Generator().manual_seed(tile)
    delta = torch.randn(3000, generator=g)
    delta[::3] = 0.0
    delta[5::7] = delta[4]  # ties at many magnitudes, both signs
    delta[6::7] = -delta[4]
    for k in (1, 700, 1500, 1999, 2000, 2001, 2500, 2999):
        rule = selection.topk_rule(delta.numel(), k, lambda a, b: delta[a:b].abs(), lambda at: delta[at].abs())
        pruned = torch.cat([rule.prune(delta[a:b].clone(), a) for a, b in selection.tiles(delta.numel(), tile)])
        assert torch.equal(pruned, delta * stable_largest(delta.abs(), k)), k


def test_streaming_top_k_rule_values_spanning_every_exponent():
    g = torch.Generator().manual_seed(4)
    values = torch.exp(torch.randn(20000, generator=g) * 30).clamp(max=3e38)
    values[:5] = 0.0
    for k in (1, 10, 10000, 19999):
        assert_same_top_k(_rule_mask(values, k, 4096), values, k)


def test_streaming_top_k_rule_among_zeros_and_subnormals():
    """Bin 0 of the histogram holds zeros and the tiniest subnormals: when the k-th largest
    lies there, subnormals must still be ranked exactly, zeros need not be."""
    g = torch.Generator().manual_seed(5)
    values = torch.zeros(5000)
    values[:300] = torch.randint(1, 40, (300,), generator=g).float() * 1e-44  # subnormals < 2^-133
    values[300:400] = torch.rand(100, generator=g) + 0.5
    values = values[torch.randperm(5000, generator=g)]
    for k in (50, 100, 150, 250, 399, 400, 401, 4000):
        assert_same_top_k(_rule_mask(values, k, 512), values, k)


@pytest.mark.parametrize("kind", ["normal", "ties", "signed_zeros_and_specials"])
def test_smallest_values_are_what_sorting_gives(kind):
    from mergehub.engine.operators.selection import smallest_values

    g = torch.Generator().manual_seed(7)
    n = 600_000
    if kind == "normal":
        values = torch.randn(n, generator=g) * torch.rand(n, generator=g)
    elif kind == "ties":
        values = torch.randint(-3, 4, (n,), generator=g).float() * 0.125
    else:
        values = torch.randn(n, generator=g)
        values[:1000] = 0.0
        values[1000:2000] = -0.0
        values[2000:2010] = float("inf")
        values[2010:2020] = float("-inf")
        values[2020:2030] = float("nan")
    ranks = [1, 2, n // 4, n // 2, 3 * n // 4, n - 15, n]
    ordered = torch.sort(values).values
    for r, got in zip(ranks, smallest_values(values, ranks)):
        want = ordered[r - 1]
        assert (torch.isnan(got) and torch.isnan(want)) or got.item() == want.item(), (r, got, want)


@pytest.mark.parametrize("values", ["distinct", "ties", "mostly_zero"])
def test_streamed_top_k_is_topk_rule(values):
    """Pieces of any size give the rule ``topk_rule`` finds on the whole, tie cut included."""
    gen = torch.Generator().manual_seed(0)
    n = 5000
    if values == "distinct":
        v = torch.rand(n, generator=gen)
    elif values == "ties":
        v = torch.randint(0, 7, (n,), generator=gen).float()
    else:
        v = torch.zeros(n)
        v[torch.randperm(n, generator=gen)[:300]] = torch.rand(300, generator=gen)
    for k in (1, 17, 250, 299, 300, 301, 2500, n - 1):
        expected = selection.topk_rule(n, k, lambda a, b: v[a:b], lambda at: v[at])
        for piece in (n, 999, 64):
            rules = _streamed(v, k, piece)
            assert rules[-1][1] == expected, (values, k, piece)
            for (a, b), rule in rules:  # each piece's rule keeps what the whole tensor's keeps there
                assert torch.equal(_kept(rule, v, a, b), _kept(expected, v, a, b)), (values, k, piece, a)


def _kept(rule: selection.TopKRule, v: torch.Tensor, a: int, b: int) -> torch.Tensor:
    at = torch.arange(a, b)
    return (v[a:b] > rule.threshold) | ((v[a:b] == rule.threshold) & (at < rule.cut))


def _streamed(v: torch.Tensor, k: int, piece: int) -> list[tuple[tuple[int, int], selection.TopKRule]]:
    """Each piece with the rule ``StreamedTopK`` gives it, pieces counted twice then asked in order."""
    top = selection.StreamedTopK(v.numel(), k)
    pieces = list(selection.tiles(v.numel(), piece))
    patterns = [v[a:b].view(torch.int32).long() for a, b in pieces]
    for p in patterns:
        top.add_top(torch.bincount(p >> 16, minlength=selection.KEY_BINS))
    top.end_top()
    for p in patterns:
        inside = p[(p >> 16) == top.key] & 0xFFFF
        top.add_low(torch.bincount(inside, minlength=selection.LOW_BINS), int(torch.count_nonzero(p)))
    top.end_low()
    return [((a, b), top.rule_for(a, lambda pattern, p=p: int((p == pattern).sum()),
                                  lambda pattern, rank, p=p: int((p == pattern).nonzero()[rank])))
            for (a, b), p in zip(pieces, patterns)]
