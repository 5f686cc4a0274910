"""The compiled loops (mergehub/engine/native) give the torch path's bits: the task-arithmetic
family with and without rescale (ties, dare_*, breadcrumbs*, della*), RAM, RAM+, SCE, linear,
nearswap and arcee_fusion. (The span.py passes and the random stream have their own tests
beside their modules.)

Each test runs the same merge twice: through the loops, and with ``native.supports`` patched
to refuse so the torch path runs; torch.equal must hold (finite inputs)."""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "operators"))
from operator_refs import make_ctx, make_params, same_sum  # noqa: E402

from mergehub.engine import native  # noqa: E402
from mergehub.engine.operators import arcee_fusion, generalized, linear, random_stream, selection  # noqa: E402
from mergehub.engine.operators.base import MergeContext  # noqa: E402
from mergehub.engine.operators.registry import get_operator  # noqa: E402

if os.environ.get("MERGEHUB_NATIVE") == "0":
    pytest.skip("MERGEHUB_NATIVE=0: the compiled loops are switched off", allow_module_level=True)


needs_loops = pytest.mark.skipif(not native.available(), reason="the compiled loops are not built (see below)")


def test_the_loops_are_built():
    # `pip install -e .` builds them (setup.py) with the C compiler; where there is one, a
    # missing library means the build failed and TIES silently runs its slower torch path.
    if not native.available() and not shutil.which("cc"):
        pytest.skip("no C compiler (cc): the compiled loops were not built; the engine runs its torch path")
    assert native.available(), "mergehub/engine/native/_loops*.so is missing: rerun pip install -e . and read its errors"


def spy(monkeypatch, name: str) -> list:
    """Calls of the loops' wrapper ``native.<name>`` (so a test knows the loops really ran)."""
    calls, real = [], getattr(native, name)
    monkeypatch.setattr(native, name, lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    return calls


def torch_path(fn, *args):
    """fn(*args) with the compiled loops refused, so the torch path runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "supports", lambda *tensors: False)
        return fn(*args)


def family(n: int, experts: int, seed: int, quantised: bool, scale: float = 0.01):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g)
    xs = [base + scale * torch.randn(n, generator=g) for _ in range(experts)]
    if quantised:  # bf16 checkpoints: |δ| takes few distinct values, so the top-k cut falls in ties
        return base.bfloat16(), [x.bfloat16() for x in xs]
    return base, xs


MODELS = [
    ({}, [{"weight": 1.0, "density": 0.5}, {"weight": 0.6, "density": 0.3}, {"weight": 0.8, "density": 0.9}]),
    ({"normalize": False, "lambda": 0.7},
     [{"weight": -0.5, "density": 0.2}, {"weight": 1.0, "density": 1.0}, {"weight": 0.3, "density": 0.0}]),
    ({"lambda": 1.3}, [{"weight": 0.0, "density": 0.4}, {"weight": 2.0, "density": 0.01}, {"weight": 1.0, "density": 0.999}]),
]


NATIVE_METHODS = ["ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties"]
RESCALE = [None, True, False]  # the method's default, or forced


@needs_loops
@pytest.mark.parametrize("method", NATIVE_METHODS)
@pytest.mark.parametrize("rescale", RESCALE)
@pytest.mark.parametrize("shared, models", MODELS)
@pytest.mark.parametrize("n", [1, 1000, 1025, 300_007])  # one element, under/over a chunk, split over threads
@pytest.mark.parametrize("quantised", [False, True])
def test_the_loops_equal_the_torch_path(monkeypatch, method, rescale, shared, models, n, quantised):
    base, xs = family(n, 3, seed=n, quantised=quantised)
    shape = (n,)
    work_base = base.float()
    shared = shared if rescale is None else {**shared, "rescale": rescale}
    if method in ("dare_linear", "breadcrumbs"):
        # the plain sum divided by Σ w of every model, pruned-away (density 0) and weight-0 ones
        # included (non-normalised plain sums: della_linear and task arithmetic below)
        shared = {**shared, "normalize": True}
    p = make_params(method, 3, shared, models)
    op = get_operator(method)
    ran = spy(monkeypatch, "family_combine")
    out = op.merge(work_base, xs, p, make_ctx(shape))
    assert ran
    ref = torch_path(op.merge, work_base, xs, p, make_ctx(shape))
    assert torch.equal(out, ref)


@needs_loops
@pytest.mark.parametrize("method", ["ties", "dare_ties"])
@pytest.mark.parametrize("quantised", [False, True])
def test_more_models_than_the_loops_sum_in_one_group(monkeypatch, method, quantised):
    """loops.c sums the consensus of up to GROUP (8) models in registers; 11 models take two
    groups, and the sums must be the same float additions in model order as the torch path's."""
    k = 11
    base, xs = family(1025, k, seed=k, quantised=quantised)
    models = [{"weight": w, "density": d} for w, d in zip([1.0, 0.6, -0.5, 0.0, 2.0, 0.3, 0.8, 1.2, -0.1, 0.9, 0.4],
                                                            [0.5, 0.3, 0.9, 0.4, 1.0, 0.0, 0.7, 0.2, 0.6, 0.99, 0.05])]
    p = make_params(method, k, {}, models)
    op = get_operator(method)
    ran = spy(monkeypatch, "family_combine")
    out = op.merge(base.float(), xs, p, make_ctx((1025,)))
    assert ran
    assert torch.equal(out, torch_path(op.merge, base.float(), xs, p, make_ctx((1025,))))


DELLA_MODELS = [{"weight": 1.0, "density": 0.5, "epsilon": 0.15}, {"weight": 0.6, "density": 0.3, "epsilon": 0.2},
                {"weight": -0.4, "density": 0.9, "epsilon": 0.05}]


@needs_loops
@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize("rescale", RESCALE)
@pytest.mark.parametrize("shape", [(300_007,), (37, 1031), (5, 2), (3, 1)])  # one row, rows, narrowest, torch's
@pytest.mark.parametrize("quantised", [False, True])
def test_della_through_the_loops_equals_the_torch_path(monkeypatch, method, rescale, shape, quantised):
    base, xs = family(math.prod(shape), 3, seed=len(shape), quantised=quantised)
    base, xs = base.float().view(shape), [x.view(shape) for x in xs]
    shared = {} if rescale is None else {"rescale": rescale}
    p = make_params(method, 3, shared, DELLA_MODELS)
    op = get_operator(method)
    ranked = []
    real = native.della_masks
    monkeypatch.setattr(native, "della_masks", lambda *a: ranked.append(1) or real(*a))
    out = op.merge(base, xs, p, make_ctx(shape))
    assert bool(ranked) == (shape[-1] > 1)  # a width-1 row stays in torch
    assert torch.equal(out, torch_path(op.merge, base, xs, p, make_ctx(shape)))


@needs_loops
@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_della_from_bfloat16_checkpoints_as_stored(monkeypatch, method):
    """Base and experts both in bfloat16 (the usual checkpoints): the loops take |δ| straight
    from the stored halves (magnitude_keys), and must still give the torch path's bits."""
    shape = (29, 1031)
    base, xs = family(math.prod(shape), 3, seed=8, quantised=True)
    base, xs = base.view(shape), [x.view(shape) for x in xs]
    p = make_params(method, 3, {}, DELLA_MODELS)
    op = get_operator(method)
    ranked = spy(monkeypatch, "della_masks")
    out = op.merge_stored(base, xs, p, make_ctx(shape), torch.float32, torch.bfloat16)
    assert out is not None and ranked
    ref = torch_path(op.merge, base.float(), xs, p, make_ctx(shape)).to(torch.bfloat16)
    assert torch.equal(out, ref)


@needs_loops
def test_della_masks_l1_sums_are_exact_whatever_a_rows_exponent_span():
    """mh_della_mask sums a row's kept and dropped |δ| as one 64-bit integer when the row's
    exponents span few enough binades, else per exponent (wide spans, Inf); either way the
    slots must describe the exact sums of the entries the mask keeps and drops."""

    from mergehub.engine.operators.exact_sum import exponent_sums
    from mergehub.engine.operators.sparsify import della_probabilities

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
    (before, kept), = native.della_masks(base.view(-1), [(x.view(-1), 0, (7, 11), probs, mask)], width, True)
    keep = torch.from_numpy(np.unpackbits(mask.numpy(), bitorder="little")[:base.numel()].copy())
    keep = keep.view(8, width).bool()
    assert 0 < keep.sum() < base.numel()

    assert same_sum(before, exponent_sums(real))
    assert same_sum(kept, exponent_sums(torch.where(keep, real, 0.0)))


@needs_loops
@pytest.mark.parametrize("n", [5, 16, 1000, 1037, 4099])  # under a word, one word, chunks with a partial tail
@pytest.mark.parametrize("density", [0.3, 1.0])  # draws, or none (every bit set)
def test_the_rescale_pass_keeps_the_bits_the_draws_give(monkeypatch, n, density):
    """DARE's rescale pass (mh_prune_sums) records each entry's draw as a bit, which the combine
    reads instead of drawing again: bit j must be u24 < threshold for entry offset + j (the torch
    stream's draws), and the unused bits of the last byte 0, whatever the buffer held."""
    base, (x,) = family(n, 1, seed=n, quantised=False)
    key, offset, threshold = (3, 9), 2**32 - 40, random_stream.keep_threshold(density)  # crosses 2^32
    drawn = torch.full((-(-n // 8),), 0xFF, dtype=torch.uint8)
    native.prune_sums(base, native.model_spec(x, 1.0, key=key, offset=offset, threshold=threshold), drawn)
    bits = torch.from_numpy(np.unpackbits(drawn.numpy(), bitorder="little").copy())
    monkeypatch.setattr(native, "available", lambda: False)  # the torch stream, not the loops'
    expected = random_stream.draws24(key, offset, n) < threshold
    assert torch.equal(bits[:n].bool(), expected)
    assert not bits[n:].any()


@needs_loops
@pytest.mark.parametrize("with_level", [False, True])  # the mask alone, or the mask and a magnitude level
def test_a_mask_drops_on_top_of_the_levels(monkeypatch, with_level):
    """A spec with a mask keeps an entry where its bit is set and the levels keep it too (the
    mask alone takes a shortcut), over thread spans that start inside a mask byte."""
    monkeypatch.setattr(native, "_MIN_SPLIT", 1000)
    n = 10_007
    base, (x,) = family(n, 1, seed=8, quantised=False)
    g = torch.Generator().manual_seed(9)
    keep = torch.rand(n, generator=g) < 0.6
    mask = torch.from_numpy(np.packbits(keep.numpy(), bitorder="little"))
    delta = x - base
    level = delta.abs().median().item() if with_level else -math.inf  # drops about half
    spec = native.model_spec(x, 0.7, keep=(level, level, 0), mask=mask)
    out = native.family_combine(base, [spec], False, False, 1.0, torch.empty_like(base))
    kept = torch.where(keep & (delta.abs() > level), delta, torch.zeros(()))
    assert torch.equal(out, kept * 0.7 + base)


@needs_loops
@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della_linear"])
def test_random_drops_of_a_row_slice_are_the_whole_tensors(method):
    """Without rescale DARE is block-local: the loops, given rows 5-12 of a tensor, draw what
    the torch path draws for those rows of the whole tensor."""
    shape = (13, 1031)
    base, xs = family(shape[0] * shape[1], 2, seed=4, quantised=False)
    base, xs = base.view(shape), [x.view(shape) for x in xs]
    p = make_params(method, 2, {"rescale": False}, {"weight": 0.7, "density": 0.4})
    op = get_operator(method)
    assert op.block_local(p, 2)
    whole = torch_path(op.merge, base, xs, p, make_ctx(shape))
    part = op.merge(base[5:], [x[5:] for x in xs], p, make_ctx(shape, rows=(5, 13)))
    assert torch.equal(part, whole[5:])


@needs_loops
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("quantised", [False, True])
def test_merge_stored_reads_the_stored_dtype_and_rounds_like_torch(out_dtype, quantised):
    base, xs = family(70_001, 4, seed=3, quantised=quantised)
    p = make_params("ties", 4, {}, [{"weight": w, "density": d} for w, d in
                                    [(0.3, 0.5), (0.2, 0.7), (0.4, 0.3), (0.1, 0.5)]])
    op = get_operator("ties")
    ctx = MergeContext("w", 0, 0, 1, 1)
    out = op.merge_stored(base, xs, p, ctx, torch.float32, out_dtype)
    assert out is not None and out.dtype == out_dtype
    ref = torch_path(op.merge, base.float(), xs, p, make_ctx(base.shape)).to(out_dtype)
    assert torch.equal(out, ref)
    # an expert that was not read is passed as the base itself and adds nothing
    unread = op.merge_stored(base, [xs[0], base, xs[2], xs[3]], p, ctx, torch.float32, out_dtype)
    assert torch.equal(unread, torch_path(op.merge, base.float(), [xs[0], base.float(), xs[2], xs[3]], p,
                                          make_ctx(base.shape)).to(out_dtype))


@needs_loops
def test_merge_stored_declines_what_the_loops_do_not_cover():
    base, xs = family(100, 2, seed=1, quantised=False)
    op = get_operator("ties")
    p = make_params("ties", 2, {}, {"weight": 1.0, "density": 0.5})
    ctx = MergeContext("w", 0, 0, 1, 1)
    assert op.merge_stored(base, xs, p, ctx, torch.float64, torch.float32) is None  # work dtype
    assert op.merge_stored(base, xs, p, ctx, torch.float32, torch.float16) is None  # out dtype
    assert op.merge_stored(base.half(), [x.half() for x in xs], p, ctx, torch.float32, torch.float32) is None
    # a normalised plain sum is one fused pass too (0.2.4), with the torch path's bits
    normalised_sum = make_params("task_arithmetic", 2, {"normalize": True}, [{"weight": 0.7}, {"weight": 0.4}])
    task_arithmetic = get_operator("task_arithmetic")
    assert torch.equal(task_arithmetic.merge_stored(base, xs, normalised_sum, ctx, torch.float32, torch.float32),
                       torch_path(task_arithmetic.merge, base, xs, normalised_sum, ctx))
    unread = task_arithmetic.merge_stored(base, [xs[0], base], normalised_sum, ctx, torch.float32, torch.float32)
    assert torch.equal(unread, torch_path(task_arithmetic.merge, base, [xs[0], base], normalised_sum, ctx))
    # nothing to prune is still one fused pass, with the torch path's bits
    dense = make_params("ties", 2, {}, {"weight": 1.0, "density": 1.0})
    assert torch.equal(op.merge_stored(base, xs, dense, ctx, torch.float32, torch.float32),
                       torch_path(op.merge, base, xs, dense, ctx))


@needs_loops
@pytest.mark.parametrize("density", [0.05, 0.5, 0.95])
@pytest.mark.parametrize("quantised", [False, True])
def test_the_rule_matches_the_torch_rule(density, quantised):
    base, xs = family(200_003, 1, seed=7, quantised=quantised)
    rule = generalized._magnitude_rule(xs[0], base, density, fused=True)
    assert rule == generalized._magnitude_rule(xs[0], base.float(), density, None)


@needs_loops
@pytest.mark.parametrize("guess", ["sampled", "wrong", "zero"])
@pytest.mark.parametrize("density", [0.05, 0.5, 0.95])
def test_both_routes_to_the_rule_agree(monkeypatch, guess, density):
    """A confirmed sample guess, and the two histograms when the guess is refuted (or is 0,
    which leaves the zero shortcut to rule_from_histogram), give the torch path's rule."""
    base, xs = family(200_003, 1, seed=11, quantised=True)
    histograms = []
    real_histogram = native.magnitude_histogram
    monkeypatch.setattr(native, "magnitude_histogram", lambda *a: histograms.append(1) or real_histogram(*a))
    if guess != "sampled":
        pattern = 0x3F800000 if guess == "wrong" else 0  # |δ| = 1.0 is far above any of these deltas
        monkeypatch.setattr(selection, "_sampled_guesses", lambda x, base, ks: [selection._Guess(pattern, None)] * len(ks))
    rule = generalized._magnitude_rule(xs[0], base, density, fused=True)
    assert rule == generalized._magnitude_rule(xs[0], base.float(), density, None)
    # bf16 deltas: the sample lands in the run of ties, unless the k-th largest is 0
    assert bool(histograms) == (guess != "sampled" or rule.threshold == 0)


@needs_loops
def test_the_counting_pass_tallies_ties_where_they_are():
    """magnitude_count's per-run tallies let magnitude_position start next to the tie it looks
    for: the same position as a scan from the start, for ties in every run of TALLY entries."""
    base, xs = family(5 * native.TALLY + 123, 1, seed=5, quantised=True)
    delta = (xs[0].float() - base.float()).abs()
    pattern = int(torch.mode(delta[delta > 0]).values.view(torch.int32))  # the commonest non-zero |δ|
    [(above, equal)], tallies, collected = native.magnitude_count(xs[0], base, [pattern])
    ties = (delta.view(torch.int32) == pattern).nonzero().squeeze(1)
    assert (above, equal) == (int((delta.view(torch.int32) > pattern).sum()), ties.numel())
    assert collected == [None] and tallies.shape == (1, 6) and int(tallies.sum()) == equal
    assert all(int(t) > 0 for t in tallies[0])  # ties in every run, the last one short
    for rank in [0, 1, int(tallies[0, 0]) - 1, int(tallies[0, 0]), equal // 2, equal - 1, equal]:
        expected = int(ties[rank]) if rank < equal else base.numel()
        assert native.magnitude_position(xs[0], base, pattern, rank, tallies[0]) == expected
        assert native.magnitude_position(xs[0], base, pattern, rank) == expected


@needs_loops
def test_the_counting_pass_counts_two_thresholds_and_collects_their_brackets():
    base, xs = family(300_007, 1, seed=6, quantised=True)
    bits = (xs[0].float() - base.float()).abs().view(torch.int32)
    patterns = [int(bits[10]), int(bits[20_000])]
    ordered = bits.sort().values
    lo, hi = int(ordered[1000]), int(ordered[5000])
    inside = (bits >= lo) & (bits <= hi)
    counts, tallies, collected = native.magnitude_count(
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
        guesses.append(selection._Guess(0x3F800000, (lo, hi, room)))  # |δ| = 1.0: far above these deltas
    return guesses


@needs_loops
@pytest.mark.parametrize("guess", ["sampled", "wrong, no bracket", "wrong, bracket holds", "wrong, bracket misses",
                                   "wrong, bracket too small"])
def test_breadcrumbs_cuts_found_together_are_the_cuts_found_alone(monkeypatch, guess):
    """Both of breadcrumbs' cuts come from shared passes (one sample, one counting pass, at most
    one histogram); each equals the cut found alone and keeps exactly the torch tie rule's set,
    whether a guess holds, its bracket holds the value, or the histograms find it."""
    base, xs = family(200_003, 1, seed=7, quantised=True)
    n = base.numel()
    delta = (xs[0].float() - base.float()).abs()
    ranks = [int(0.49 * n), int(0.99 * n)]
    histograms = []
    real_histogram = native.magnitude_histogram
    monkeypatch.setattr(native, "magnitude_histogram", lambda *a: histograms.append(1) or real_histogram(*a))
    if guess == "wrong, no bracket":
        monkeypatch.setattr(selection, "_sampled_guesses", lambda x, b, ks: [selection._Guess(0x3F800000, None)] * len(ks))
    elif guess != "sampled":
        where = guess.split("bracket ")[1]
        monkeypatch.setattr(selection, "_sampled_guesses",
                            lambda x, b, ks: _guesses_around(delta, [n - k + 1 for k in ks], where))
    together = selection.delta_outside_smallest(xs[0], base, ranks)
    if guess != "sampled":  # (a sampled guess may fail and fall back too)
        assert bool(histograms) == (guess in ("wrong, no bracket", "wrong, bracket misses", "wrong, bracket too small"))
    assert together == [selection.delta_outside_smallest(xs[0], base, [r])[0] for r in ranks]
    for (before, after, cut), r in zip(together, ranks):
        outside = torch.cat([delta[:cut] > before, delta[cut:] > after])
        assert torch.equal(~outside, selection.smallest_mask(delta, r))


@needs_loops
@pytest.mark.parametrize("density", [0.05, 0.3, 0.5])  # (a k-th largest in bin 0, zeros, takes the histograms)
def test_the_rule_from_a_bracket_is_the_torch_rule(monkeypatch, density):
    base, xs = family(200_003, 1, seed=12, quantised=True)
    delta = (xs[0].float() - base.float()).abs()
    n = base.numel()
    k = generalized.magnitude_count(density, n)
    monkeypatch.setattr(selection, "_sampled_guesses",
                        lambda x, b, ks: _guesses_around(delta, [n - k + 1 for k in ks], "holds"))
    monkeypatch.setattr(native, "magnitude_histogram", None)  # the bracket must suffice
    rule = generalized._magnitude_rule(xs[0], base, density, fused=True)
    monkeypatch.undo()
    assert rule == generalized._magnitude_rule(xs[0], base.float(), density, None)


@needs_loops
def test_the_rule_when_the_kth_largest_is_zero():
    # an expert read in part: most of its delta is exactly zero, so the k-th largest is 0
    base, xs = family(50_000, 1, seed=2, quantised=True)
    x = base.clone()
    x[:1000] = xs[0][:1000]
    for density in (0.01, 0.5):
        assert generalized._magnitude_rule(x, base, density, fused=True) == \
            generalized._magnitude_rule(x.float(), base.float(), density, None)


@needs_loops
def test_bfloat16_rounding_matches_torch_on_special_values():
    # no experts: out = base + 0, rounded to bf16, which exercises the rounding alone
    values = torch.tensor([0.0, -0.0, 1.0, -1.5, math.inf, -math.inf, math.nan, 3.4e38, 1e-40, -1e-45,
                           1.00390625, 1.01171875, 1.0078125 + 2 ** -24, 65504.0, 2 ** -126])
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (100_000,), generator=torch.Generator().manual_seed(0),
                         dtype=torch.int64).to(torch.int32).view(torch.float32)
    base = torch.cat([values, bits, 1 + torch.arange(-300, 300) * 2.0 ** -9])  # halfway cases
    out = native.family_combine(base, [], True, False, 1.0, torch.empty_like(base, dtype=torch.bfloat16))
    ref = (torch.zeros_like(base) + base).to(torch.bfloat16)
    nan = ref.isnan()
    assert nan.sum() > 100 and torch.equal(out.isnan(), nan)  # NaN payloads may differ: a NaN is a NaN
    assert torch.equal(out[~nan].view(torch.int16), ref[~nan].view(torch.int16))


@needs_loops
def test_a_large_tensor_splits_over_threads_without_seams(monkeypatch):
    monkeypatch.setattr(native, "_MIN_SPLIT", 1000)
    base, xs = family(10_007, 2, seed=5, quantised=True)
    p = make_params("ties", 2, {}, {"weight": 1.0, "density": 0.3})
    op = get_operator("ties")
    out = op.merge(base.float(), xs, p, make_ctx(base.shape))
    assert torch.equal(out, torch_path(op.merge, base.float(), xs, p, make_ctx(base.shape)))


@needs_loops
@pytest.mark.parametrize("method", ["ties", "dare_ties", "breadcrumbs", "della"])
@pytest.mark.parametrize("budget", [1.0, 0.5])
def test_a_bf16_merge_writes_the_same_bytes_either_way(tmp_path, method, budget):
    from conftest import load_model, make_family

    from mergehub.engine import api
    from mergehub.engine.config import parse_config

    fam = make_family(tmp_path / "f", experts=3, dtype=torch.bfloat16, change="dense")
    mapping = fam.config(method, weights=[1.0, 0.5, -0.3], parameters={"density": 0.4})
    mapping.update(dtype="float32", out_dtype="bfloat16")

    def merge(out):
        # exact blocks only: sketched units merge a float32 approximation, not the stored bf16 rows
        api.run_merge(parse_config(mapping), out, catalog_dir=tmp_path / "catalog", budget=budget,
                      block_size=64, device="cpu", sketch_rank=0)
        return load_model(out)

    calls = []
    real = native.family_combine
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "family_combine",
                   lambda *args, **kwargs: calls.append(args[0].dtype) or real(*args, **kwargs))
        fast = merge(tmp_path / "native")
    assert calls and set(calls) == {torch.bfloat16}  # the loops ran, on the stored bf16 base
    slow = torch_path(merge, tmp_path / "torch")
    assert fast.keys() == slow.keys()
    for name in fast:
        assert fast[name].dtype == torch.bfloat16 and torch.equal(fast[name], slow[name]), name


@needs_loops
def test_an_empty_tensor():
    base, xs = family(0, 2, seed=0, quantised=True)
    p = make_params("ties", 2, {}, {"weight": 1.0, "density": 0.5})
    out = get_operator("ties").merge_stored(base, xs, p, MergeContext("w", 0, 0, 1, 1), torch.float32, torch.bfloat16)
    assert out is not None and out.numel() == 0


@needs_loops
@pytest.mark.parametrize("method", ["ram", "ramplus_tl"])
@pytest.mark.parametrize("eps", [1e-5, 0.1, 0.0])  # float32(0.1) lies above 0.1: the comparison is in float32
@pytest.mark.parametrize("models", [1, 3, 8])
def test_ram_through_the_loops_equals_the_torch_path(monkeypatch, method, eps, models):
    n = 100_003
    g = torch.Generator().manual_seed(models)
    base = torch.randn(n, generator=g)
    xs = [base + torch.randn(n, generator=g) * torch.rand(n, generator=g).lt(0.4) * 0.2 for _ in range(models)]
    xs[0][:50] = base[:50] + torch.tensor(eps, dtype=torch.float32)  # exactly at the threshold
    xs = [x.bfloat16() for x in xs]
    p = make_params(method, models, {"epsilon": eps}, {})
    op = get_operator(method)
    ran = spy(monkeypatch, "ram_combine")
    out = op.merge(base, xs, p, make_ctx(base.shape))
    assert ran and torch.equal(out, torch_path(op.merge, base, xs, p, make_ctx(base.shape)))
    if method == "ramplus_tl":
        stored = op.merge_stored(base.bfloat16(), xs, p, make_ctx(base.shape), torch.float32, torch.bfloat16)
        assert torch.equal(stored, torch_path(op.merge, base.bfloat16().float(), xs, p, make_ctx(base.shape)).bfloat16())


@needs_loops
@pytest.mark.parametrize("select_topk", [1.0, 0.3, 0.02, 0.0])
@pytest.mark.parametrize("models", [1, 3, 4])
@pytest.mark.parametrize("quantised", [False, True])  # bf16 deltas tie on the variance at the threshold
def test_sce_through_the_loops_equals_the_torch_path(monkeypatch, select_topk, models, quantised):
    shape = (211, 977)  # several span blocks, an odd tail
    base, xs = family(math.prod(shape), models, seed=models, quantised=quantised, scale=0.05)
    base, xs = base.float().view(shape), [x.view(shape) for x in xs]
    p = make_params("sce", models, {"select_topk": select_topk}, {})
    op = get_operator("sce")
    ran = spy(monkeypatch, "sce_combine")
    out = op.merge(base, xs, p, make_ctx(shape))
    # nothing selected (select_topk 0, or one model: its variance is 0 everywhere) is base + 0
    # without the erase step
    assert bool(ran) == (select_topk >= 1 or (select_topk > 0 and models > 1))
    assert torch.equal(out, torch_path(op.merge, base, xs, p, make_ctx(shape)))
    stored = op.merge_stored(base.bfloat16(), xs, p, make_ctx(shape), torch.float32, torch.bfloat16)
    assert torch.equal(stored, torch_path(op.merge, base.bfloat16().float(), xs, p, make_ctx(shape)).bfloat16())


@needs_loops
@pytest.mark.parametrize("t", [0.001, 0.3, 0.0])
def test_nearswap_through_the_loops_equals_the_torch_path(monkeypatch, t):
    shape = (97, 1031)
    g = torch.Generator().manual_seed(9)
    base = torch.randn(shape, generator=g)
    x = base + torch.randn(shape, generator=g) * torch.rand(shape, generator=g)
    x[:3] = base[:3]  # |base − x| = 0: the 1e-6 floor
    x = x.bfloat16()
    p = make_params("nearswap", 1, {"t": t}, {})
    op = get_operator("nearswap")
    ran = spy(monkeypatch, "nearswap")
    out = op.merge(base, [x], p, make_ctx(shape))
    assert ran and out.shape == shape and torch.equal(out, torch_path(op.merge, base, [x], p, make_ctx(shape)))
    stored = op.merge_stored(base.bfloat16(), [x], p, make_ctx(shape), torch.float32, torch.bfloat16)
    assert torch.equal(stored, torch_path(op.merge, base.bfloat16().float(), [x], p, make_ctx(shape)).bfloat16())


@needs_loops
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
def test_linear_through_the_loops_equals_the_torch_path(monkeypatch, normalize, stored):
    shape = (97, 1031)  # an odd tail for the vector loop
    g = torch.Generator().manual_seed(21)
    xs = [torch.randn(shape, generator=g).to(stored) for _ in range(4)]
    # weights whose products and sum are inexact in float32: a missing fused multiply-add or a
    # division by the reciprocal would change many roundings
    p = make_params("linear", 4, {"normalize": normalize},
                    [{"weight": w} for w in (0.3, 0.7, 1.1, -0.25)])
    if not linear.torch_fuses_add():
        pytest.skip("torch's CPU kernels here do not fuse multiply-adds: linear keeps torch's path "
                    "(test_linear_leaves_torch_kernels_that_do_not_fuse_to_torch)")
    op = get_operator("linear")
    ran = spy(monkeypatch, "linear")
    widened = [x.float() for x in xs]
    out = op.merge(None, widened, p, make_ctx(shape))
    reference = torch_path(op.merge, None, widened, p, make_ctx(shape))
    assert ran and out.dtype == torch.float32 and torch.equal(out, reference)
    assert torch.equal(op.merge(None, xs, p, make_ctx(shape)), torch_path(op.merge, None, xs, p, make_ctx(shape)))
    for out_dtype in (torch.float32, torch.bfloat16):
        merged = op.merge_stored(None, xs, p, make_ctx(shape), torch.float32, out_dtype)
        assert merged.dtype == out_dtype and torch.equal(merged, reference.to(out_dtype))
    # no dtype in the config: inputs stay in their stored dtype and are summed in float32
    same = op.merge_stored(None, xs, p, make_ctx(shape), stored, stored)
    assert torch.equal(same, torch_path(op.merge, None, xs, p, make_ctx(shape)).to(stored))


@pytest.mark.skipif(platform.machine() != "x86_64", reason="torch's baseline kernels are x86's")
def test_linear_leaves_torch_kernels_that_do_not_fuse_to_torch():
    """The loop fuses each multiply-add, as torch's AVX2/AVX-512 kernels do; with torch's
    baseline x86 kernels (no FMA), the probe says so and linear stays on torch's path."""
    probe = ("import torch; from mergehub.engine.operators import linear; "
             "print(torch.backends.cpu.get_cpu_capability(), linear.torch_fuses_add())")
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "ATEN_CPU_CAPABILITY": "default"})
    assert ran.stdout.split() == ["DEFAULT", "False"]


@needs_loops
def test_linear_merge_stored_declines_what_the_loops_do_not_cover():
    xs = [torch.randn(10, 7) for _ in range(2)]
    p = make_params("linear", 2, {}, {"weight": 0.5})
    op, ctx = get_operator("linear"), make_ctx((10, 7))
    assert op.merge_stored(None, xs, p, ctx, torch.float64, torch.float32) is None  # float64 sum
    assert op.merge_stored(None, xs, p, ctx, torch.float32, torch.float16) is None  # out dtype
    assert op.merge_stored(None, [x.half() for x in xs], p, ctx, torch.float32, torch.float32) is None
    # float32 inputs with a bfloat16 working dtype are rounded first: the torch path's business
    assert op.merge_stored(None, xs, p, ctx, torch.bfloat16, torch.bfloat16) is None


def _assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@needs_loops
@pytest.mark.parametrize("shape", [(97, 1031), (1200, 1000)])  # under and over the 1M-entry sample
def test_arcee_fusion_through_the_loops_equals_the_torch_path(monkeypatch, shape):
    g = torch.Generator().manual_seed(12)
    base = torch.randn(shape, generator=g) * 0.02
    x = (base + 1e-3 * torch.randn(shape, generator=g)).bfloat16()
    x[5, 7], x[9, 0] = float("nan"), float("inf")  # those rows' KL comes from torch either way
    x[11, 3] = float("-inf")  # softmax gives it 0: torch's KL of that row is finite, the loops' NaN
    p = make_params("arcee_fusion", 1, {}, {})
    op = get_operator("arcee_fusion")
    ran = spy(monkeypatch, "fusion_apply")
    samples = []  # what the threshold is taken from: the same finite importances on both paths
    real_threshold = arcee_fusion.threshold_of
    monkeypatch.setattr(arcee_fusion, "threshold_of", lambda scores: samples.append(scores) or real_threshold(scores))
    out = op.merge(base, [x], p, make_ctx(shape))
    assert ran and out.dtype == torch.float32
    _assert_same(out, torch_path(op.merge, base, [x], p, make_ctx(shape)))
    _assert_same(samples[0], samples[1])
    changed = (out != base) & ~out.isnan()
    assert 0 < changed.float().mean() < 0.5  # some, not all, changes kept
    stored = op.merge_stored(base.bfloat16(), [x], p, make_ctx(shape), torch.float32, torch.bfloat16)
    assert stored.dtype == torch.bfloat16
    _assert_same(stored, torch_path(op.merge, base.bfloat16().float(), [x], p, make_ctx(shape)).bfloat16())


@needs_loops
def test_arcee_fusion_kl_is_accurate_where_float32_is_noise():
    """Rows like a fine-tune's (weights ~0.02, changes ~1e-3): the loops' KL is the formula's
    value to float32 rounding; mergekit's float32 sum of p·ln(p/q) is not."""

    g = torch.Generator().manual_seed(3)
    base = torch.randn(64, 1792, generator=g) * 0.02
    x = base + 1e-3 * torch.randn(64, 1792, generator=g)
    kl, _ = native.fusion_divergence(x.reshape(-1), base.reshape(-1), 1792)

    def softmax(v):
        e = np.exp(v - v.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    p = softmax(x.numpy().astype(np.longdouble)) + np.longdouble(1e-8)  # 64-bit mantissas
    q = softmax(base.numpy().astype(np.longdouble)) + np.longdouble(1e-8)
    exact = (p * np.log(p / q)).sum(axis=-1).astype(np.float64)
    assert np.abs(kl.double().numpy() / exact - 1).max() < 1e-6
    pf, qf = torch.softmax(x, -1) + 1e-8, torch.softmax(base, -1) + 1e-8
    float32_sum = (pf * torch.log(pf / qf)).sum(-1).double().numpy()
    assert np.median(np.abs(float32_sum / exact - 1)) > 1e-3  # why the loops do not copy it


@needs_loops
@pytest.mark.parametrize("scale", [1e-4, 1.0, 30.0, 300.0])  # flat rows to ones where e^(x − max) underflows
def test_arcee_fusion_kl_matches_torch_float64_over_the_range(scale):
    g = torch.Generator().manual_seed(int(scale * 10) + 1)
    base = torch.randn(50, 333, generator=g) * scale
    x = base + torch.randn(50, 333, generator=g) * scale * 0.3
    kl, _ = native.fusion_divergence(x.reshape(-1), base.reshape(-1), 333)
    expected = arcee_fusion.row_divergence(x, base).flatten()
    # where softmax is one-hot (scale 30, 300) both sums round to ~0 (1e-36 vs 0: p and q agree
    # to their last bits), hence the absolute floor
    torch.testing.assert_close(kl, expected, rtol=1e-6, atol=1e-24)
    assert (kl >= 0).all() and (kl > 1e-12).any()


@needs_loops
@pytest.mark.parametrize("shape", [(300, 7000), (1_100_000, 2), (2, 700_000)])  # rows < sample, rows > sample
def test_the_fusion_sample_is_the_gather_at_sample_positions(shape):
    """The loops' sample, taken in the KL pass and on its own, is the importance at
    arcee_fusion.sample_positions, which spread the sample evenly over the rows (rows differ by
    at most one entry; in row order) at columns that cover the row."""
    from mergehub.engine.operators import arcee_fusion

    g = torch.Generator().manual_seed(5)
    rows, width = shape
    base, x = torch.randn(shape, generator=g), torch.randn(shape, generator=g).bfloat16()
    size, key = arcee_fusion.SAMPLE_SIZE, (0x9E3779B9, 77)
    kl, in_pass = native.fusion_divergence(x.reshape(-1), base.reshape(-1), width, size, key)
    index = arcee_fusion.sample_positions(shape, key)
    expected = torch.sub(x.reshape(-1)[index].float(), base.reshape(-1)[index]).abs_().mul_(kl[index // width])
    assert torch.equal(in_pass, expected)
    again = torch.empty(size)
    assert torch.equal(native.fusion_sample(x.reshape(-1), base.reshape(-1), width, kl, key, again), expected)
    some = [0, rows // 2, rows - 1]  # only these rows' shares taken again, into a sample holding zeros
    only = native.fusion_sample(x.reshape(-1), base.reshape(-1), width, kl, key, torch.zeros(size), rows=some)
    in_rows = torch.isin(index // width, torch.tensor(some))
    assert torch.equal(only[in_rows], expected[in_rows]) and (only[~in_rows] == 0).all()
    row = index // width
    assert (row[1:] >= row[:-1]).all()
    shares = torch.bincount(row, minlength=rows)
    assert shares.max() - shares.min() <= 1 and shares.sum() == size
    column = index % width
    assert column.min() >= 0 and column.max() < width
    if width > 1000:  # the columns are uniform: every tenth of the row gets its share
        tenths = torch.bincount(column * 10 // width, minlength=10).double() / size
        assert (tenths - 0.1).abs().max() < 0.01
    other = arcee_fusion.sample_positions(shape, (key[0] + 1, key[1]))
    assert (other != index).float().mean() > 0.4  # the key picks the columns (half agree by chance at width 2)


@needs_loops
def test_order_statistics_equal_sorting():
    g = torch.Generator().manual_seed(8)
    values = torch.randn(300_001, generator=g) * 1e-9
    values[::1000], values[5::777], values[7::999] = float("nan"), -0.0, 0.0
    values[9::5000], values[11::4000] = float("-inf"), float("inf")
    ranks = [1, 2, 150_000, 299_000, 299_700, 300_001]
    ordered = torch.sort(values).values
    got = selection.smallest_values(values, ranks)
    for r, v in zip(ranks, got):
        _assert_same(v, ordered[r - 1])
        assert torch.signbit(v) == torch.signbit(ordered[r - 1])
    with pytest.MonkeyPatch.context() as mp:  # torch's counting passes give the same
        mp.setattr(native, "available", lambda: False)
        for v, w in zip(got, selection.smallest_values(values, ranks)):
            _assert_same(v, w)
    with pytest.raises(ValueError):
        selection.smallest_values(values, [0])
    assert native.smallest(values, [3, 3, 300_001]).tolist()[:2] == [ordered[2].item()] * 2  # a repeated rank


@needs_loops
@pytest.mark.parametrize("shared", [{}, {"lambda": 0.7}, {"lambda": 1.3}])
@pytest.mark.parametrize("quantised", [False, True])
def test_task_arithmetic_through_the_loops_equals_the_torch_path(monkeypatch, shared, quantised):
    n = 300_007
    base, xs = family(n, 3, seed=4, quantised=quantised)
    xs[2] = base  # an expert not read under a budget is passed as the base itself
    p = make_params("task_arithmetic", 3, shared, [{"weight": 1.0}, {"weight": -0.6}, {"weight": 0.0}])
    op = get_operator("task_arithmetic")
    ran = spy(monkeypatch, "family_combine")
    out = op.merge(base.float(), xs, p, make_ctx((n,)))
    assert ran and torch.equal(out, torch_path(op.merge, base.float(), xs, p, make_ctx((n,))))
    stored = op.merge_stored(base, xs, p, make_ctx((n,)), torch.float32, base.dtype)
    assert stored.dtype == base.dtype
    assert torch.equal(stored, torch_path(op.merge, base.float(), xs, p, make_ctx((n,))).to(base.dtype))
    # normalised: divided by Σ w = 0.4, the unread expert's 0.0 included (1 where |Σ w| < 1e-8)
    for weights in ([1.0, -0.6, 0.0], [1e-9, 0.0, 0.0]):
        normalised = make_params("task_arithmetic", 3, {**shared, "normalize": True},
                                 [{"weight": w} for w in weights])
        stored = op.merge_stored(base, xs, normalised, make_ctx((n,)), torch.float32, base.dtype)
        assert torch.equal(stored, torch_path(op.merge, base.float(), xs, normalised, make_ctx((n,))).to(base.dtype))


@needs_loops
@pytest.mark.parametrize("quantised", [False, True])
def test_catalog_block_statistics_through_the_loops_equal_torch(quantised):
    from mergehub.engine import catalog

    g = torch.Generator().manual_seed(6)
    base = torch.randn(96, 700, generator=g)
    moved = (torch.rand(12, 1, generator=g) < 0.6).repeat_interleave(8, 0)  # blocks of 8 rows
    x = base + 0.01 * torch.randn(96, 700, generator=g) * moved
    if quantised:
        base, x = base.bfloat16(), x.bfloat16()
    # the blocks these land in differ from the base whatever the draw; the last is the base's own
    x[3, 5], x[40, 1], base[70, 2] = float("nan"), float("-inf"), float("inf")
    rpb = 8
    changed = [not torch.equal(x[r:r + rpb], base[r:r + rpb]) for r in range(0, 96, rpb)]
    assert not all(changed) and any(changed)
    compiled, reference = catalog.TensorStats(rpb, [], [], [], [], []), catalog.TensorStats(rpb, [], [], [], [], [])
    catalog._compiled_block_stats(compiled, base.reshape(-1), x.reshape(-1), changed, 700 * rpb)
    catalog._torch_block_stats(reference, base, x, changed, rpb)
    assert compiled.changed == reference.changed and compiled.nonfinite and reference.nonfinite
    assert compiled.max_abs == reference.max_abs and compiled.nonzero == reference.nonzero
    assert compiled.norm == pytest.approx(reference.norm, rel=1e-12, abs=0)
    x[3, 5], x[40, 1] = 0.0, 0.0  # only the base holds a non-finite value now: the expert is not flagged
    again = catalog.TensorStats(rpb, [], [], [], [], [])
    catalog._compiled_block_stats(again, base.reshape(-1), x.reshape(-1), changed, 700 * rpb)
    assert not again.nonfinite
