"""arcee_fusion: keep the expert's change only where it is important.

    importance = |x − base| · KL(softmax(x) ‖ softmax(base))   (softmax and KL along the
                 last dim, so one KL value per row; 1e-8 added to both distributions)
    threshold  = median + 1.5·(q₃ − q₁) of the importance, quantile q read as the element at
                 sorted index int(q·(m − 1)); when there are more than 1M entries, of a
                 sample of 1M drawn with replacement (seeded by ctx.generator)
    out        = base + [importance ≥ threshold]·(x − base)
"""

from __future__ import annotations

import torch

from .base import MergeContext, Operator, TensorParams
from .registry import register
from .selection import kth_smallest

SAMPLE_SIZE = 1_000_000
KL_EPS = 1e-8


def importance(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(x, dim=-1).add_(KL_EPS)
    q = torch.softmax(base, dim=-1).add_(KL_EPS)
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    del p, q
    return torch.sub(x, base).abs_().mul_(kl)


def fusion_threshold(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flat = scores.reshape(-1)
    if flat.numel() > SAMPLE_SIZE:
        index = torch.randint(flat.numel(), (SAMPLE_SIZE,), generator=generator)
        flat = flat[index.to(flat.device)]
    positions = (torch.tensor([0.25, 0.5, 0.75]) * (flat.numel() - 1)).long().tolist()
    q1, median, q3 = (kth_smallest(flat, i + 1) for i in positions)
    return median + 1.5 * (q3 - q1)


@register
class ArceeFusion(Operator):
    name = "arcee_fusion"
    base = "required"
    min_inputs = 1
    max_inputs = 1
    random = True  # only tensors over 1M entries are sampled
    help = "Arcee Fusion: take the expert's change where |change|·KL divergence is an outlier."

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return ndim < 2

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        assert base is not None
        shape = base.shape
        x, b = (inputs[0].reshape(1), base.reshape(1)) if base.dim() == 0 else (inputs[0], base)
        scores = importance(x, b)
        keep = scores >= fusion_threshold(scores, ctx.generator("arcee_fusion_quantiles"))
        del scores
        delta = torch.sub(x, b).mul_(keep)
        return delta.add_(b).reshape(shape)
