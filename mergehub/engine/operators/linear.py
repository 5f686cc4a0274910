"""linear: out = Σ_i w_i·x_i (/ Σ_i w_i with normalize), accumulated in float32.

The base is "ignored": a configured base model is simply one more input with its own weight.
The sum is taken in input order from zero with ``add_(x, alpha=w)``.
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
        accumulate = P.accumulation_dtype(inputs[0])
        out = torch.zeros_like(inputs[0], dtype=accumulate)
        # each weight rounded to the accumulation dtype first, as add_ rounds alpha anyway; a
        # weight beyond its range becomes ±inf (and the executor reports the overflow) instead
        # of torch refusing the scalar
        for x, w in zip(inputs, torch.tensor(p.per_model("weight"), dtype=accumulate).tolist()):
            out.add_(x, alpha=w)
        if p.shared["normalize"]:
            out.div_(self._divisor(p, accumulate))
        return out

    @staticmethod
    def _divisor(p: TensorParams, dtype: torch.dtype = torch.float32) -> float | None:
        """Σ w_i summed in ``dtype`` (None without normalize)."""
        if not p.shared["normalize"]:
            return None
        return torch.tensor(p.per_model("weight"), dtype=dtype).sum().item()
