"""The random stream behind DARE and DELLA drops: a counter-based hash, not a sequential
generator.

Entry i (flat index in the full tensor) of model k draws

    u24(i) = mix32(mix32(lo32(i) ^ key0) + (hi32(i) ^ key1)) >> 8        (24 bits, all 32-bit wrapping)

with (key0, key1) hashed from (seed, tensor, model) and mix32 a bijective 32-bit mixer
(C. Wellons' "lowbias32"). A draw depends on nothing else: not on how the executor slices
the tensor, on the budget, on the order of work or on the thread count, so the compiled kernels
(engine/kernels/kernels.c, which hash the same way) and this torch version agree bit for bit,
and a manifest replays exactly. An entry is kept at density d when u24 < ceil(d·2^24), i.e. with
probability d rounded up to a multiple of 2^-24; as a float, u = u24·2^-24 ∈ [0, 1) exactly.

(Before 0.2 the engine drew per block with ``torch.rand``: serial, ~10 ns an entry, and
impossible for the compiled kernels to reproduce. Manifests of random merges made before then
do not replay bit-identically.)
"""

from __future__ import annotations

import hashlib
import math

import torch

DRAW_BITS = 24
ALL_DRAWS = 1 << DRAW_BITS
_MASK32 = 0xFFFFFFFF
_CHUNK = 1 << 20  # entries hashed at once by the torch version (int64 temporaries)


def stream_key(seed: int, tensor: str, model: int, purpose: str = "drop") -> tuple[int, int]:
    """(key0, key1): the 32-bit halves of a hash of (seed, tensor, purpose, model)."""
    digest = hashlib.blake2b(f"{seed}\x1f{tensor}\x1f{purpose}\x1f{model}".encode(), digest_size=8).digest()
    key = int.from_bytes(digest, "little")
    return key & _MASK32, key >> 32


def keep_threshold(density: float) -> int:
    """Entries with u24 below this are kept at ``density`` (0 keeps none, ALL_DRAWS all)."""
    return min(ALL_DRAWS, max(0, math.ceil(density * ALL_DRAWS)))


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x·constant) mod 2^32 for int64 x in [0, 2^32), in 16-bit halves so nothing overflows."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash32(key: tuple[int, int], i: torch.Tensor) -> torch.Tensor:
    """int64 in [0, 2^32): mix32(mix32(lo32(i) ^ key0) + (hi32(i) ^ key1)) of int64 ``i`` (u24 is
    this >> 8)."""
    key0, key1 = key
    inner = _mix32((i & _MASK32) ^ key0)
    return _mix32((inner + ((i >> 32) ^ key1)) & _MASK32)


def draws24(key: tuple[int, int], start: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """int32[count]: u24 of flat entries start … start + count − 1."""
    out = torch.empty(count, dtype=torch.int32, device=device)
    for a in range(0, count, _CHUNK):
        i = torch.arange(start + a, start + min(a + _CHUNK, count), dtype=torch.int64, device=device)
        out[a:a + i.numel()] = hash32(key, i) >> 8
    return out
