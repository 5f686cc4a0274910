"""Exact-k selection: counts, the tie rule, and the sampled fast path against kthvalue."""

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
