"""nearswap: take the expert's value where it is close to the base, keep the base elsewhere.

    w = clamp(t / max(|base − x|, 1e-6), 0, 1),  out = w·x + (1 − w)·base   (element-wise)
"""

from __future__ import annotations

import torch

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

    stored_dtype_inputs = True  # x.to(base.dtype) below promotes it exactly

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        assert base is not None
        x = inputs[0].to(base.dtype)
        weight = torch.sub(base, x).abs_().clamp_(min=1e-6)
        weight = (p.shared["t"] / weight).clamp_(0, 1)
        # w·x + (1 − w)·base, in mergekit's order of operations
        return torch.mul(weight, x).add_(weight.neg_().add_(1).mul_(base))
