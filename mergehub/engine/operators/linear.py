"""linear: out = Σ_i w_i·x_i (/ Σ_i w_i with normalize), accumulated in float32.

The base is "ignored": a configured base model is simply one more input with its own weight.
The sum is taken in input order from zero with ``add_(x, alpha=w)``, which torch's vectorised
CPU kernels compute as one fused multiply-add; the compiled loop (engine/native) does the same
in one pass from the stored dtypes to the output's, and stands in for torch only where torch
fuses (``torch_fuses_add``).
"""

from __future__ import annotations

import functools

import torch

from ..errors import ConfigError
from .. import native
from . import params as P
from .base import MergeContext, Operator, TensorParams
from .registry import register


@functools.cache
def torch_fuses_add() -> bool:
    """Does torch's CPU ``add_(x, alpha=w)`` round once (a fused multiply-add)? Its kernels for
    AVX2, AVX-512 and Arm do; its baseline x86 kernels do not. Probed over a vector body and a
    scalar tail: with x = w = 1 + 2⁻¹², −1 + x·w is 2⁻¹¹ + 2⁻²⁴ fused, 2⁻¹¹ with x·w rounded."""
    n, x = 67, 1 + 2**-12
    out = torch.full((n,), -1.0)
    out.add_(torch.full((n,), x), alpha=x)
    return bool((out == 2**-11 + 2**-24).all())


@register
class Linear(Operator):
    name = "linear"
    base = "ignored"
    min_inputs = 1
    params = (P.WEIGHT, P.normalize(True))
    help = "Weighted average of the models' weights (Model Soups)."

    def validate(self, p: TensorParams, where: str) -> None:
        if p.shared["normalize"] and sum(p.per_model("weight")) == 0:
            raise ConfigError(f"{where}: linear weights sum to 0 with normalize: true; "
                              f"change the weights or set normalize: false")

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return True

    def merge_stored(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
                     ctx: MergeContext, work: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor | None:
        """Straight from the stored dtypes to the output's, through the compiled loop, when
        widening to ``work`` and then to float32 is exact (``work`` float32, or the inputs'
        own dtype)."""
        exact = work == torch.float32 or all(x.dtype == work for x in inputs)
        if not (exact and work in native.DTYPES and out_dtype in native.DTYPES):
            return None
        return self._through_loop(inputs, p, ctx, out_dtype)

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        accumulate = P.accumulation_dtype(inputs[0])
        if accumulate == torch.float32:
            merged = self._through_loop(inputs, p, ctx, accumulate)
            if merged is not None:
                return merged
        out = torch.zeros_like(inputs[0], dtype=accumulate)
        for x, w in zip(inputs, p.per_model("weight")):
            out.add_(x, alpha=w)
        if p.shared["normalize"]:
            out.div_(self._divisor(p, accumulate))
        return out

    def _through_loop(self, inputs: list[torch.Tensor], p: TensorParams, ctx: MergeContext,
                      out_dtype: torch.dtype) -> torch.Tensor | None:
        """The merge through the compiled loop, in ``out_dtype``; None where it cannot stand in
        for torch (tensors it does not take, or torch kernels that do not fuse)."""
        flat = [x.reshape(-1) for x in inputs]
        if not (native.supports(*flat) and torch_fuses_add()):
            return None
        out = ctx.empty(inputs[0].shape, out_dtype)
        return native.linear(flat, p.per_model("weight"), self._divisor(p), out.view(-1)).view(out.shape)

    @staticmethod
    def _divisor(p: TensorParams, dtype: torch.dtype = torch.float32) -> float | None:
        """Σ w_i summed in ``dtype`` (None without normalize)."""
        if not p.shared["normalize"]:
            return None
        return torch.tensor(p.per_model("weight"), dtype=dtype).sum().item()
