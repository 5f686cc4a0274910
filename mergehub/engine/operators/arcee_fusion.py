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

from ..buffers import TILE_ELEMENTS
from .base import MergeContext, Operator, TensorParams
from .registry import register
from .selection import smallest_values

SAMPLE_SIZE = 1_000_000
KL_EPS = 1e-8


def row_divergence(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """KL(softmax(x) ‖ softmax(base)) of each row (along the last dim), 1e-8 added to both."""
    p = torch.softmax(x, dim=-1).add_(KL_EPS)
    q = torch.softmax(base, dim=-1).add_(KL_EPS)
    return (p * torch.log(p / q)).sum(dim=-1, keepdim=True)


def importance(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    return torch.sub(x, base).abs_().mul_(row_divergence(x, base))


def fusion_threshold(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """median + 1.5·IQR of ``scores``, from a sample of SAMPLE_SIZE drawn with ``generator``
    when there are more."""
    flat = scores.reshape(-1)
    if flat.numel() > SAMPLE_SIZE:
        index = torch.randint(flat.numel(), (SAMPLE_SIZE,), generator=generator)
        flat = flat[index.to(flat.device)]
    positions = (torch.tensor([0.25, 0.5, 0.75]) * (flat.numel() - 1)).long().tolist()
    q1, median, q3 = smallest_values(flat, [i + 1 for i in positions])
    return median + 1.5 * (q3 - q1)


@register
class ArceeFusion(Operator):
    name = "arcee_fusion"
    base = "required"
    min_inputs = 1
    max_inputs = 1
    random = True  # only tensors over 1M entries are sampled
    stored_dtype_inputs = True  # x − base promotes; softmax gets x's rows converted block by block
    help = "Arcee Fusion: take the expert's change where |change|·KL divergence is an outlier."

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return ndim < 2

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        assert base is not None
        if base.dim() == 2 and base.device.type == "cpu":
            return self._merge_rows(base, inputs[0], ctx)
        inputs = [x.to(base.dtype) for x in inputs]
        shape = base.shape
        x, b = (inputs[0].reshape(1), base.reshape(1)) if base.dim() == 0 else (inputs[0], base)
        scores = importance(x, b)
        keep = scores >= fusion_threshold(scores, ctx.generator("arcee_fusion_quantiles"))
        del scores
        delta = torch.sub(x, b).mul_(keep)
        return delta.add_(b).reshape(shape)

    @staticmethod
    def _merge_rows(base: torch.Tensor, x: torch.Tensor, ctx: MergeContext) -> torch.Tensor:
        """The same merge in two streaming passes over blocks of rows, without whole-tensor
        temporaries but the importance itself: the KL divergence of each row (softmax and KL
        are per row, so a block of rows gives the rows' own values) and the importance, then
        out = base + [importance ≥ threshold]·δ block by block. Bit-identical to the
        whole-tensor computation."""
        rows, width = base.shape
        step = max(1, TILE_ELEMENTS // max(1, width))
        scores = ctx.empty(base.shape, base.dtype)
        block = torch.empty(min(step, rows), width, dtype=base.dtype)  # x's rows in the working dtype
        for r in range(0, rows, step):
            xs = block[:min(step, rows - r)].copy_(x[r:r + step])
            kl = row_divergence(xs, base[r:r + step])
            torch.sub(xs, base[r:r + step], out=scores[r:r + step]).abs_().mul_(kl)
        threshold = fusion_threshold(scores, ctx.generator("arcee_fusion_quantiles"))
        out = ctx.empty_like(base)
        for r in range(0, rows, step):
            keep = scores[r:r + step] >= threshold
            torch.sub(x[r:r + step], base[r:r + step], out=out[r:r + step]).mul_(keep).add_(base[r:r + step])
        return out
