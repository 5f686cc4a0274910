"""model_stock: interpolate between the base and the experts' average by their agreement.

    cos θ = mean over pairs (i<j) of ⟨δ_i, δ_j⟩ / max(‖δ_i‖‖δ_j‖, 1e-6), clamped to [−1, 1]
    t = N·cos θ / (1 + (N − 1)·cos θ)   (t = 0 where |1 + (N − 1)·cos θ| < 1e-6)
    out = t·mean(x_k) + (1 − t)·base
Over the whole tensor, or with ``filter_wise`` per vector along the last dim (per row).
"""

from __future__ import annotations

import torch

from .base import MergeContext, Operator, Param, TensorParams
from .registry import register


@register
class ModelStock(Operator):
    name = "model_stock"
    base = "required"
    min_inputs = 2
    params = (Param("filter_wise", "global", bool, False,
                    help="Compute the interpolation factor per row instead of per tensor."),)
    help = "Model Stock: move from the base towards the experts' mean by their delta agreement."

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return ndim < 2 or p.shared["filter_wise"]

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        assert base is not None
        shape = base.shape
        if p.shared["filter_wise"]:
            view = (lambda x: x.reshape(1, -1)) if base.dim() < 2 else (lambda x: x)
        else:
            view = lambda x: x.reshape(-1)  # noqa: E731
        w0 = view(base)
        offsets = [view(x) - w0 for x in inputs]
        norms = [torch.linalg.vector_norm(o, dim=-1) for o in offsets]
        cos_sum, pairs = None, 0
        for i in range(len(offsets)):
            for j in range(i + 1, len(offsets)):
                dot = (offsets[i] * offsets[j]).sum(dim=-1)
                cos = (dot / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1)
                cos_sum = cos if cos_sum is None else cos_sum + cos
                pairs += 1
        del offsets
        cos_theta = (cos_sum / pairs).unsqueeze(-1)
        n = len(inputs)
        denominator = 1 + (n - 1) * cos_theta
        singular = denominator.abs() < 1e-6
        t = torch.where(singular, 0, n * cos_theta / torch.where(singular, 1, denominator))
        average = view(inputs[0]).clone()
        for x in inputs[1:]:
            average += view(x)
        average /= n
        return (t * average).add_((1 - t) * w0).reshape(shape)
