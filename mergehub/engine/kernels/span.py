"""The span operators' two passes in the kernels (kernels.c): the Gram matrix of the inputs per
block and the final linear combination, in operators/span.py's summation order. The
operators keep their math (coefficients worked out on the k×k Gram matrix); their kernel is
their span route with these passes (``MergeContext.span_passes``), straight from the stored
dtypes to the output's. Where the span route does not apply (a few entries, slerp's t of 0 or
1, one input), the kernel hands the unit to the torch statement."""

from __future__ import annotations

import dataclasses

import torch

from ..operators import get_operator
from ..operators.base import MergeContext, TensorParams
from ..operators.span import BLOCK, Passes
from . import binding, register
from .binding import check, over_spans, ptr, tensor_arrays, tensor_ref


def gram_blocks(xs: list[torch.Tensor], base: torch.Tensor | None, block: int) -> torch.Tensor:
    """float64[blocks, k, k]: per block of ``block`` entries (a multiple of 8), the Gram matrix
    (upper triangle) of v_i = x_i − base (x_i without a base)."""
    n, k = xs[0].numel(), len(xs)
    blocks = -(-n // block)
    out = torch.zeros(blocks, k, k, dtype=torch.float64)
    c_xs, c_dtypes = tensor_arrays(xs)
    b_ptr, b_dtype = (binding.FFI.NULL, 0) if base is None else tensor_ref(base)

    def run(span: tuple[int, int]) -> None:
        check(binding.LIB.mh_gram_blocks(c_xs, c_dtypes, k, b_ptr, b_dtype, n, block, span[0], span[1],
                                         ptr(out[span[0]:])))

    over_spans(blocks, run, per_thread=4, min_split=1)
    return out


def combine(xs: list[torch.Tensor], coefs: list[float], base: torch.Tensor | None, base_coef: float,
            out: torch.Tensor) -> torch.Tensor:
    """``out`` ← Σ c_i·x_i (+ base_coef·base), summed in float64, rounded to float32 then to
    ``out``'s dtype."""
    c_xs, c_dtypes = tensor_arrays(xs)
    c_coefs = binding.FFI.new("double[]", coefs)
    b_ptr, b_dtype = (binding.FFI.NULL, 0) if base is None else tensor_ref(base)

    def run(span: tuple[int, int]) -> None:
        binding.LIB.mh_combine(c_xs, c_dtypes, c_coefs, len(xs), b_ptr, b_dtype, base_coef, span[0], span[1],
                               *tensor_ref(out))

    over_spans(out.numel(), run)
    return out


PASSES = Passes(lambda xs, base: gram_blocks(xs, base, BLOCK), combine)


def merge(operator: str, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
          ctx: MergeContext, out_dtype: torch.dtype) -> torch.Tensor:
    op = get_operator(operator)
    ctx = dataclasses.replace(ctx, span_passes=PASSES)
    merged = op.merge_stored(base, inputs, p, ctx, torch.float32, out_dtype)
    if merged is not None:
        return merged
    work_base = None if base is None else base.float()  # the span route does not apply: torch's
    widened = [work_base if x is base else x.float() for x in inputs]
    return op.merge(work_base, widened, p, ctx).to(out_dtype)


for _name in ("slerp", "nuslerp", "multislerp", "karcher", "model_stock"):
    register(_name, "merge", lambda *args, _name=_name: merge(_name, *args))
