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

EPSILON = Param("epsilon", "global", float, 1e-5, minimum=0.0,
                help="Deltas with magnitude at or below this count as unchanged.")


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
    help = ("RAM+ (tensor-local): like RAM, boosting each model's unique entries by its "
            "overlap ratio.")

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return ndim < 2 or len(p.models) == 1

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        assert base is not None
        eps, r, alpha = p.shared["epsilon"], p.shared["r"], p.shared["alpha"]
        delta = torch.empty_like(base)
        counts = _active_counts(base, inputs, eps, delta)
        unique = counts == 1
        divisor = counts.clamp_(min=1)
        merged = torch.zeros_like(base)
        for x in inputs:
            torch.sub(x, base, out=delta)
            active = delta.abs() > eps
            delta.masked_fill_(~active, 0)
            n_unique = int((active & unique).sum())
            n_shared = int(active.sum()) - n_unique
            rho = torch.tensor(n_shared, dtype=torch.float32) / max(n_unique, eps)
            lam = float(1 + r * rho.clamp(0, alpha))
            delta.div_(divisor)  # divisor is 1 on unique entries
            merged += torch.where(unique, delta * lam, delta)
        return merged.add_(base)
