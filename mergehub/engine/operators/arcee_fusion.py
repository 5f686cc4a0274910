"""arcee_fusion: keep the expert's change only where it is important.

    importance = |x − base| · KL(softmax(x) + ε ‖ softmax(base) + ε)   (softmax and KL along
                 the last dim, so one KL value per row; ε = 1e-8)
    threshold  = median + 1.5·(q₃ − q₁) of the importance, quantile q read as the element at
                 sorted index int(q·(m − 1)); when there are more than 1M entries, of a
                 sample of 1M spread evenly over the rows, at columns drawn with
                 replacement (sample_positions; seeded per seed and tensor)
    out        = base + [importance ≥ threshold]·(x − base)

The KL of a row is computed accurately, in float64 as Σ q·(y·ln y − (y − 1)) with y = p/q:
every term is ≥ 0, so nothing cancels. mergekit sums p·ln(p/q) in float32, whose terms are
first order in the change and cancel to a second-order result; on realistic fine-tunes that
leaves its KL mostly rounding noise (docs/operators.md, arcee_fusion), so our masks follow
the formula and differ from mergekit's where mergekit's are set by rounding. Importance and
threshold are float32, as in mergekit.
"""

from __future__ import annotations

import math

import torch

from ..buffers import TILE_ELEMENTS
from . import random_stream
from .base import MergeContext, Operator, TensorParams
from .registry import register
from .selection import smallest_values

SAMPLE_SIZE = 1_000_000
SAMPLE_PURPOSE = "arcee_fusion_sample"  # the sample's positions hash with this key (MergeContext.stream_key)
KL_EPS = 1e-8


def row_divergence(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """KL(softmax(x) + ε ‖ softmax(base) + ε) of each row (along the last dim), computed in
    float64 as a sum of non-negative terms, returned in base's dtype."""
    p = torch.softmax(x.double(), dim=-1).add_(KL_EPS)
    q = torch.softmax(base.double(), dim=-1).add_(KL_EPS)
    y = p.div_(q)
    terms = y.log().mul_(y).sub_(y).add_(1).mul_(q)  # q·(y·ln y − (y − 1))
    return terms.sum(dim=-1, keepdim=True).to(base.dtype)


def importance(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    return torch.sub(x, base).abs_().mul_(row_divergence(x, base))


def threshold_of(scores: torch.Tensor) -> torch.Tensor:
    """median + 1.5·IQR of all of ``scores`` (float32, 0-D)."""
    flat = scores.reshape(-1)
    positions = (torch.tensor([0.25, 0.5, 0.75]) * (flat.numel() - 1)).long().tolist()
    q1, median, q3 = smallest_values(flat, [i + 1 for i in positions])
    return median + 1.5 * (q3 - q1)


def sample_positions(shape: tuple[int, ...], key: tuple[int, int], device: torch.device | str = "cpu") \
        -> torch.Tensor | None:
    """The flat positions whose importance the threshold is taken from, None for all (tensors of
    at most SAMPLE_SIZE entries). The sample is spread over the rows (the last dim's vectors):
    sample k of SAMPLE_SIZE lies in row ⌊k·rows / SAMPLE_SIZE⌋, so the rows' shares differ by at
    most one, at a column drawn uniformly with replacement, ⌊hash32(key, k)·width / 2^32⌋.
    Until 0.2.6 the positions were uniform over the whole tensor (torch.randint, as in
    mergekit); spread over the rows the threshold comes out as close to the exact one
    (docs/operators.md), and the loads run through memory in order instead of at random."""
    numel = math.prod(shape)
    if numel <= SAMPLE_SIZE:
        return None
    width = shape[-1]
    k = torch.arange(SAMPLE_SIZE, dtype=torch.int64, device=device)
    rows = k * (numel // width) // SAMPLE_SIZE
    return rows * width + (random_stream.hash32(key, k) * width >> 32)


def sampled_scores(scores: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """``scores`` (flat) at sample_positions, or all of them when the tensor is small enough."""
    index = sample_positions(tuple(scores.shape), key, scores.device)
    return scores.reshape(-1) if index is None else scores.reshape(-1)[index]


@register
class ArceeFusion(Operator):
    name = "arcee_fusion"
    base = "required"
    min_inputs = 1
    max_inputs = 1
    random = True  # only tensors over 1M entries are sampled
    stored_dtype_inputs = True  # x − base promotes; the KL widens x to float64 anyway
    help = "Arcee Fusion: take the expert's change where |change|·KL divergence is an outlier."

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return ndim < 2

    def merge_stored(self, base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams,
                     ctx: MergeContext, work: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor | None:
        """Rows, from the stored dtypes straight to the output's (``_merge_rows``)."""
        if base.dim() != 2 or base.device.type != "cpu":
            return None
        return self._merge_rows(base, inputs[0], ctx, work, out_dtype)

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        assert base is not None
        x = inputs[0]
        if base.numel() == 0:
            return base.clone()
        if base.dim() == 2 and base.device.type == "cpu":
            return self._merge_rows(base, x, ctx, base.dtype, base.dtype)
        x = x.to(base.dtype)
        shape = base.shape
        x, b = (x.reshape(1), base.reshape(1)) if base.dim() == 0 else (x, base)
        scores = importance(x, b)
        keep = scores >= threshold_of(sampled_scores(scores, ctx.stream_key(0, SAMPLE_PURPOSE)))
        del scores
        delta = torch.sub(x, b).mul_(keep)
        return delta.add_(b).reshape(shape)

    @staticmethod
    def _merge_rows(base: torch.Tensor, x: torch.Tensor, ctx: MergeContext, work: torch.dtype,
                    out_dtype: torch.dtype) -> torch.Tensor:
        """The same merge without a whole-tensor temporary: the rows' KL first, then the
        importance of the sampled entries only (|δ| times their row's KL), then
        out = base + [importance ≥ threshold]·δ, recomputing the importance on the way.
        ``base`` and ``x`` are widened to ``work`` (exactly) where they are stored narrower."""
        rows, width = base.shape
        if base.numel() == 0:
            return base.to(out_dtype, copy=True)
        flat_x, flat_b = x.reshape(-1), base.reshape(-1)
        key, sampled = ctx.stream_key(0, SAMPLE_PURPOSE), base.numel() > SAMPLE_SIZE
        kl = _row_divergences(base, x, work)
        if not sampled:
            scores = torch.sub(x.to(work), base.to(work)).abs_().mul_(kl[:, None])
        else:
            index = sample_positions(tuple(base.shape), key, base.device)
            scores = torch.sub(flat_x[index].to(work), flat_b[index].to(work)).abs_().mul_(kl[index // width])
        threshold = threshold_of(scores)
        out = ctx.empty(base.shape, out_dtype)
        step = max(1, TILE_ELEMENTS // max(1, width))
        for r in range(0, rows, step):
            xs, bs = x[r:r + step].to(work), base[r:r + step].to(work)
            delta = torch.sub(xs, bs)
            keep = delta.abs().mul_(kl[r:r + step, None]) >= threshold
            out[r:r + step] = delta.mul_(keep).add_(bs)
        return out


def _row_divergences(base: torch.Tensor, x: torch.Tensor, work: torch.dtype) -> torch.Tensor:
    """``work``[rows]: row_divergence over blocks of rows (no whole-tensor float64 temporaries)."""
    rows, width = base.shape
    step = max(1, TILE_ELEMENTS // max(1, width))
    kl = torch.empty(rows, dtype=work, device=base.device)
    for r in range(0, rows, step):
        kl[r:r + step] = row_divergence(x[r:r + step], base[r:r + step].to(work)).flatten()
    return kl
