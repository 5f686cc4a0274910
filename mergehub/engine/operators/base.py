"""The contract between merge operators and the executor.

An operator is a pure function over tensors plus a little metadata that lets the planner and
the executor treat it correctly:

* ``params`` declares mergekit's parameter names, scopes (shared vs per-model) and defaults;
  the config layer resolves them per tensor (filters, gradients) into a ``TensorParams``.
* ``block_local`` says whether merging a slice of rows gives the same rows as merging the
  whole tensor and slicing. If so the executor streams blocks and memory does not grow with
  tensor size; if not it hands the operator whole tensors.
* ``selection_counts`` says, for an operator that is not block-local only because it keeps
  each input's k largest |δ| over the tensor (TIES), how many: a tensor too big to hold is
  then merged block by block once the executor has found those rules (``ctx.selections``).
  ``streamed_rescale`` says the same of an L1 rescale over the tensor (DARE, DELLA), whose
  sums the executor then gathers first (``rescale_sums``, ``ctx.rescale_factors``).
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

Random operators draw only through ``ctx.draws24`` / ``ctx.random_keep`` / ``ctx.uniform``
(a counter-based stream: an entry's draw depends on (seed, tensor, model, entry) alone, never on
budget, slicing or execution order), or hash with ``ctx.stream_key(model, purpose)`` for a
stream of their own (arcee_fusion's sample positions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Sequence

import torch

from ..errors import ConfigError
from . import random_stream


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


@dataclass
class MergeContext:
    """Where the current call sits in the tensor, and the keys of its seeded random streams."""

    tensor: str
    seed: int
    row_start: int  # first row of the full tensor covered by this call
    row_end: int  # exclusive
    total_rows: int  # rows of the full tensor (see TensorInfo.rows)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # the working dtype (the config's ``dtype`` or the stored one); None: the inputs' dtype.
    # Operators with ``stored_dtype_inputs`` may receive inputs narrower than this.
    work_dtype: torch.dtype | None = None
    # allocate(shape, dtype) -> CPU tensor: where an operator may put its output; the executor
    # hands out slab memory (buffers.py), which spares the kernel re-faulting tens of MB per tensor
    allocate: Callable[[Sequence[int], torch.dtype], torch.Tensor] | None = None
    # the Gram and combination passes of the span operators (span.py): None for its torch
    # passes; the compiled kernels set theirs (engine/kernels/span.py)
    span_passes: Any = None
    # per non-base input, the rule keeping its k largest |x − base| over the whole tensor (flat
    # positions of the full tensor; None: keeps everything), found by the executor in passes
    # over the tensor's rows before this call (``Operator.selection_counts``); None otherwise
    selections: list[Any] | None = None
    # per non-base input, its L1 rescale factor over the whole tensor (None: not rescaled), found
    # by the executor in a pass over the tensor's rows before this call
    # (``Operator.streamed_rescale``); None otherwise
    rescale_factors: list[float | None] | None = None

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised CPU tensor for an operator's output."""
        return torch.empty(tuple(shape), dtype=dtype) if self.allocate is None else self.allocate(shape, dtype)

    def empty_like(self, like: torch.Tensor) -> torch.Tensor:
        """``empty`` shaped like ``like``; on another device, plain ``torch.empty_like``."""
        return self.empty(like.shape, like.dtype) if like.device.type == "cpu" else torch.empty_like(like)

    def work(self, like: torch.Tensor) -> torch.dtype:
        """The working dtype, or ``like``'s when the caller did not set one."""
        return self.work_dtype or like.dtype

    def stream_key(self, model: int, purpose: str = "drop") -> tuple[int, int]:
        """The key of ``model``'s random stream for ``purpose`` in this tensor (random_stream.py)."""
        return random_stream.stream_key(self.seed, self.tensor, model, purpose)

    def flat_start(self, shape: Sequence[int]) -> int:
        """Flat index, in the full tensor, of the first entry of this call's slice (``shape``)."""
        shape = tuple(shape)
        if len(shape) < 2:  # 0-D/1-D tensors are handed over whole
            return 0
        return self.row_start * math.prod(shape[1:])

    def draws24(self, model: int, shape: Sequence[int]) -> torch.Tensor:
        """int32 draws u24 ∈ [0, 2^24) shaped like this call's slice: entry i's draw is a hash of
        (seed, tensor, model, i), so it never depends on how the executor sliced the tensor, on
        the budget, or on execution order (random_stream.py)."""
        shape = tuple(shape)
        u = random_stream.draws24(self.stream_key(model), self.flat_start(shape), math.prod(shape), self.device)
        return u.view(shape)

    def random_keep(self, model: int, shape: Sequence[int], density: float) -> torch.Tensor:
        """Bool mask keeping each entry with probability ``density`` (DARE's drop)."""
        return self.draws24(model, shape) < random_stream.keep_threshold(density)

    def uniform(self, model: int, shape: Sequence[int]) -> torch.Tensor:
        """U[0,1) float32 draws u24·2^-24 (exact) shaped like this call's slice (DELLA)."""
        return self.draws24(model, shape).to(torch.float32).mul_(2.0 ** -random_stream.DRAW_BITS)


class Operator:
    """Base class; subclasses set the class attributes and implement ``merge``."""

    name: ClassVar[str]
    base: ClassVar[Literal["required", "optional", "ignored"]]
    min_inputs: ClassVar[int] = 1  # non-base inputs
    max_inputs: ClassVar[int | None] = None
    params: ClassVar[tuple[Param, ...]] = ()
    random: ClassVar[bool] = False
    # drops drawn from the counter-based stream (random_stream.py, since 0.2): replay refuses
    # manifests made before it (manifest.check_replayable)
    uses_random_stream: ClassVar[bool] = False
    # True when merge(base, [base]*n) == base: rows where no expert changed are then copied
    # from the base without computing (the executor's fast path for LoRA-style experts).
    zero_delta_identity: ClassVar[bool] = False
    # True when merge() accepts the non-base inputs in their stored dtype (e.g. bf16 next to a
    # float32 base) and promotes them exactly itself: the executor then skips a conversion pass.
    stored_dtype_inputs: ClassVar[bool] = False
    # Budgeted merges use low-rank sketches of the deltas unless told not to: measured to keep
    # more of the full merge's quality for every operator with a base (bench/sketches.py on the
    # trained family, docs/engine.md "Sketches"). An operator where they hurt sets False.
    sketches_by_default: ClassVar[bool] = True
    help: ClassVar[str] = ""

    def validate(self, p: TensorParams, where: str) -> None:
        """Raise ConfigError for value combinations a Param cannot express alone."""

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        return False

    def selection_counts(self, p: TensorParams, numel: int) -> list[int | None] | None:
        """When keeping each input's k largest |x − base| over the tensor (selection.py's rule)
        is what stops this operator being block-local, the k per non-base input (None: that
        input keeps everything): the executor may then find those rules in passes over a big
        tensor's rows and merge it block by block, handing them over in ``ctx.selections``.
        None (the default): the operator needs the whole tensor."""
        return None

    def streamed_rescale(self, p: TensorParams, work: torch.dtype) -> list[bool] | None:
        """When an L1 rescale over the tensor (sums that add up over its rows) is what stops this
        operator being block-local, per non-base input whether it is rescaled: the executor may
        then sum over a big tensor's rows first (``rescale_sums``, computed in ``work``) and merge
        it block by block, handing the factors over in ``ctx.rescale_factors``. None (the
        default): the operator needs the whole tensor."""
        return None

    def rescale_sums(self, base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams,
                     ctx: MergeContext) -> list[tuple[list[int], list[int]] | None]:
        """Per non-base input, the exact L1 slots (exact_sum.py) of its pruned delta's rows
        ``ctx`` says, before and after pruning (None where ``streamed_rescale`` said no)."""
        raise NotImplementedError

    def merge_stored(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
                     ctx: MergeContext, work: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor | None:
        """Optional torch route for a unit on the CPU (the whole tensor, or rows of it for a
        block-local operator; ``ctx`` says which) that reads ``base`` and ``inputs`` in their
        stored dtypes (an input that ``is base`` was not read; ``base`` is None when the merge
        has none, or the operator ignores it) and writes the result in ``out_dtype`` without a
        working-dtype copy (the span operators' single combination pass, span.py).
        It must equal ``merge`` on everything widened to ``work``, rounded to ``out_dtype``.
        None: not handled here, the executor calls ``merge``. Compiled fast paths do not go
        here: they are kernels (engine/kernels), which the executor tries first."""
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
