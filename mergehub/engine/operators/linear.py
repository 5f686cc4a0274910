"""linear: out = Σ_i w_i·x_i (/ Σ_i w_i with normalize), accumulated in float32.

The base is "ignored": a configured base model is simply one more input with its own weight.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from . import params as P
from .base import MergeContext, Operator, TensorParams
from .registry import register


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

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        weights = p.per_model("weight")
        out = torch.zeros_like(inputs[0], dtype=P.accumulation_dtype(inputs[0]))
        for x, w in zip(inputs, weights):
            out.add_(x, alpha=w)
        if p.shared["normalize"]:
            out.div_(torch.tensor(weights, dtype=out.dtype).sum().item())
        return out
