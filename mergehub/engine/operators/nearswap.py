"""nearswap: take the expert's value where it is close to the base, keep the base elsewhere.

    w = clamp(t / max(|base − x|, 1e-6), 0, 1),  out = w·x + (1 − w)·base   (element-wise)

On the CPU through the compiled loops (engine/native), with the same float32 operations.
"""

from __future__ import annotations

import torch

from .. import native
from .base import REQUIRED, MergeContext, Operator, Param, TensorParams
from .registry import register


@register
class NearSwap(Operator):
    name = "nearswap"
    base = "required"
    min_inputs = 1
    max_inputs = 1
    params = (Param("t", "global", float, REQUIRED,
                    help="Distance scale: entries closer than t to the base take the "
                         "expert's value, farther ones blend towards the base."),)
    help = "Interpolate each entry towards the expert by t / |base − expert| (clamped to 1)."

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return True

    stored_dtype_inputs = True  # the loops widen x; the torch code below promotes it

    def merge_stored(self, base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams,
                     ctx: MergeContext, work: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor | None:
        """Straight from the stored dtypes to the output's, through the compiled loops."""
        x = inputs[0].reshape(-1)
        if work != torch.float32 or out_dtype not in native.DTYPES or not native.supports(base.reshape(-1), x):
            return None
        out = ctx.empty(base.shape, out_dtype)
        return native.nearswap(x, base.reshape(-1), p.shared["t"], out.view(-1)).view(base.shape)

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        assert base is not None
        x = inputs[0]
        if base.dtype == torch.float32 and native.supports(base.reshape(-1), x.reshape(-1)):
            out = ctx.empty_like(base)
            native.nearswap(x.reshape(-1), base.reshape(-1), p.shared["t"], out.view(-1))
            return out
        x = x.to(base.dtype)
        weight = torch.sub(base, x).abs_().clamp_(min=1e-6)
        weight = (p.shared["t"] / weight).clamp_(0, 1)
        # w·x + (1 − w)·base, in mergekit's order of operations
        return torch.mul(weight, x).add_(weight.neg_().add_(1).mul_(base))
