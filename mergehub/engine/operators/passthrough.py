"""passthrough: the single input, optionally multiplied by ``scale``."""

from __future__ import annotations

import torch

from .base import MergeContext, Operator, Param, TensorParams
from .registry import register


@register
class Passthrough(Operator):
    name = "passthrough"
    base = "ignored"
    min_inputs = 1
    max_inputs = 1
    params = (Param("scale", "model", float, None,
                    help="Optional factor the tensor is multiplied by (e.g. 0 to zero it)."),)
    help = "Copy one model's tensors unchanged (used to stack layer slices)."

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return True

    # The input comes as stored when widening it to the working dtype is exact; unscaled, that
    # round trip changes nothing, so the tensor goes out as it came (the executor copies it
    # into the output dtype), without two conversion passes over every byte.
    stored_dtype_inputs = True

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        scale = p.models[0].get("scale")
        return inputs[0] if scale is None else inputs[0].to(ctx.work(inputs[0])) * scale
