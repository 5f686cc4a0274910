"""Exact L1 norms of float32 tensors, for the rescale of DARE, DELLA and friends.

A float32 |v| is m·2^(max(e,1) − 150) with e its 8-bit exponent and m its 24-bit mantissa
(hidden bit included for e > 0). Summing the mantissas per exponent in int64 (256 slots) is
exact whatever the order, so the torch statement here and the compiled kernels (engine/kernels,
which fill slots in parallel) get the same value and hence the same rescale factor; a floating-point
sum would depend on the summation order and the thread count. The slots are then added exactly
as one Python integer and rounded once to float32, so only the value they describe matters:
the kernels put a chunk's (or a DELLA row's) whole sum into two slots (an integer at its
smallest exponent plus the carry at its largest).
"""

from __future__ import annotations

import math

import torch

SLOTS = 256
_CHUNK = 1 << 22
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def exponent_sums(values: torch.Tensor) -> list[int]:
    """Per float32 exponent, the sum of the mantissas of |values| (a float32 tensor)."""
    flat = values.reshape(-1)
    sums = torch.zeros(SLOTS, dtype=torch.int64, device=flat.device)
    for a in range(0, flat.numel(), _CHUNK):
        bits = flat[a:a + _CHUNK].view(torch.int32) & 0x7FFFFFFF
        exponent = bits >> 23
        mantissa = (bits & 0x7FFFFF) | ((exponent > 0).int() << 23)
        sums.index_add_(0, exponent.long(), mantissa.long())
    return [int(s) for s in sums.cpu()]


def exact_total(sums: list[int]) -> int:
    """The finite slots' sum as one integer: the value is this times 2^-149 (slot 255, Inf and
    NaN, left out). Two slot lists describe the same sum when these and their slot 255 agree."""
    return sum(count << (max(e, 1) - 1) for e, count in enumerate(sums[:SLOTS - 1]) if count)


def float32_from_sums(sums: list[int]) -> float:
    """The float32 nearest (ties to even) to the sum the slots describe; inf when an entry is
    Inf or NaN, or the sum overflows float32."""
    if sums[SLOTS - 1]:
        return math.inf
    total = exact_total(sums)
    if total == 0:
        return 0.0
    shift = max(0, total.bit_length() - 24)
    quotient, remainder = divmod(total, 1 << shift)
    if shift:
        half = 1 << (shift - 1)
        if remainder > half or (remainder == half and quotient & 1):
            quotient += 1
    value = math.ldexp(quotient, shift - 149)
    return value if value <= _FLOAT32_MAX else math.inf


def rescale_factor(before: list[int], after: list[int], eps: float) -> float | None:
    """‖δ‖₁ / ‖kept δ‖₁ as a float32 division (so applying it is a float32 multiply); None
    when either norm is below ``eps`` or not finite (no rescale: mergekit's rule, plus NaN/Inf)."""
    norm_before, norm_after = float32_from_sums(before), float32_from_sums(after)
    if not (eps <= norm_before < math.inf and eps <= norm_after < math.inf):
        return None
    return float(torch.tensor(norm_before, dtype=torch.float32) / torch.tensor(norm_after, dtype=torch.float32))
