"""SCE in the kernels (kernels.c): the variances across the deltas computed once and kept,
the selection rule from one counting pass over them, the models' energies and the erase step,
each one pass over chunks from the stored dtypes. The math is operators/sce.py's (its rule,
``keep_rule``, and its weights, ``energy_weights``); where that rule needs the whole-tensor
mask, the kernel hands the unit to the torch statement."""

from __future__ import annotations

import torch

from ..operators import get_operator
from ..operators.base import MergeContext, TensorParams
from ..operators.sce import energy_weights, keep_rule, selected_count
from ..operators.selection import TopKRule, rule_from_histogram, rule_in_bin
from ..operators.span import BLOCK
from . import binding, register
from .binding import check, over_spans, ptr, tensor_arrays, tensor_ref


def value_histogram(values: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """(int64[MH_KEY_BINS] counts of the top 16 bits of flat float32 ``values``, the number of
    non-zero values) in one pass on all cores, as selection.topk_rule bins them; None when a
    value has its sign bit set (−0, a negative NaN), which topk_rule's torch statement refuses."""
    ffi, lib = binding.FFI, binding.LIB

    def run(span: tuple[int, int]) -> tuple[torch.Tensor, int] | None:
        hist, nonzero = torch.zeros(lib.MH_KEY_BINS, dtype=torch.int64), ffi.new("int64_t *", 0)
        status = lib.mh_value_histogram(ffi.cast("float *", values.data_ptr()), span[0], span[1], ptr(hist), nonzero)
        if status == -2:
            return None
        check(status)
        return hist, nonzero[0]

    parts = over_spans(values.numel(), run)
    if not parts or any(part is None for part in parts):
        return None
    return sum(hist for hist, _ in parts), sum(nonzero for _, nonzero in parts)


def value_positions(values: torch.Tensor, key: int, count: int) -> torch.Tensor:
    """int64: the flat positions, ascending, of the ``count`` values whose float32 top 16 bits
    are ``key`` (``count`` from ``value_histogram``)."""
    positions = torch.empty(count, dtype=torch.int64)
    found = binding.LIB.mh_value_positions(binding.FFI.cast("float *", values.data_ptr()), values.numel(), key,
                                           ptr(positions), count)
    if found != count:
        raise RuntimeError(f"the values changed between their histogram and their positions ({found} ≠ {count})")
    return positions


def _selection(variance: torch.Tensor, n: int, fraction: float):
    """sce.keep_rule for variances held whole: the histogram and the chosen bin's positions
    from the kernels (one pass each, where topk_rule's torch ops make four); the same rule."""
    binned = value_histogram(variance) if 0 < fraction < 1 else None
    if binned is None:
        return keep_rule(n, fraction, lambda a, b: variance[a:b], lambda at: variance[at], None)
    hist, nonzero = binned
    k = selected_count(nonzero, fraction)
    if not 1 <= k < n:
        return "none" if k <= 0 else None

    def pick_in_bin(key: int, need: int) -> TopKRule:
        positions = value_positions(variance, key, int(hist[key]))
        return rule_in_bin(n, positions, variance[positions], need)

    rule = rule_from_histogram(n, k, hist, pick_in_bin, lambda: nonzero)
    return "whole" if rule.threshold <= 0 else (rule.threshold, rule.cut)


def _selection_args(variance: torch.Tensor | None, selection):
    """(variance pointer, select, threshold, cut) as the kernels take the rule."""
    if selection is None:
        return binding.FFI.NULL, 0, 0.0, 0
    return binding.FFI.cast("float *", variance.data_ptr()), 1, selection[0], selection[1]


def merge(base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams, ctx: MergeContext,
          out_dtype: torch.dtype) -> torch.Tensor:
    lib = binding.LIB
    flat_base, flat = base.reshape(-1), [x.reshape(-1) for x in inputs]
    n, k, fraction = flat_base.numel(), len(flat), p.shared["select_topk"]
    c_xs, c_dtypes = tensor_arrays(flat)
    variance = None
    if 0 < fraction < 1:
        variance = ctx.empty((n,), torch.float32)

        def run_variance(span: tuple[int, int]) -> None:
            check(lib.mh_sce_variance(c_xs, c_dtypes, k, *tensor_ref(flat_base), span[0], span[1],
                                      binding.FFI.cast("float *", variance.data_ptr())))

        over_spans(n, run_variance)
    selection = _selection(variance, n, fraction) if variance is not None else keep_rule(n, fraction, None, None, None)
    out = ctx.empty(base.shape, out_dtype)
    if selection == "whole":  # the rule needs the whole-tensor mask: the torch statement's
        work_base = base.float()
        merged = get_operator("sce").merge(work_base, [work_base if x is base else x.float() for x in inputs], p, ctx)
        return out.copy_(merged)
    if selection == "none":  # every delta dropped: base + 0
        return out.copy_(torch.add(base.float(), 0.0))
    v_ptr, select, threshold, cut = _selection_args(variance, selection)

    blocks = -(-n // BLOCK)
    energy_blocks = torch.zeros(blocks, k, dtype=torch.float64)

    def run_energy(span: tuple[int, int]) -> None:
        check(lib.mh_sce_energy(c_xs, c_dtypes, k, *tensor_ref(flat_base), v_ptr, select, threshold, cut, n, BLOCK,
                                span[0], span[1], ptr(energy_blocks[span[0]:])))

    over_spans(blocks, run_energy, per_thread=4, min_split=1)
    energy = [0.0] * k
    for block in energy_blocks.tolist():  # blocks in order, as sce._energies adds them
        for i, value in enumerate(block):
            energy[i] += value
    c_weights = binding.FFI.new("float[]", energy_weights(energy, n))
    flat_out = out.view(-1)

    def run_combine(span: tuple[int, int]) -> None:
        check(lib.mh_sce_combine(c_xs, c_dtypes, k, *tensor_ref(flat_base), v_ptr, select, threshold, cut,
                                 c_weights, span[0], span[1], *tensor_ref(flat_out)))

    over_spans(n, run_combine)
    return out


register("sce", "merge", merge)
