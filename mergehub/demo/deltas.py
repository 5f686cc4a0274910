"""Seeded values of a synthetic family: base weights and the experts' deltas, chunk by chunk.

Every chunk draws from its own ``torch.Generator`` seeded by (family seed, role, tensor,
chunk), so values do not depend on generation order and a family is reproducible.

- base: linear weights ~ N(0, 0.02²) (Llama's init std), norm weights ~ 1 + N(0, 0.02²).
- dense delta of expert k on tensor t: δ ~ N(0, σₖₜ²) with σₖₜ = σ·exp(spread·z), z ~ N(0, 1)
  per (expert, tensor), so update size varies across tensors as it does in real fine-tunes;
  norm weights (≈ 1) get NORM_DELTA_FACTOR × σ, else bf16 (spacing 2⁻⁷ at 1) would round
  their deltas away.
- lora delta: δ = B·A on the chosen modules of a seeded subset of layers (per expert), with
  A ~ N(0, 1) of shape (r, in) and B ~ N(0, σ²/r) of shape (out, r), so entries of δ have
  variance σ²; every other tensor has δ = 0 and is written as the base's exact bytes.
"""

from __future__ import annotations

import hashlib
import math

import torch

from mergehub.engine.api import ConfigError

BASE_STD = 0.02
NORM_DELTA_FACTOR = 10.0
CHUNK_ELEMENTS = 1 << 22  # 4 Mi values (16 MiB in fp32) per generated chunk
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def generator(*parts: object) -> torch.Generator:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def row_chunks(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Row ranges of about CHUNK_ELEMENTS values; a 0-D/1-D tensor is one row."""
    rows = shape[0] if len(shape) >= 2 else 1
    row_len = math.prod(shape) // rows if rows else 0
    step = max(1, CHUNK_ELEMENTS // max(1, row_len))
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def chunk_shape(shape: tuple[int, ...], r0: int, r1: int) -> tuple[int, ...]:
    return (r1 - r0, *shape[1:]) if len(shape) >= 2 else shape


def base_chunk(seed: int, name: str, shape: tuple[int, ...], r0: int, r1: int, index: int) -> torch.Tensor:
    out = torch.empty(chunk_shape(shape, r0, r1), dtype=torch.float32)
    out.normal_(0.0, BASE_STD, generator=generator(seed, "base", name, index))
    if len(shape) < 2:
        out += 1.0
    return out


class DenseDelta:
    """Small Gaussian deltas on every tensor, with a per-tensor log-normal scale."""

    def __init__(self, seed: int, expert: int, sigma: float, spread: float):
        self.seed, self.expert, self.sigma, self.spread = seed, expert, sigma, spread

    def scale(self, name: str, shape: tuple[int, ...]) -> float:
        z = torch.randn(1, generator=generator(self.seed, "dense-scale", self.expert, name)).item()
        factor = NORM_DELTA_FACTOR if len(shape) < 2 else 1.0
        return factor * self.sigma * math.exp(self.spread * z)

    def chunk(self, name: str, shape: tuple[int, ...], r0: int, r1: int, index: int) -> torch.Tensor:
        out = torch.empty(chunk_shape(shape, r0, r1), dtype=torch.float32)
        g = generator(self.seed, "dense", self.expert, name, index)
        return out.normal_(0.0, self.scale(name, shape), generator=g)


class LoraDelta:
    """Low-rank deltas B·A on some modules of some layers; None (no change) elsewhere."""

    def __init__(self, seed: int, expert: int, sigma: float, rank: int, modules: tuple[str, ...],
                 layer_fraction: float, num_layers: int):
        unknown = [m for m in modules if m not in LINEAR_MODULES]
        if unknown or not modules:
            raise ConfigError(f"LoRA modules {list(modules)!r} must be among {', '.join(LINEAR_MODULES)}")
        self.seed, self.expert, self.sigma, self.rank = seed, expert, sigma, rank
        self.modules = tuple(modules)
        count = max(1, round(layer_fraction * num_layers))
        order = torch.randperm(num_layers, generator=generator(seed, "lora-layers", expert))
        self.layers = frozenset(order[:count].tolist())
        self._factors: tuple[str, torch.Tensor, torch.Tensor] | None = None

    def touches(self, name: str) -> bool:
        parts = name.split(".")
        return (len(parts) == 6 and parts[0] == "model" and parts[1] == "layers"
                and int(parts[2]) in self.layers and parts[4] in self.modules)

    def _ab(self, name: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._factors is None or self._factors[0] != name:
            out_dim, in_dim = shape
            a = torch.randn(self.rank, in_dim, generator=generator(self.seed, "lora-A", self.expert, name))
            b = torch.randn(out_dim, self.rank, generator=generator(self.seed, "lora-B", self.expert, name))
            self._factors = (name, a, b.mul_(self.sigma / math.sqrt(self.rank)))
        return self._factors[1], self._factors[2]

    def chunk(self, name: str, shape: tuple[int, ...], r0: int, r1: int, index: int) -> torch.Tensor | None:
        if not self.touches(name):
            return None
        a, b = self._ab(name, shape)
        return b[r0:r1] @ a
