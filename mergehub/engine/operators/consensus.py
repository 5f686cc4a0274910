"""Combining weighted deltas d_k = w_k·δ_k, one at a time (no K×n stack).

Plain sum (task arithmetic, *_linear, breadcrumbs):
    mixed = Σ_k d_k,  divisor = Σ_k w_k (1 when |Σ w| < 1e-8).

TIES "sum" sign consensus (ties, dare_ties, breadcrumbs_ties, della):
    elected = +1 where Σ_k d_k ≥ 0, else −1;  keep_k = sign(d_k) == elected (zeros never match)
    mixed   = Σ_k keep_k·d_k,  divisor = Σ_k keep_k·w_k (1 where 0).
Since keep_k·d_k is d_k's positive part where elected = +1 and its negative part elsewhere,
it suffices to accumulate Σ d, Σ max(d, 0), Σ min(d, 0) (and the matching weight sums).
"""

from __future__ import annotations

import torch

DIVISOR_EPS = 1e-8


class PlainSum:
    def __init__(self, like: torch.Tensor):
        self.mixed = torch.zeros_like(like)
        self.weight_sum = 0.0

    def add(self, delta: torch.Tensor, weight: float) -> None:
        self.mixed += delta
        self.weight_sum += weight

    def add_zero(self, weight: float) -> None:
        """A model whose delta is exactly zero: adds nothing but still counts in Σ w."""
        self.weight_sum += weight

    def result(self) -> tuple[torch.Tensor, float | torch.Tensor]:
        return self.mixed, self._divisor(self.weight_sum)

    @staticmethod
    def _divisor(weight_sum: float) -> float:
        return weight_sum if abs(weight_sum) >= DIVISOR_EPS else 1.0

    @classmethod
    def divisor_of(cls, weights: list[float]) -> float:
        """The divisor ``result`` gives once every model was added (each ``add`` or
        ``add_zero`` counts its weight), summed in the same order."""
        total = 0.0
        for w in weights:  # one add at a time, as ``add`` does (sum() compensates on Python ≥ 3.12)
            total += w
        return cls._divisor(total)


class SignConsensus:
    """Written with float operations only: on CPU, comparisons that make bool masks and the
    ops that consume them (where, masked_fill, adding a bool) cost 5-30x an add or a clamp.
    [d > 0] is clamp(sign d, 0, 1), [d < 0] is −clamp(sign d, −1, 0), and "pick a where
    Σd ≥ 0, else b" is a·e + b·(1 − e) with e ∈ {0, 1}; each gives the same bits as the mask
    form for finite inputs (the products by 0 and 1 are exact)."""

    def __init__(self, like: torch.Tensor, with_divisor: bool):
        self.total = torch.zeros_like(like)
        self.positive = torch.zeros_like(like)
        self.negative = torch.zeros_like(like)
        self.scratch = torch.empty_like(like)
        self.with_divisor = with_divisor
        if with_divisor:
            self.sign = torch.empty_like(like)
            self.weight_positive = torch.zeros_like(like)
            self.weight_negative = torch.zeros_like(like)

    def add_zero(self, weight: float) -> None:
        """A zero delta never matches the elected sign: it changes no sum."""

    def add(self, delta: torch.Tensor, weight: float) -> None:
        self.total += delta
        self.positive += torch.clamp(delta, min=0, out=self.scratch)
        self.negative += torch.clamp(delta, max=0, out=self.scratch)
        if self.with_divisor:
            torch.sign(delta, out=self.sign)
            self.weight_positive.add_(torch.clamp(self.sign, min=0, out=self.scratch), alpha=weight)
            self.weight_negative.sub_(torch.clamp(self.sign, max=0, out=self.scratch), alpha=weight)

    def result(self) -> tuple[torch.Tensor, torch.Tensor | float]:
        elected = torch.sign(self.total, out=self.scratch).add_(1).clamp_(max=1)  # 1 where Σd ≥ 0
        rejected = torch.sub(1, elected, out=self.total)
        mixed = self.positive.mul_(elected).addcmul_(self.negative, rejected)
        if not self.with_divisor:
            return mixed, 1.0
        divisor = self.weight_positive.mul_(elected).addcmul_(self.weight_negative, rejected)
        # 0 → 1: add 1 − |sign(divisor)|, which is 1 exactly where the divisor is 0
        divisor.add_(torch.sign(divisor, out=self.sign).abs_().neg_().add_(1))
        return mixed, divisor
