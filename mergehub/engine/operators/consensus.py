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
        divisor = self.weight_sum if abs(self.weight_sum) >= DIVISOR_EPS else 1.0
        return self.mixed, divisor


class SignConsensus:
    def __init__(self, like: torch.Tensor, with_divisor: bool):
        self.total = torch.zeros_like(like)
        self.positive = torch.zeros_like(like)
        self.negative = torch.zeros_like(like)
        self.scratch = torch.empty_like(like)
        self.with_divisor = with_divisor
        if with_divisor:
            self.weight_positive = torch.zeros_like(like)
            self.weight_negative = torch.zeros_like(like)

    def add_zero(self, weight: float) -> None:
        """A zero delta never matches the elected sign: it changes no sum."""

    def add(self, delta: torch.Tensor, weight: float) -> None:
        self.total += delta
        self.positive += torch.clamp(delta, min=0, out=self.scratch)
        self.negative += torch.clamp(delta, max=0, out=self.scratch)
        if self.with_divisor:
            self.weight_positive.add_(delta > 0, alpha=weight)
            self.weight_negative.add_(delta < 0, alpha=weight)

    def result(self) -> tuple[torch.Tensor, torch.Tensor | float]:
        elected_positive = self.total >= 0
        del self.total, self.scratch
        mixed = torch.where(elected_positive, self.positive, self.negative, out=self.positive)
        if not self.with_divisor:
            return mixed, 1.0
        divisor = torch.where(elected_positive, self.weight_positive, self.weight_negative,
                              out=self.weight_positive)
        divisor.masked_fill_(divisor == 0, 1)
        return mixed, divisor
