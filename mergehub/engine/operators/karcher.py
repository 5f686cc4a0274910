"""karcher: the Riemannian (Karcher) mean of the inputs' directions, scaled by their mean norm.

With u_k = x_k/‖x_k‖ over the inputs with ‖x_k‖ > tol and equal weights α = 1/V:
    m ← normalise(Σ α u_k)  (u_first if that is < tol)
    repeat ≤ max_iter:  τ = Σ_{θ_k ≥ tol} α·θ_k/sin θ_k·(u_k − cos θ_k·m),  θ_k = acos⟨m, u_k⟩
                        stop if ‖τ‖ < tol;  m ← normalise(cos‖τ‖·m + sin‖τ‖·τ/‖τ‖)
    out = m · (1/K)·Σ_k ‖x_k‖   (all K inputs)
The base is "ignored": a configured base model is one more input.
"""

from __future__ import annotations

import math

import torch

from . import params as P
from . import span
from .base import MergeContext, Operator, Param, TensorParams
from .registry import register


@register
class Karcher(Operator):
    name = "karcher"
    base = "ignored"
    min_inputs = 1
    params = (
        Param("max_iter", "global", int, 10, minimum=0, help="Maximum number of iterations."),
        Param("tol", "global", float, 1e-5, minimum=0.0, help="Convergence tolerance."),
    )
    stored_dtype_inputs = True  # the span route reads them as stored; the other promotes
    help = "Equal-weight Karcher mean on the hypersphere, scaled by the mean input norm."

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return ndim < 2 or len(p.models) == 1

    def merge_stored(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
                     ctx: MergeContext, work: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor | None:
        """The span route straight into the output dtype: no float32 copy of the result."""
        if len(inputs) == 1 or work != torch.float32 or not span.applies(*inputs):
            return None
        return self._span_merge(inputs, p, ctx.empty(inputs[0].shape, out_dtype), ctx.span_passes)

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        work = ctx.work(inputs[0])
        if len(inputs) == 1:
            return inputs[0].to(work, copy=True)
        if work == torch.float32 and span.applies(*inputs):
            return self._span_merge(inputs, p, ctx.empty(inputs[0].shape, torch.float32), ctx.span_passes)
        inputs = [x.to(work) for x in inputs]
        max_iter, tol = p.shared["max_iter"], p.shared["tol"]
        dtype = P.accumulation_dtype(inputs[0])
        xs = [x.reshape(-1).to(dtype) for x in inputs]
        norms = [float(torch.linalg.vector_norm(x)) for x in xs]
        valid = [(x, n) for x, n in zip(xs, norms) if n > tol]
        scale = sum(norms) / len(norms)
        if not valid:
            return torch.zeros_like(inputs[0], dtype=dtype)
        alpha = 1.0 / len(valid)

        mean = torch.zeros_like(xs[0])
        for x, n in valid:
            mean.add_(x, alpha=alpha / n)
        mean_norm = float(torch.linalg.vector_norm(mean))
        if mean_norm < tol:
            mean = valid[0][0] / valid[0][1]
        else:
            mean.div_(mean_norm)

        tangent = torch.empty_like(mean)
        for _ in range(max_iter):
            tangent.zero_()
            for x, n in valid:
                cos = min(1.0, max(-1.0, float(torch.dot(mean, x)) / n))
                theta = math.acos(cos)
                if theta < tol:
                    continue
                c = alpha * theta / math.sin(theta)
                tangent.add_(x, alpha=c / n).add_(mean, alpha=-c * cos)
            tangent_norm = float(torch.linalg.vector_norm(tangent))
            if tangent_norm < tol:
                break
            mean.mul_(math.cos(tangent_norm))
            mean.add_(tangent, alpha=math.sin(tangent_norm) / tangent_norm)
            unit_norm = float(torch.linalg.vector_norm(mean))
            if unit_norm > tol:
                mean.div_(unit_norm)
        return mean.mul_(scale).reshape(inputs[0].shape)

    @staticmethod
    def _span_merge(inputs: list[torch.Tensor], p: TensorParams, out: torch.Tensor,
                    passes: span.Passes | None = None) -> torch.Tensor:
        """The iteration above on coefficients over the inputs, from their Gram matrix (every
        mean and tangent is a combination of the inputs), then one pass."""
        max_iter, tol, k = p.shared["max_iter"], p.shared["tol"], len(inputs)
        g = span.gram([x.reshape(-1) for x in inputs], passes=passes)
        norms = [math.sqrt(g[i][i]) for i in range(k)]
        valid = [i for i in range(k) if norms[i] > tol]
        scale = sum(norms) / k
        if not valid:
            return out.zero_()
        alpha = 1.0 / len(valid)
        mean = [alpha / norms[i] if i in valid else 0.0 for i in range(k)]
        mean_norm = span.norm(g, mean)
        if mean_norm < tol:
            mean = [1 / norms[i] if i == valid[0] else 0.0 for i in range(k)]
        else:
            mean = [m / mean_norm for m in mean]
        for _ in range(max_iter):
            tangent = [0.0] * k
            g_mean = span.inner(g, mean)  # ⟨x_i, m⟩
            for i in valid:
                cos = min(1.0, max(-1.0, g_mean[i] / norms[i]))
                theta = math.acos(cos)
                if theta < tol:
                    continue
                c = alpha * theta / math.sin(theta)
                tangent[i] += c / norms[i]
                tangent = [t - c * cos * m for t, m in zip(tangent, mean)]
            tangent_norm = span.norm(g, tangent)
            if tangent_norm < tol:
                break
            mean = [m * math.cos(tangent_norm) + t * math.sin(tangent_norm) / tangent_norm
                    for m, t in zip(mean, tangent)]
            unit_norm = span.norm(g, mean)
            if unit_norm > tol:
                mean = [m / unit_norm for m in mean]
        return span.apply(inputs, [m * scale for m in mean], None, out, deltas=False, passes=passes).view(out.shape)
