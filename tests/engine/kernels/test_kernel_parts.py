"""The kernels' building blocks against the torch statements' own: the exact L1 slots behind
the rescale (operators/exact_sum.py), the random stream's draws (operators/random_stream.py)
kept as bits by the rescale pass, DELLA's masks, a mask on top of magnitude levels, and SCE's
histogram of its variances (operators/selection.py's topk_rule)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kernel_helpers import family, needs_kernels, same_sum

from mergehub.engine.kernels import binding
from mergehub.engine.kernels import family as fk
from mergehub.engine.kernels import sce as sce_kernel
from mergehub.engine.operators import exact_sum as es
from mergehub.engine.operators import random_stream, selection
from mergehub.engine.operators.selection import rule_from_histogram, rule_in_bin
from mergehub.engine.operators.sparsify import della_probabilities

pytestmark = needs_kernels


def spec(x, weight=1.0, **rule):
    return fk.model_spec(binding.FFI.new("mh_model *"), x, weight, **rule)


def test_the_kernel_describes_the_same_l1_sums():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(100_003, generator=g).bfloat16()
    x = (base.float() + 0.01 * torch.randn(100_003, generator=g)).bfloat16()
    delta = x.float() - base.float()
    before, after = fk.prune_sums(base, spec(x))  # keeps everything
    assert same_sum(before, es.exponent_sums(delta)) and same_sum(after, before)
    before, after = fk.prune_sums(base, spec(x, threshold=0))  # keeps nothing (random drop at density 0)
    assert same_sum(before, es.exponent_sums(delta)) and not any(after)


def test_the_kernel_sums_whatever_a_chunks_exponent_span():
    """mh_prune_sums adds a chunk of 1024 as one integer when its exponents span at most 29
    binades, else per exponent (wider spans, Inf): both give the exact sums."""
    g = torch.Generator().manual_seed(3)
    base = torch.zeros(5000)
    delta = 0.01 * torch.randn(5000, generator=g)
    delta[1024:2048:5] = 1e-30  # a chunk spanning ~80 binades
    delta[2048:3072:3] *= 1e-36  # subnormals among normals
    delta[3100] = math.inf
    delta[4096:] = 0.0
    x = base + delta
    before, after = fk.prune_sums(base, spec(x, key=(3, 4), offset=0, threshold=1 << 23))  # draws below 2^23
    keep = random_stream.draws24((3, 4), 0, 5000) < (1 << 23)
    assert 0 < int(keep.sum()) < 5000
    assert same_sum(before, es.exponent_sums(delta))
    assert same_sum(after, es.exponent_sums(torch.where(keep, delta, 0.0)))


def test_della_masks_l1_sums_are_exact_whatever_a_rows_exponent_span():
    """mh_della_mask sums a row's kept and dropped |δ| as one 64-bit integer when the row's
    exponents span few enough binades, else per exponent (wide spans, Inf); either way the
    slots must describe the exact sums of the entries the mask keeps and drops."""
    width = 1031
    g = torch.Generator().manual_seed(5)
    base = torch.randn(8, width, generator=g)
    delta = 0.01 * torch.randn(8, width, generator=g)
    base[1, ::7] = base[2] = 0.0  # so that x − base gives back the tiny δ below exactly
    delta[1, ::7] = 1e-30  # 80 binades below the rest: per exponent
    delta[2] *= 1e-36  # subnormal |δ| (exponent 0) mixed with the smallest normal ones
    delta[3] = 0.0
    delta[4, 5] = math.inf
    delta[5, :500] = 0.0
    delta[6, 3] = 2.0 ** 100  # a span of about 110 binades
    delta[7] = delta[7].sign() * 2.0 ** -20  # one key: a span of 0
    x = base + delta
    real = x - base  # δ as float32 computes it (base + δ − base need not be δ)
    mask = torch.empty(-(-base.numel() // 8), dtype=torch.uint8)
    probs = della_probabilities(0.5, 0.15, width)
    (before, kept), = fk.della_masks(base.view(-1), [(x.view(-1), 0, (7, 11), probs, mask)], width, True)
    keep = torch.from_numpy(np.unpackbits(mask.numpy(), bitorder="little")[:base.numel()].copy())
    keep = keep.view(8, width).bool()
    assert 0 < keep.sum() < base.numel()
    assert same_sum(before, es.exponent_sums(real))
    assert same_sum(kept, es.exponent_sums(torch.where(keep, real, 0.0)))


@pytest.mark.parametrize("n", [5, 16, 1000, 1037, 4099])  # under a word, one word, chunks with a partial tail
@pytest.mark.parametrize("density", [0.3, 1.0])  # draws, or none (every bit set)
def test_the_rescale_pass_keeps_the_bits_the_draws_give(n, density):
    """DARE's rescale pass (mh_prune_sums) records each entry's draw as a bit, which the combine
    reads instead of drawing again: bit j must be u24 < threshold for entry offset + j (the torch
    stream's draws), and the unused bits of the last byte 0, whatever the buffer held."""
    base, (x,) = family(n, 1, seed=n, quantised=False)
    key, offset, threshold = (3, 9), 2**32 - 40, random_stream.keep_threshold(density)  # crosses 2^32
    drawn = torch.full((-(-n // 8),), 0xFF, dtype=torch.uint8)
    fk.prune_sums(base, spec(x, key=key, offset=offset, threshold=threshold), drawn)
    bits = torch.from_numpy(np.unpackbits(drawn.numpy(), bitorder="little").copy())
    assert torch.equal(bits[:n].bool(), random_stream.draws24(key, offset, n) < threshold)
    assert not bits[n:].any()


@pytest.mark.parametrize("with_level", [False, True])  # the mask alone, or the mask and a magnitude level
def test_a_mask_drops_on_top_of_the_levels(monkeypatch, with_level):
    """A spec with a mask keeps an entry where its bit is set and the levels keep it too (the
    mask alone takes a shortcut), over thread spans that start inside a mask byte."""
    monkeypatch.setattr(binding, "MIN_SPLIT", 1000)
    n = 10_007
    base, (x,) = family(n, 1, seed=8, quantised=False)
    keep = torch.rand(n, generator=torch.Generator().manual_seed(9)) < 0.6
    mask = torch.from_numpy(np.packbits(keep.numpy(), bitorder="little"))
    delta = x - base
    level = delta.abs().median().item() if with_level else -math.inf  # drops about half
    specs = binding.FFI.new("mh_model[]", 1)
    fk.model_spec(specs[0], x, 0.7, keep=(level, level, 0), mask=mask)
    out = fk.family_combine(base, specs, False, False, 1.0, torch.empty_like(base), sum_divisor=1.0)
    kept = torch.where(keep & (delta.abs() > level), delta, torch.zeros(()))
    assert torch.equal(out, kept * 0.7 + base)


def test_the_kernel_draws_the_stream_past_the_32_bit_boundary():
    """One expert, DARE without rescale, its slice starting 500 entries before index 2^32:
    out = base + kept δ·w with kept exactly where the torch draws are below the threshold."""
    n, offset, density = 1000, (1 << 32) - 500, 0.4
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, generator=g)
    x = base + torch.randn(n, generator=g)
    key = random_stream.stream_key(5, "w", 0)
    specs = binding.FFI.new("mh_model[]", 1)
    fk.model_spec(specs[0], x, 0.5, key=key, offset=offset, threshold=random_stream.keep_threshold(density))
    out = fk.family_combine(base, specs, False, False, 1.0, torch.empty_like(base), sum_divisor=1.0)
    kept = random_stream.draws24(key, offset, n) < random_stream.keep_threshold(density)
    assert torch.equal(out, torch.where(kept, x - base, torch.zeros_like(base)) * 0.5 + base)


@pytest.mark.parametrize("kind", ["random", "ties", "zeros_and_subnormals", "all_equal", "every_exponent"])
def test_the_rule_from_the_kernels_histogram_is_topk_rules(kind):
    """SCE's rule from the kernels' histogram of its variances (and their positions in the
    chosen bin) is selection.topk_rule's threshold and cut."""
    g = torch.Generator().manual_seed(len(kind))
    n = 70_001
    values = {"random": lambda: torch.rand(n, generator=g),
              "ties": lambda: torch.randint(0, 9, (n,), generator=g).float() * 0.37,
              "zeros_and_subnormals": lambda: torch.where(torch.rand(n, generator=g) < 0.8, 0.0,
                                                          torch.randint(1, 40, (n,), generator=g).float() * 1e-44),
              "all_equal": lambda: torch.full((n,), 0.5),
              "every_exponent": lambda: torch.exp(torch.randn(n, generator=g) * 30).clamp(max=3e38)}[kind]()
    hist, nonzero = sce_kernel.value_histogram(values)
    assert nonzero == int(torch.count_nonzero(values))
    assert torch.equal(hist, torch.bincount(values.view(torch.int32) >> 16, minlength=selection.KEY_BINS))

    def pick_in_bin(key: int, need: int):
        positions = sce_kernel.value_positions(values, key, int(hist[key]))
        return rule_in_bin(n, positions, values[positions], need)

    for k in (1, 17, n // 10, n // 2, n - 1):
        fast = rule_from_histogram(n, k, hist, pick_in_bin, lambda: nonzero)
        slow = selection.topk_rule(n, k, lambda a, b: values[a:b], lambda at: values[at])
        assert (fast.threshold, fast.cut) == (slow.threshold, slow.cut), k


def test_the_kernels_histogram_refuses_a_sign_bit():
    """−0 or a negative NaN would be a negative bin in topk_rule's torch bincount: the kernel
    says so (None) and SCE's rule comes from the torch statement, which handles it as before."""
    values = torch.rand(1000)
    values[500] = -0.0
    assert sce_kernel.value_histogram(values) is None
    values[500] = 0.0
    assert sce_kernel.value_histogram(values)[1] == 999
