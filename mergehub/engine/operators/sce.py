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
from .selection import largest_mask, tiles, topk_rule


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
    stored_dtype_inputs = True  # x − base promotes bf16 inputs exactly
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
        """Streaming passes over tiles, each tile's deltas staying in cache: the variance rule
        (selection.topk_rule, counting the non-zero variances on the way), the models' energies
        (float64 sums of per-tile float32 dot products), then the merge."""
        assert base is not None
        flat_base, flat = base.reshape(-1), [x.reshape(-1) for x in inputs]
        n = flat_base.numel()
        tile = None if base.device.type == "cpu" else n  # GPUs: one launch per op

        def deltas_at(a, b) -> list[torch.Tensor]:
            return [torch.sub(x[a:b], flat_base[a:b]) for x in flat]

        keep = _variance_rule(flat_base, flat, p.shared["select_topk"], tile)
        if keep is None:  # the rule would need the zero shortcut: the exact whole-tensor mask
            return self._merge_whole(base, inputs, p)

        energy = [0.0] * len(flat)
        for a, b in tiles(n, tile):
            for k, d in enumerate(keep(deltas_at(a, b), a)):
                energy[k] += float(torch.dot(d, d))
        total = sum(energy) / n
        weights = [1 / len(flat)] * len(flat) if abs(total) < 1e-6 else [e / n / total for e in energy]

        out = ctx.empty_like(flat_base)
        for a, b in tiles(n, tile):
            out[a:b] = _erase(keep(deltas_at(a, b), a), weights).add_(flat_base[a:b])
        return out.view(base.shape)

    @staticmethod
    def _merge_whole(base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams) -> torch.Tensor:
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
        return _erase(deltas, weights).add_(base)


def _erase(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Σ_k w_k·keep_k·δ_k / max(Σ_k w_k·keep_k, 1e-6), keep_k: δ_k has the sign of Σ_k δ_k."""
    elected_positive = deltas[0].clone()
    for d in deltas[1:]:
        elected_positive += d
    elected_positive = elected_positive >= 0
    merged = torch.zeros_like(deltas[0])
    divisor = torch.zeros_like(deltas[0])
    keep = torch.empty_like(deltas[0], dtype=torch.bool)
    for d, w in zip(deltas, weights):
        torch.where(elected_positive, d > 0, d < 0, out=keep)
        merged.addcmul_(d, keep, value=w)
        divisor.add_(keep, alpha=w)
    return merged.div_(divisor.clamp_(min=1e-6))


def _variance(deltas: list[torch.Tensor]) -> torch.Tensor:
    """Population variance across the deltas, entry by entry."""
    mean = deltas[0].clone()
    for d in deltas[1:]:
        mean += d
    mean /= len(deltas)
    variance = torch.zeros_like(mean)
    for d in deltas:
        variance += (d - mean).square_()
    variance /= len(deltas)
    return variance


def _selected_count(nonzero: int, fraction: float) -> int:
    return int(torch.tensor(nonzero) * fraction)  # a float32 product, as mergekit


def _variance_rule(base: torch.Tensor, inputs: list[torch.Tensor], fraction: float, tile: int | None):
    """keep(deltas, start): a tile's deltas (flat, from ``start``) with the positions outside
    the int(#nonzero-variance·fraction) largest variances zeroed (exact count, selection.py tie
    rule), for flat ``base`` and ``inputs``; None when that needs the whole-tensor mask (the
    k-th largest variance is 0 or tiny, where the streaming rule may keep extra zeros)."""
    if fraction >= 1:
        return lambda deltas, start: deltas
    nothing = lambda deltas, start: [d.zero_() for d in deltas]  # noqa: E731
    if fraction <= 0:
        return nothing
    n, nonzero, wanted = base.numel(), 0, []

    def tile_variance(a: int, b: int) -> torch.Tensor:
        nonlocal nonzero
        variance = _variance([torch.sub(x[a:b], base[a:b]) for x in inputs])
        nonzero += int(torch.count_nonzero(variance))
        return variance

    def variance_at(positions: torch.Tensor) -> torch.Tensor:
        return _variance([torch.sub(x[positions], base[positions]) for x in inputs])

    def count() -> int:
        wanted.append(_selected_count(nonzero, fraction))
        return wanted[0]

    rule = topk_rule(n, count, tile_variance, variance_at, tile)
    if rule is None:
        return nothing if wanted[0] <= 0 else (lambda deltas, start: deltas)
    if rule.threshold <= 0:
        return None

    def keep(deltas: list[torch.Tensor], start: int) -> list[torch.Tensor]:
        variance = _variance(deltas)
        kept = variance > rule.threshold
        if start < rule.cut:  # ties at the threshold are kept before the cut
            ties = variance == rule.threshold
            ties[max(0, rule.cut - start):] = False
            kept |= ties
        dropped = kept.logical_not_()
        return [d.masked_fill_(dropped, 0) for d in deltas]

    return keep


def _high_variance(deltas: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """Mask of the int(#nonzero · fraction) positions with the largest variance across
    models (exact count, selection.py tie rule)."""
    if fraction <= 0:
        return torch.zeros_like(deltas[0], dtype=torch.bool)
    variance = _variance(deltas)
    return largest_mask(variance, _selected_count(int(torch.count_nonzero(variance)), fraction))
