"""RAM, RAM+ and nearswap in the kernels (kernels.c): one pass over chunks of entries from the
stored dtypes to the output's, where their torch statements (operators/ram.py, nearswap.py)
make several whole-tensor passes per model. Same float32 operations, same bits."""

from __future__ import annotations

import torch

from ..operators.base import MergeContext, TensorParams
from ..operators.ram import unique_boosts
from . import binding, register
from .binding import over_spans, tensor_arrays, tensor_ref


def ram_counts(xs: list[torch.Tensor], base: torch.Tensor, eps: float) -> tuple[list[int], list[int]]:
    """(#entries active in model i alone, #entries active in model i), over flat tensors."""
    c_xs, c_dtypes = tensor_arrays(xs)

    def run(span: tuple[int, int]) -> torch.Tensor:
        counts = torch.zeros(2, len(xs), dtype=torch.int64)
        binding.LIB.mh_ram_counts(c_xs, c_dtypes, len(xs), *tensor_ref(base), eps, span[0], span[1],
                                  binding.ptr(counts[0]), binding.ptr(counts[1]))
        return counts

    total = torch.zeros(2, len(xs), dtype=torch.int64)
    for part in over_spans(base.numel(), run):
        total += part
    return total[0].tolist(), total[1].tolist()


def ram_combine(xs: list[torch.Tensor], base: torch.Tensor, eps: float, boosts: list[float],
                out: torch.Tensor) -> torch.Tensor:
    """``out`` ← the RAM (boosts all 1) or RAM+ merge of flat tensors."""
    c_xs, c_dtypes = tensor_arrays(xs)
    c_boosts = binding.FFI.new("float[]", boosts)

    def run(span: tuple[int, int]) -> None:
        binding.LIB.mh_ram_combine(c_xs, c_dtypes, len(xs), *tensor_ref(base), eps, c_boosts, span[0], span[1],
                                   *tensor_ref(out))

    over_spans(base.numel(), run)
    return out


def ram(base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams, ctx: MergeContext,
        out_dtype: torch.dtype) -> torch.Tensor:
    out = ctx.empty(base.shape, out_dtype)
    flat = [x.reshape(-1) for x in inputs]
    return ram_combine(flat, base.reshape(-1), p.shared["epsilon"], [1.0] * len(flat), out.view(-1)).view(base.shape)


def ramplus_tl(base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams, ctx: MergeContext,
               out_dtype: torch.dtype) -> torch.Tensor:
    eps, flat_base, flat = p.shared["epsilon"], base.reshape(-1), [x.reshape(-1) for x in inputs]
    boosts = unique_boosts(*ram_counts(flat, flat_base, eps), p.shared["r"], p.shared["alpha"], eps)
    out = ctx.empty(base.shape, out_dtype)
    return ram_combine(flat, flat_base, eps, boosts, out.view(-1)).view(base.shape)


def nearswap(base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams, ctx: MergeContext,
             out_dtype: torch.dtype) -> torch.Tensor:
    out = ctx.empty(base.shape, out_dtype)
    flat_out, flat_base, flat_x = out.view(-1), base.reshape(-1), inputs[0].reshape(-1)

    def run(span: tuple[int, int]) -> None:
        binding.LIB.mh_nearswap(*tensor_ref(flat_x), *tensor_ref(flat_base), p.shared["t"], span[0], span[1],
                                *tensor_ref(flat_out))

    over_spans(flat_base.numel(), run)
    return out


def _few_models(p: TensorParams, shape: tuple[int, ...]) -> bool:
    return len(p.models) <= binding.LIB.MH_RAM_MODELS


register("ram", "merge", ram, accepts=_few_models)
register("ramplus_tl", "merge", ramplus_tl, accepts=_few_models)
register("nearswap", "merge", nearswap)
