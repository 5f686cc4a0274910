"""sce (Select, Calculate, Erase), unweighted deltas δ_k = x_k − base:

1. select (select_topk < 1): keep the positions whose variance across the δ_k (population
   variance) is among the int(#nonzero-variance · select_topk) largest; zero the rest;
2. calculate: w_k = mean(δ_k²) / Σ_j mean(δ_j²)  (1/K each when that sum is < 1e-6);
3. erase: elected sign = sign(Σ_k δ_k) (≥ 0 → +), keep_k = sign(δ_k) == elected;
   out = base + Σ_k w_k·keep_k·δ_k / max(Σ_k w_k·keep_k, 1e-6).
"""

from __future__ import annotations

import torch

from . import params as P
from .base import MergeContext, Operator, Param, TensorParams
from .registry import register
from .selection import largest_mask


@register
class Sce(Operator):
    name = "sce"
    base = "required"
    min_inputs = 1
    params = (
        P.INT8_MASK,
        Param("select_topk", "global", float, 1.0, minimum=0.0, maximum=1.0,
              help="Fraction of positions kept, those with the highest variance across models."),
    )
    help = ("SCE: select high-variance positions, weight models by delta energy, "
            "erase sign conflicts.")

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return ndim < 2 or len(p.models) == 1 or p.shared["select_topk"] <= 0

    def coefficients(self, p: TensorParams) -> list[float] | None:
        if p.shared["select_topk"] <= 0:
            return [0.0] * len(p.models)
        if len(p.models) == 1:  # one model: out = base + δ (below 1, its variance is 0: base)
            return [1.0 if p.shared["select_topk"] >= 1 else 0.0]
        return None

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        assert base is not None
        deltas = [x - base for x in inputs]
        topk = p.shared["select_topk"]
        if topk < 1:
            keep = _high_variance(deltas, topk)
            for d in deltas:
                d.masked_fill_(~keep, 0)
            del keep

        energy = torch.stack([d.square().mean() for d in deltas])
        total = float(energy.sum())
        weights = (torch.full_like(energy, 1 / len(deltas)) if abs(total) < 1e-6
                   else energy / total).tolist()

        elected_positive = deltas[0].clone()
        for d in deltas[1:]:
            elected_positive += d
        elected_positive = elected_positive >= 0
        merged = torch.zeros_like(base)
        divisor = torch.zeros_like(base)
        keep = torch.empty_like(base, dtype=torch.bool)
        for d, w in zip(deltas, weights):
            torch.where(elected_positive, d > 0, d < 0, out=keep)
            merged.addcmul_(d, keep, value=w)
            divisor.add_(keep, alpha=w)
        return merged.div_(divisor.clamp_(min=1e-6)).add_(base)


def _high_variance(deltas: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """Mask of the int(#nonzero · fraction) positions with the largest variance across
    models (exact count, selection.py tie rule)."""
    if fraction <= 0:
        return torch.zeros_like(deltas[0], dtype=torch.bool)
    mean = deltas[0].clone()
    for d in deltas[1:]:
        mean += d
    mean /= len(deltas)
    variance = torch.zeros_like(mean)
    for d in deltas:
        variance += (d - mean).square_()
    variance /= len(deltas)
    k = int(torch.count_nonzero(variance) * fraction)  # float32 product, as mergekit
    return largest_mask(variance, k)
