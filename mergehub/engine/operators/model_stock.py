"""model_stock: interpolate between the base and the experts' average by their agreement.

    cos θ = mean over pairs (i<j) of ⟨δ_i, δ_j⟩ / max(‖δ_i‖‖δ_j‖, 1e-6), clamped to [−1, 1]
    t = N·cos θ / (1 + (N − 1)·cos θ)   (t = 0 where |1 + (N − 1)·cos θ| < 1e-6)
    out = t·mean(x_k) + (1 − t)·base
Over the whole tensor (through span.py on the CPU: the deltas' Gram matrix in float64, then one
pass), or with ``filter_wise`` per vector along the last dim (per row).
"""

from __future__ import annotations

import math

import torch

from . import span
from .base import MergeContext, Operator, Param, TensorParams
from .registry import register


@register
class ModelStock(Operator):
    name = "model_stock"
    base = "required"
    min_inputs = 2
    params = (Param("filter_wise", "global", bool, False,
                    help="Compute the interpolation factor per row instead of per tensor."),)
    stored_dtype_inputs = True  # x − base and average += x promote bf16 inputs exactly
    help = "Model Stock: move from the base towards the experts' mean by their delta agreement."

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return ndim < 2 or p.shared["filter_wise"]

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        assert base is not None
        if p.shared["filter_wise"] or base.dim() < 2:
            view = (lambda x: x.reshape(1, -1)) if base.dim() < 2 else (lambda x: x)
            return self._merge_rows(view(base), [view(x) for x in inputs]).reshape(base.shape)
        if span.applies(base, *inputs) and base.dtype == torch.float32:
            return self._merge_tensor(base, inputs, ctx.empty(base.shape, torch.float32), ctx.span_passes)
        return self._merge_rows(base.reshape(1, -1), [x.reshape(1, -1) for x in inputs]).reshape(base.shape)

    @staticmethod
    def _merge_rows(w0: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Per row (vectors along the last dim) of 2-D ``w0`` and ``inputs``."""
        offsets = [x - w0 for x in inputs]
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
        average = inputs[0].to(w0.dtype, copy=True)
        for x in inputs[1:]:
            average += x
        average /= n
        return (t * average).add_((1 - t) * w0)

    def merge_stored(self, base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams,
                     ctx: MergeContext, work: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor | None:
        if p.shared["filter_wise"] or base.dim() < 2 or work != torch.float32 or not span.applies(base, *inputs):
            return None
        return self._merge_tensor(base, inputs, ctx.empty(base.shape, out_dtype), ctx.span_passes)

    @staticmethod
    def _merge_tensor(base: torch.Tensor, inputs: list[torch.Tensor], out: torch.Tensor,
                      passes: span.Passes | None = None) -> torch.Tensor:
        """The whole tensor as one vector: the deltas' Gram matrix (span.py, float64), then
        out = Σ (t/N)·x_k + (1 − t)·base in one pass. Inputs may be in their stored dtype."""
        n = len(inputs)
        g = span.gram([x.reshape(-1) for x in inputs], base.reshape(-1), passes)
        cos_sum, pairs = 0.0, 0
        for i in range(n):
            for j in range(i + 1, n):
                norms = math.sqrt(max(g[i][i], 0.0)) * math.sqrt(max(g[j][j], 0.0))
                cos_sum += min(1.0, max(-1.0, g[i][j] / max(norms, 1e-6)))
                pairs += 1
        cos_theta = cos_sum / pairs
        denominator = 1 + (n - 1) * cos_theta
        t = 0.0 if abs(denominator) < 1e-6 else n * cos_theta / denominator
        return span.apply(inputs, [t / n] * n, base, out, deltas=True, passes=passes).view(base.shape)
