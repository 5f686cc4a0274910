"""Reinforced Agent Merging (element-wise over deltas δ_k = x_k − base).

An entry of δ_k is active where |δ_k| > epsilon; c = number of models active there.
ram:        out = base + Σ_k active_k·δ_k / max(c, 1)
            (entries changed by one model are taken as is, by several are averaged)
ramplus_tl: as ram, but a model's unique entries (c = 1) are scaled by
            λ_k = 1 + r·clip(ρ_k, 0, α),  ρ_k = #(active_k, c > 1) / max(#(active_k, c = 1), ε)
            with the counts taken over the whole tensor.
"""

from __future__ import annotations

import torch

from .base import MergeContext, Operator, Param, TensorParams
from .registry import register
from .selection import tiles

EPSILON = Param("epsilon", "global", float, 1e-5, minimum=0.0,
                help="Deltas with magnitude at or below this count as unchanged.")


def unique_boosts(n_unique: list[int], n_active: list[int], r: float, alpha: float, eps: float) -> list[float]:
    """RAM+'s λ_k = 1 + r·clip(ρ_k, 0, α), ρ_k = #shared active / max(#unique active, ε), in float32."""
    boosts = []
    for unique, active in zip(n_unique, n_active):
        rho = torch.tensor(active - unique, dtype=torch.float32) / max(unique, eps)
        boosts.append(float(1 + r * rho.clamp(0, alpha)))
    return boosts


def _active_counts(base: torch.Tensor, inputs: list[torch.Tensor], eps: float,
                   scratch: torch.Tensor) -> torch.Tensor:
    counts = torch.zeros_like(base)
    for x in inputs:
        torch.sub(x, base, out=scratch)
        counts += scratch.abs_() > eps
    return counts


@register
class Ram(Operator):
    name = "ram"
    base = "required"
    min_inputs = 1
    params = (EPSILON,)
    stored_dtype_inputs = True  # x − base promotes bf16 inputs exactly
    help = "RAM: keep entries changed by a single model, average entries changed by several."

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return True

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        assert base is not None
        eps = p.shared["epsilon"]
        delta = torch.empty_like(base)
        divisor = _active_counts(base, inputs, eps, delta).clamp_(min=1)
        merged = torch.zeros_like(base)
        for x in inputs:
            torch.sub(x, base, out=delta)
            delta.masked_fill_(delta.abs() <= eps, 0)
            merged += delta.div_(divisor)
        return merged.add_(base)


@register
class RamPlusTL(Operator):
    name = "ramplus_tl"
    base = "required"
    min_inputs = 1
    params = (
        Param("r", "global", float, 0.1, help="Strength of the boost to unique entries."),
        Param("alpha", "global", float, 0.2, help="Upper clip of the shared/unique ratio."),
        EPSILON,
    )
    stored_dtype_inputs = True  # x − base promotes bf16 inputs exactly
    help = ("RAM+ (tensor-local): like RAM, boosting each model's unique entries by its "
            "overlap ratio.")

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return ndim < 2 or len(p.models) == 1

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        """Two streaming passes over tiles (each tile's temporaries stay in cache): the counts
        of unique and shared active entries per model, then the merge. Counts are integers, so
        this gives the bits of the whole-tensor formula."""
        assert base is not None
        return self._merge(base, inputs, p, ctx.empty_like(base))

    def _merge(self, base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams,
               out: torch.Tensor) -> torch.Tensor:
        eps, r, alpha = p.shared["epsilon"], p.shared["r"], p.shared["alpha"]
        flat_base, flat, flat_out = base.reshape(-1), [x.reshape(-1) for x in inputs], out.view(-1)
        tile = None if base.device.type == "cpu" else flat_base.numel()  # GPUs: one launch per op
        n_unique, n_active = [0] * len(flat), [0] * len(flat)
        for a, b in tiles(flat_base.numel(), tile):
            actives = [torch.sub(x[a:b], flat_base[a:b]).abs_() > eps for x in flat]
            unique = sum(active.to(torch.uint8) for active in actives) == 1
            for k, active in enumerate(actives):
                n_unique[k] += int(torch.count_nonzero(active & unique))
                n_active[k] += int(torch.count_nonzero(active))
        boosts = unique_boosts(n_unique, n_active, r, alpha, eps)
        for a, b in tiles(flat_base.numel(), tile):
            tile_base = flat_base[a:b]
            delta = torch.empty_like(tile_base)
            counts = _active_counts(tile_base, [x[a:b] for x in flat], eps, delta)
            unique = counts == 1
            divisor = counts.clamp_(min=1)
            merged = torch.zeros_like(tile_base)
            for x, lam in zip(flat, boosts):
                torch.sub(x[a:b], tile_base, out=delta)
                delta.masked_fill_(delta.abs() <= eps, 0)
                delta.div_(divisor)  # divisor is 1 on unique entries
                merged += torch.where(unique, delta * lam, delta)
            flat_out[a:b] = merged.add_(tile_base)
        return out
