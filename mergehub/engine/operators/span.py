"""Whole-tensor geometry through the span of the inputs: one Gram-matrix pass and one
linear-combination pass.

slerp, nuslerp (flattened), multislerp, karcher and model_stock treat each tensor as one long
vector, and every vector they build (means, tangents, interpolations) is a linear combination
of their inputs v_i (x_i, or x_i − base). So they need only the inner products ⟨v_i, v_j⟩ (the
Gram matrix G) to decide their coefficients, worked out in float64 on a k×k matrix, and one
final pass out = Σ c_i·x_i + c_base·base. That replaces a dozen whole-tensor float32 passes
and temporaries with two streaming passes, and reads the inputs in their stored dtype.

Both passes have a fixed summation order, so the compiled kernels (engine/kernels/span.py,
which hand their ``Passes`` to the operators through ``MergeContext.span_passes``) and this
torch version give the same bits (tests/engine/kernels):
* G is summed per block of ``BLOCK`` entries: entry e of a block adds its exact float64 product
  to lane e mod 8, each lane in order; the lanes are added 0..7, the blocks in order;
* out adds c_i·x_i in float64 for i in order (then the base), rounds to float32, then to the
  output dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

BLOCK = 1 << 16
LANES = 8


@dataclass(frozen=True)
class Passes:
    """The two passes over the tensors: ``gram_blocks(xs, base)`` → float64[blocks, k, k] (upper
    triangles, per block of BLOCK entries) and ``combine(xs, coefs, base, base_coef, out)``."""

    gram_blocks: Callable
    combine: Callable


def gram(xs: list[torch.Tensor], base: torch.Tensor | None = None, passes: Passes | None = None) -> list[list[float]]:
    """G[i][j] = ⟨v_i, v_j⟩ (symmetric), v_i = x_i − base (or x_i), over flat tensors."""
    k = len(xs)
    blocks = (passes or TORCH).gram_blocks(xs, base)
    totals = [[0.0] * k for _ in range(k)]
    for block in blocks.tolist():
        for i in range(k):
            for j in range(i, k):
                totals[i][j] += block[i][j]
    for i in range(k):
        for j in range(i):
            totals[i][j] = totals[j][i]
    return totals


def _gram_blocks(xs: list[torch.Tensor], base: torch.Tensor | None) -> torch.Tensor:
    n, k = xs[0].numel(), len(xs)
    out = torch.zeros(-(-n // BLOCK), k, k, dtype=torch.float64)
    for b, start in enumerate(range(0, n, BLOCK)):
        stop = min(start + BLOCK, n)
        vs = [_vector(x[start:stop], None if base is None else base[start:stop]).double() for x in xs]
        for i in range(k):
            for j in range(i, k):
                out[b, i, j] = lane_sum(torch.mul(vs[i], vs[j]))
    return out


def lane_sum(products: torch.Tensor) -> float:
    """The sum of a block's float64 ``products`` in the loops' order: entry e into lane e mod 8,
    each lane in order (a cumulative sum is sequential), then the lanes 0..7."""
    pad = -products.numel() % LANES
    lanes = torch.nn.functional.pad(products, (0, pad)).view(-1, LANES).cumsum(0)[-1].tolist()
    total = 0.0
    for lane in lanes:
        total += lane
    return total


def _vector(x: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
    """x − base in float32 (exact for stored bf16/fp16 and float32 inputs), or x widened."""
    return x.float() if base is None else x.float() - base.float()


def _combine(xs: list[torch.Tensor], coefs: list[float], base: torch.Tensor | None, base_coef: float,
             out: torch.Tensor) -> torch.Tensor:
    """``out`` (flat) ← Σ c_i·x_i + base_coef·base, in float64, rounded to float32, then to out's dtype."""
    tensors = xs + ([] if base is None else [base])
    weights = list(coefs) + ([] if base is None else [base_coef])
    for start in range(0, out.numel(), BLOCK):
        stop = min(start + BLOCK, out.numel())
        total = torch.zeros(stop - start, dtype=torch.float64, device=out.device)
        for x, c in zip(tensors, weights):
            total.add_(x[start:stop].double() * c)
        out[start:stop] = total.float().to(out.dtype)
    return out


def applies(*tensors: torch.Tensor | None) -> bool:
    """Is the span route right for these tensors: at least a block of entries (smaller ones
    are cheap either way, and keep the operators' plain float32 code), on the CPU (on a GPU
    whole-tensor ops are already fast and blocks would be many launches), float32 or narrower
    (float64 keeps the operators' own float64 code)?"""
    present = [t for t in tensors if t is not None]
    return bool(present) and present[0].numel() >= BLOCK and all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16, torch.float16) for t in present)


def inner(g: list[list[float]], a: list[float]) -> list[float]:
    """G·a: the inner products ⟨v_i, Σ_j a_j v_j⟩ of each input with a combination."""
    return [sum(row[j] * a[j] for j in range(len(a))) for row in g]


def norm(g: list[list[float]], a: list[float]) -> float:
    """‖Σ a_i v_i‖ = sqrt(aᵀ G a) (rounding can make it slightly negative: then 0)."""
    return math.sqrt(max(sum(ai * gi for ai, gi in zip(a, inner(g, a))), 0.0))


def apply(xs: list[torch.Tensor], coefs: list[float], base: torch.Tensor | None, out: torch.Tensor,
          deltas: bool, passes: Passes | None = None) -> torch.Tensor:
    """``out`` ← Σ c_i·v_i (+ base when ``deltas``, v_i = x_i − base; else v_i = x_i), flat."""
    flat = [x.reshape(-1) for x in xs]
    combine = (passes or TORCH).combine
    if deltas:
        return combine(flat, coefs, base.reshape(-1), 1.0 - sum(coefs), out.view(-1))
    return combine(flat, coefs, None, 0.0, out.view(-1))


TORCH = Passes(_gram_blocks, _combine)
