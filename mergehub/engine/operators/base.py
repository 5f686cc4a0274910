"""The contract between merge operators and the executor.

An operator is a pure function over tensors plus a little metadata that lets the planner and
the executor treat it correctly:

* ``params`` declares mergekit's parameter names, scopes (shared vs per-model) and defaults;
  the config layer resolves them per tensor (filters, gradients) into a ``TensorParams``.
* ``block_local`` says whether merging a slice of rows gives the same rows as merging the
  whole tensor and slicing. If so the executor streams blocks and memory does not grow with
  tensor size; if not it hands the operator whole tensors.
* ``coefficients`` returns fixed c_k with out = base + Σ c_k·δ_k when the operator is additive
  with fixed coefficients (task arithmetic and friends); the planner then certifies
  ‖θ_A − θ_full‖₂ ≤ Σ_{(k,b)∉A} |c_k|·‖δ_kb‖₂. Otherwise ``None`` (no certificate).
* ``merge`` receives the base (or None) and the non-base inputs on the working device, cast
  to the working dtype (left in their stored dtype when the operator sets
  ``stored_dtype_inputs`` and the working dtype holds them exactly, e.g. bf16 under float32).
  Under a budget, an expert block that was not read holds the
  base's values there (δ = 0), so operators never see "missing" data. ``merge`` must not
  modify its arguments in place (they may be views of read buffers shared with the caller).
* A ``Param`` whose default is ``None`` is optional: ``None`` means "not given".

Random operators draw only through ``ctx.uniform`` / ``ctx.generator`` so that the draw for a
block depends on (seed, tensor, model, block) alone, never on budget or execution order.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Sequence

import torch

from ..errors import ConfigError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Param:
    name: str
    scope: Literal["global", "model"]
    kind: type  # float, int or bool
    default: Any = REQUIRED
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None

    def coerce(self, value: Any, where: str) -> Any:
        """Type-check one resolved value (after gradient interpolation)."""
        if value is None and self.default is None:
            return None  # optional parameter left out
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            raise ConfigError(f"{where}: {self.name} must be true or false, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {self.name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {self.name} must be a finite number, got {value!r}")
        if self.kind is int:
            if float(value) != int(value):
                raise ConfigError(f"{where}: {self.name} must be a whole number, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{where}: {self.name} must be ≥ {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{where}: {self.name} must be ≤ {self.maximum}, got {value}")
        return value


@dataclass
class TensorParams:
    """Parameter values resolved for one tensor."""

    shared: dict[str, Any] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)  # one dict per non-base input

    def per_model(self, name: str) -> list[Any]:
        return [m[name] for m in self.models]


def _seed64(*parts: object) -> int:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class MergeContext:
    """Where the current call sits in the tensor, and the seeded random source."""

    tensor: str
    seed: int
    row_start: int  # first row of the full tensor covered by this call
    row_end: int  # exclusive
    total_rows: int  # rows of the full tensor (see TensorInfo.rows)
    rows_per_block: int  # block geometry of the tensor: the unit random draws are made in
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # allocate(shape, dtype) -> CPU tensor: where an operator may put its output; the executor
    # hands out slab memory (buffers.py), which spares the kernel re-faulting tens of MB per tensor
    allocate: Callable[[Sequence[int], torch.dtype], torch.Tensor] | None = None

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised CPU tensor for an operator's output."""
        return torch.empty(tuple(shape), dtype=dtype) if self.allocate is None else self.allocate(shape, dtype)

    def empty_like(self, like: torch.Tensor) -> torch.Tensor:
        """``empty`` shaped like ``like``; on another device, plain ``torch.empty_like``."""
        return self.empty(like.shape, like.dtype) if like.device.type == "cpu" else torch.empty_like(like)

    def uniform(self, model: int, shape: Sequence[int]) -> torch.Tensor:
        """U[0,1) draws shaped like this call's slice (``shape``), made of one stream per block
        seeded by (seed, tensor, model, block): a block's draw never depends on how the executor
        sliced the tensor, on the budget, or on execution order."""
        shape = tuple(shape)
        if len(shape) < 2:  # 0-D/1-D tensors are one row, one block
            return self._draw(model, 0, shape)
        rpb, parts, r = self.rows_per_block, [], self.row_start
        while r < self.row_end:
            b = r // rpb
            first, last = b * rpb, min((b + 1) * rpb, self.total_rows)
            block = self._draw(model, b, (last - first,) + shape[1:])
            stop = min(last, self.row_end)
            parts.append(block[r - first:stop - first])
            r = stop
        return torch.cat(parts, dim=0)

    def _draw(self, model: int, block: int, shape: tuple[int, ...]) -> torch.Tensor:
        g = torch.Generator(device="cpu")
        g.manual_seed(_seed64(self.seed, self.tensor, model, block))
        return torch.rand(shape, generator=g, dtype=torch.float32).to(self.device)

    def generator(self, purpose: str, model: int = -1) -> torch.Generator:
        """A CPU generator for tensor-global sampling, seeded by (seed, tensor, purpose, model)."""
        g = torch.Generator(device="cpu")
        g.manual_seed(_seed64(self.seed, self.tensor, purpose, model))
        return g


class Operator:
    """Base class; subclasses set the class attributes and implement ``merge``."""

    name: ClassVar[str]
    base: ClassVar[Literal["required", "optional", "ignored"]]
    min_inputs: ClassVar[int] = 1  # non-base inputs
    max_inputs: ClassVar[int | None] = None
    params: ClassVar[tuple[Param, ...]] = ()
    random: ClassVar[bool] = False
    # True when merge(base, [base]*n) == base: rows where no expert changed are then copied
    # from the base without computing (the executor's fast path for LoRA-style experts).
    zero_delta_identity: ClassVar[bool] = False
    # True when merge() accepts the non-base inputs in their stored dtype (e.g. bf16 next to a
    # float32 base) and promotes them exactly itself: the executor then skips a conversion pass.
    stored_dtype_inputs: ClassVar[bool] = False
    help: ClassVar[str] = ""

    def validate(self, p: TensorParams, where: str) -> None:
        """Raise ConfigError for value combinations a Param cannot express alone."""

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return False

    def merge_stored(self, base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams,
                     ctx: MergeContext, work: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor | None:
        """Optional fast path for a whole tensor on the CPU: ``base`` and ``inputs`` in their
        stored dtypes (an input that ``is base`` was not read), the result in ``out_dtype``.
        It must equal ``merge`` on everything widened to ``work``, rounded to ``out_dtype``.
        None: not handled here, the executor calls ``merge``."""
        return None

    def coefficients(self, p: TensorParams) -> list[float] | None:
        return None

    def planning_weights(self, p: TensorParams) -> list[float]:
        """|c_k| proxies used to rank blocks; defaults to |weight| or 1."""
        coeffs = self.coefficients(p)
        if coeffs is not None:
            return [abs(c) for c in coeffs]
        return [abs(float(m.get("weight", 1.0))) for m in p.models]

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        raise NotImplementedError
