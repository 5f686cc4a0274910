"""Spherical interpolation: slerp (whole tensor), nuslerp (per vector, weights), multislerp.

slerp(a, b, t) with cos θ = ⟨a/‖a‖, b/‖b‖⟩ (norms ≤ 1e-8 treated as 1):
    |cos θ| > 0.9995:  (1 − t)·a + t·b
    otherwise:         sin((1 − t)θ)/sin θ · a + sin(tθ)/sin θ · b
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from . import params as P
from . import span
from .base import REQUIRED, MergeContext, Operator, Param, TensorParams
from .registry import register

DOT_THRESHOLD = 0.9995
NORM_EPS = 1e-8


@register
class Slerp(Operator):
    name = "slerp"
    base = "required"
    min_inputs = 1
    max_inputs = 1
    params = (Param("t", "global", float, REQUIRED, minimum=0.0, maximum=1.0,
                    help="Interpolation factor: 0 gives the base, 1 the other model."),)
    help = "Spherical linear interpolation between the base and one model, per tensor."

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return ndim < 2 or p.shared["t"] in (0.0, 1.0)

    def coefficients(self, p: TensorParams) -> list[float] | None:
        t = p.shared["t"]
        return [t] if t in (0.0, 1.0) else None

    stored_dtype_inputs = True  # the span route reads them as stored; the others promote

    def merge_stored(self, base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams,
                     ctx: MergeContext, work: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor | None:
        if p.shared["t"] in (0.0, 1.0) or work != torch.float32 or not span.applies(base, *inputs):
            return None
        return self._span_merge(base, inputs[0], p.shared["t"], ctx.empty(base.shape, out_dtype), ctx.span_passes)

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        assert base is not None
        t = p.shared["t"]
        if t == 0:  # exactly what the formula gives (sin θ / sin θ = 1, sin 0 = 0)
            return base.to(P.accumulation_dtype(base), copy=True)
        if t == 1:
            return inputs[0].to(P.accumulation_dtype(base), copy=True)
        if span.applies(base, *inputs) and base.dtype == torch.float32:
            return self._span_merge(base, inputs[0], t, ctx.empty(base.shape, torch.float32), ctx.span_passes)
        dtype = P.accumulation_dtype(base)
        a, b = base.reshape(-1).to(dtype), inputs[0].reshape(-1).to(dtype)
        if a.numel() == 0:
            return a.reshape(base.shape)
        norm_a = torch.linalg.vector_norm(a)
        norm_b = torch.linalg.vector_norm(b)
        norm_a = torch.where(norm_a > NORM_EPS, norm_a, 1)
        norm_b = torch.where(norm_b > NORM_EPS, norm_b, 1)
        dot = (torch.dot(a, b) / (norm_a * norm_b)).clamp(-1, 1)
        coef_a, coef_b = _slerp_coefficients(float(dot), t)
        out = torch.mul(a, coef_a).add_(b, alpha=coef_b)
        return out.reshape(base.shape)

    @staticmethod
    def _span_merge(base: torch.Tensor, x: torch.Tensor, t: float, out: torch.Tensor,
                    passes: span.Passes | None = None) -> torch.Tensor:
        """The same formula from the Gram matrix of (base, x), in float64, then one pass."""
        g = span.gram([base.reshape(-1), x.reshape(-1)], passes=passes)
        norm_a, norm_b = math.sqrt(g[0][0]), math.sqrt(g[1][1])
        norm_a, norm_b = (norm_a if norm_a > NORM_EPS else 1.0), (norm_b if norm_b > NORM_EPS else 1.0)
        dot = min(1.0, max(-1.0, g[0][1] / (norm_a * norm_b)))
        return span.apply([base, x], _slerp_coefficients(dot, t), None, out, deltas=False, passes=passes).view(base.shape)


def _slerp_coefficients(dot: float, t: float) -> list[float]:
    """(c_a, c_b) of slerp(a, b, t) = c_a·a + c_b·b given cos θ = ``dot``."""
    return [1 - t, t] if abs(dot) > DOT_THRESHOLD else _arc_weights(dot, t)


def _arc_weights(cos: float, t: float) -> list[float]:
    """sin((1 − t)θ)/sin θ and sin(tθ)/sin θ for cos θ = ``cos``: slerp's weights off the line."""
    theta = math.acos(cos)
    return [math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)]


def _nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool,
             flatten: bool) -> torch.Tensor:
    """slerp of each vector pair: the whole tensor (flatten), rows along the last dim, or
    columns along dim 0 (row_wise). Exact lerp where 1 − cos² θ ≤ 1e-16."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    n0 = torch.linalg.vector_norm(v0, dim=-1, keepdim=True).clamp_(min=1e-7)
    n1 = torch.linalg.vector_norm(v1, dim=-1, keepdim=True).clamp_(min=1e-7)
    cos = ((v0 / n0) * (v1 / n1)).sum(dim=-1, keepdim=True).clamp_(-1, 1)
    colinear = (1 - cos.square()) <= NORM_EPS ** 2
    theta = torch.acos(torch.where(colinear, 0, cos))
    sin_theta = torch.sin(theta)
    coef0 = torch.where(colinear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    coef1 = torch.where(colinear, t, torch.sin(t * theta) / sin_theta)
    out = torch.mul(v0, coef0).addcmul_(v1, coef1)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


@register
class NuSlerp(Operator):
    name = "nuslerp"
    base = "optional"
    min_inputs = 2
    max_inputs = 2
    params = (
        P.WEIGHT,
        Param("nuslerp_flatten", "global", bool, True,
              help="Treat the whole tensor as one vector (false: interpolate row vectors)."),
        Param("nuslerp_row_wise", "global", bool, False,
              help="Without flatten, interpolate column vectors (dim 0) instead of rows."),
    )
    help = "SLERP of two models (or their deltas from the base) with t = w₂ / (w₁ + w₂)."

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return ndim < 2 or not (p.shared["nuslerp_flatten"] or p.shared["nuslerp_row_wise"])

    stored_dtype_inputs = True  # the span route reads them as stored; the others promote

    @staticmethod
    def _t(p: TensorParams) -> float:
        w0, w1 = p.per_model("weight")
        return 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)

    def merge_stored(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
                     ctx: MergeContext, work: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor | None:
        if not p.shared["nuslerp_flatten"] or work != torch.float32 or not span.applies(base, *inputs):
            return None
        return self._span_merge(base, inputs, self._t(p), ctx.empty(inputs[0].shape, out_dtype), ctx.span_passes)

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        t = self._t(p)
        row_wise, flatten = p.shared["nuslerp_row_wise"], p.shared["nuslerp_flatten"]
        x0, x1 = inputs
        work = ctx.work(x0 if base is None else base)
        if flatten and work == torch.float32 and span.applies(base, *inputs):
            return self._span_merge(base, inputs, t, ctx.empty(x0.shape, torch.float32), ctx.span_passes)
        x0, x1 = x0.to(work), x1.to(work)
        if base is None:
            return _nuslerp(t, x0, x1, row_wise, flatten)
        return _nuslerp(t, x0 - base, x1 - base, row_wise, flatten).add_(base)

    @staticmethod
    def _span_merge(base: torch.Tensor | None, inputs: list[torch.Tensor], t: float,
                    out: torch.Tensor, passes: span.Passes | None = None) -> torch.Tensor:
        """Flattened nuslerp from the Gram matrix of the two vectors (deltas with a base)."""
        flat = [x.reshape(-1) for x in inputs]
        g = span.gram(flat, None if base is None else base.reshape(-1), passes)
        n0, n1 = max(math.sqrt(g[0][0]), 1e-7), max(math.sqrt(g[1][1]), 1e-7)
        cos = min(1.0, max(-1.0, g[0][1] / (n0 * n1)))
        coefs = [1 - t, t] if 1 - cos * cos <= NORM_EPS ** 2 else _arc_weights(cos, t)
        return span.apply(inputs, coefs, base, out, deltas=base is not None, passes=passes).view(out.shape)


@register
class MultiSlerp(Operator):
    name = "multislerp"
    base = "optional"
    min_inputs = 1
    params = (
        P.WEIGHT,
        Param("normalize_weights", "global", bool, True,
              help="Divide the weights by their sum."),
        Param("eps", "global", float, 1e-8, minimum=0.0,
              help="Small constant for numerical stability."),
    )
    help = "Barycentric interpolation of any number of models on the hypersphere."

    def validate(self, p: TensorParams, where: str) -> None:
        if p.shared["normalize_weights"] and len(p.models) > 1 and sum(p.per_model("weight")) == 0:
            raise ConfigError(f"{where}: multislerp weights sum to 0 with normalize_weights: "
                              f"true; change the weights or set normalize_weights: false")

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return ndim < 2 or len(p.models) == 1

    stored_dtype_inputs = True  # the span route reads them as stored; the others promote

    def merge_stored(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
                     ctx: MergeContext, work: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor | None:
        if len(inputs) == 1 or work != torch.float32 or not span.applies(base, *inputs):
            return None
        return self._span_merge(base, inputs, p, ctx, ctx.empty(inputs[0].shape, out_dtype))

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        """u_k = δ_k/(‖δ_k‖+ε); m = normalise(Σ w_k u_k); tangent τ = Σ w_k (u_k − ⟨u_k,m⟩ m);
        out = (m cos‖τ‖ + τ sin‖τ‖/‖τ‖) · Σ w_k ‖δ_k‖ (+ base); ‖τ‖ carries + ε."""
        work = ctx.work(inputs[0] if base is None else base)
        if len(inputs) > 1 and work == torch.float32 and span.applies(base, *inputs):
            return self._span_merge(base, inputs, p, ctx, ctx.empty(inputs[0].shape, torch.float32))
        inputs = [x.to(work) for x in inputs]
        if len(inputs) == 1:
            return inputs[0].clone()
        eps = p.shared["eps"]
        dtype = inputs[0].dtype
        weights = torch.tensor(p.per_model("weight"), dtype=dtype, device=inputs[0].device)
        if p.shared["normalize_weights"]:
            weights = weights / weights.sum()
        # δ_k flattened; our own storage when a base is subtracted, else fresh unit vectors
        units = [(x - base).reshape(-1) if base is not None else x.reshape(-1) for x in inputs]
        norms = torch.stack([torch.linalg.vector_norm(u) for u in units])
        units = [u.div_(n + eps) if base is not None else u / (n + eps)
                 for u, n in zip(units, norms)]
        w = weights.tolist()
        mean = torch.zeros_like(units[0])
        for u, wk in zip(units, w):
            mean.add_(u, alpha=wk)
        mean_norm = torch.linalg.vector_norm(mean)
        if mean_norm < eps:
            if len(inputs) == 2:  # mergekit's fallback: linear interpolation of the deltas
                d0, d1 = ((x - base) if base is not None else x for x in inputs)
                out = d0 * weights[0] + d1 * weights[1]
                return out.add_(base) if base is not None else out
            raise ConfigError(
                f"multislerp: the weighted mean direction is zero in tensor {ctx.tensor} "
                f"(antipodal inputs with balancing weights); change the weights")
        mean.div_(mean_norm)
        tangent = torch.zeros_like(mean)
        scratch = torch.empty_like(mean)
        for u, wk in zip(units, w):
            dot = torch.dot(u, mean)
            torch.sub(u, mean, alpha=float(dot), out=scratch)
            tangent.add_(scratch, alpha=wk)
        del units, scratch
        tangent_norm = torch.linalg.vector_norm(tangent) + eps
        out = mean.mul_(torch.cos(tangent_norm)).add_(
            tangent.mul_(torch.sin(tangent_norm) / tangent_norm))
        out.mul_((norms * weights).sum())
        out = out.reshape(inputs[0].shape)
        return out.add_(base) if base is not None else out

    @staticmethod
    def _span_merge(base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
                    ctx: MergeContext, out: torch.Tensor) -> torch.Tensor:
        """The formula above with every vector a combination of the δ_k, from their Gram matrix."""
        eps, k = p.shared["eps"], len(inputs)
        weights = p.per_model("weight")
        if p.shared["normalize_weights"]:
            total = sum(weights)
            weights = [w / total for w in weights]
        g = span.gram([x.reshape(-1) for x in inputs], None if base is None else base.reshape(-1), ctx.span_passes)
        norms = [math.sqrt(g[i][i]) for i in range(k)]
        unit = [1 / (n + eps) for n in norms]  # u_k = unit_k·δ_k
        mean = [w * u for w, u in zip(weights, unit)]
        mean_norm = span.norm(g, mean)
        if mean_norm < eps:
            if k == 2:  # mergekit's fallback: linear interpolation of the deltas
                return span.apply(inputs, weights, base, out, deltas=base is not None, passes=ctx.span_passes).view(out.shape)
            raise ConfigError(
                f"multislerp: the weighted mean direction is zero in tensor {ctx.tensor} "
                f"(antipodal inputs with balancing weights); change the weights")
        mean = [m / mean_norm for m in mean]
        g_mean = span.inner(g, mean)  # ⟨δ_i, m⟩
        pull = sum(w * u * gm for w, u, gm in zip(weights, unit, g_mean))  # Σ w_k ⟨u_k, m⟩
        tangent = [w * u - pull * m for w, u, m in zip(weights, unit, mean)]
        tangent_norm = span.norm(g, tangent) + eps
        scale = sum(n * w for n, w in zip(norms, weights))
        coefs = [scale * (m * math.cos(tangent_norm) + t * math.sin(tangent_norm) / tangent_norm)
                 for m, t in zip(mean, tangent)]
        return span.apply(inputs, coefs, base, out, deltas=base is not None, passes=ctx.span_passes).view(out.shape)

