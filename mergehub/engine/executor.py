"""Stream a merge: read the base once and only the planned expert blocks, compute, write.

Work is cut into *units*. For a block-local operator a unit is a run of consecutive blocks
whose set of read experts is the same (capped at ``UNIT_BYTES`` of base rows), so memory does
not grow with tensor size and every expert in a unit is either read whole or not at all. For
other operators a unit is a whole tensor, unless it is too big to hold and the operator needs
it whole only for statistics that add up over rows (TIES' top-k, DARE's and DELLA's rescale):
then its pieces are loaded once per counting pass and once more to merge (streamed.py). An
expert block that is not read takes the base's values (δ = 0); if no expert was read in a unit
and the operator is the identity on zero deltas, the base rows are copied without computing.

Three threads overlap the stages: a loader does all reads (its small read pool splits large
ranges into concurrent pieces, each measured by the storage counter of the thread reading
it), the caller's thread computes, a writer appends the output. A unit's inputs and output
live in a slab from a pool of ``POOL_SLABS`` (buffers.py), returned once the unit is written:
that bounds memory and spares the kernel re-faulting fresh buffers. On the CPU a block-local
unit is computed in tiles of a few rows, so each operator's temporaries stay in cache.

Optionally the same pass evaluates *reference* access sets (every changed block, and the
budgets of a sweep): the extra blocks come from a separate verification reader, so the
merge's own I/O stays honest, and ‖θ_A − θ_full‖, ‖θ_full − θ₀‖, ‖θ_full‖ are accumulated.

Sketches: for an (expert, tensor) the plan sketched at rank r, the expert's rows start as
base + A_r·B_rᵀ (the catalog's low-rank factors, read with their own reader and counted apart) on
the tensor's changed blocks, computed in float32 (float64 for a float64 merge) and rounded once
to the working dtype; the blocks the plan reads replace them. Such units skip the stored-dtype
fast path (their inputs are in the working dtype already).

Every computed unit's output, in the output dtype, is checked for Inf/NaN (``all_finite``, one
pass over its bits; Inf/NaN in the working dtype stays Inf/NaN through the cast). If the unit's
inputs were all finite, the merge stops with NonFiniteOutput naming the tensor before the unit
reaches the writer; inputs that already held Inf/NaN pass them through, as they always did.
"""

from __future__ import annotations

import functools
import gc
import math
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from . import kernels
from .blocks import block_count, rows_per_block
from .buffers import ALIGN, MAX_KEPT_BYTES, TILE_ELEMENTS, Slab, SlabPool, retained_heap
from .layers import count_layers, layer_index
from .config_types import MergeConfig
from .control import Control
from .dtypes import CONFIG_NAME, TORCH_TO_SAFETENSORS, torch_dtype
from .errors import NonFiniteOutput
from .layout import ModelLayout, TensorInfo
from .operators.base import MergeContext, TensorParams
from .reader import RangeReader
from .sketch import approximate_rows, factor_layout
from .streamed import MERGE, StreamedTensor, streams
from .writer import OutSpec

UNIT_BYTES = 16 << 20
# A whole-tensor unit whose inputs and output would take more than this is merged block by block
# after passes that gather its statistics (streamed.py), when the operator allows it:
# POOL_SLABS units in flight then take at most 1.5 GiB whatever the model's size. Not less:
# the passes read the tensor twice more (from the page cache) and the first read is buffered.
STREAMED_TENSOR_BYTES = 384 << 20
BIG_WHOLE_FACTOR = 4  # a whole-tensor unit this many times the median tensor moves to the middle
POOL_SLABS = 4  # units in flight: loading, queued, computing, writing
READ_THREADS = 4  # concurrent pieces of one read (see reader.PIECE_BYTES)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("--device cuda was asked for but no CUDA device is available; use auto or cpu")
    return torch.device(name)


@dataclass
class Unit:
    tensor: str
    row_start: int
    row_end: int
    blocks: range  # block indices covered
    whole: bool  # the operator gets the whole tensor
    # a streamed tensor's pieces are loaded once per counting pass (``streamed.stages``), then
    # merged; every other unit is only merged
    stage: str = MERGE
    streamed: StreamedTensor | None = None  # shared by a streamed tensor's units


@dataclass
class Loaded:
    unit: Unit
    slab: Slab  # holds base, experts and the output; back to the pool once written
    base: torch.Tensor  # stored dtype, CPU
    experts: list[torch.Tensor | None]  # stored dtype; None = nothing read (equals base)
    read_blocks: list[set[int]]  # per expert: blocks whose real bytes are in experts[k]
    approx: list[dict[int, torch.Tensor]] = field(default_factory=list)  # per expert: rank -> base + sketch
    selections: dict[int, list] = field(default_factory=dict)  # variant -> rules (a streamed piece's)


@dataclass
class Deviation:
    """Accumulates squared norms for one evaluated access set."""

    diff_sq: float = 0.0  # ‖θ_A − θ_full‖²
    update_sq: float = 0.0  # ‖θ_full − θ₀‖²
    weight_sq: float = 0.0  # ‖θ_full‖²
    per_layer: dict = field(default_factory=dict)  # layer -> [diff_sq, update_sq]

    def result(self) -> dict:
        upd = math.sqrt(self.update_sq)
        return {
            "absolute": math.sqrt(self.diff_sq),
            "update_norm": upd,
            "update_relative": math.sqrt(self.diff_sq) / upd if upd else 0.0,
            "weight_relative": math.sqrt(self.diff_sq / self.weight_sq) if self.weight_sq else 0.0,
            "per_layer": {str(k): (math.sqrt(d / u) if u else 0.0)
                          for k, (d, u) in sorted(self.per_layer.items(), key=lambda kv: str(kv[0]))},
        }


@dataclass
class ExecStats:
    expert_logical: int = 0
    expert_storage: int = 0
    base_logical: int = 0
    base_storage: int = 0
    verify_logical: int = 0
    verify_storage: int = 0
    # bytes the counting passes over streamed tensors asked for, beyond the merge's own (their
    # storage reads, nearly all in the first pass, are counted with the base's, the experts'
    # and the verification's)
    reread_logical: int = 0
    sketch_logical: int = 0  # sketch factors (expert-derived bytes from the catalog)
    sketch_storage: int = 0
    read_s: float = 0.0
    compute_s: float = 0.0
    write_s: float = 0.0
    per_expert_logical: list[int] = field(default_factory=list)
    per_expert_storage: list[int] = field(default_factory=list)


class Executor:
    def __init__(self, config: MergeConfig, base: ModelLayout | None, experts: list[ModelLayout],
                 access: list[dict[str, list[int]]], block_size: int, seed: int,
                 device: torch.device, control: Control,
                 references: list[list[dict[str, list[int]]]] | None = None,
                 full_access: list[dict[str, list[int]]] | None = None,
                 sketches: list[dict[str, int]] | None = None,
                 reference_sketches: list[list[dict[str, int]]] | None = None,
                 sketch_files: list | None = None):
        """``access``: blocks the merge reads. ``references``: access sets to evaluate against
        the full merge (``full_access`` = every changed block), read beyond ``access``.
        ``sketches`` (per expert: tensor -> rank of the sketch the merge uses; ``reference_sketches``
        likewise per reference) need ``sketch_files`` (per expert: the catalog's factor file)
        and ``full_access`` (a sketch stands in on changed blocks only)."""
        self.config, self.op = config, config.operator
        self.base, self.experts = base, experts
        self.uses_base = base is not None and self.op.base != "ignored"
        self.ref_layout = base if base is not None else experts[0]
        self.block_size, self.seed, self.device, self.control = block_size, seed, device, control
        self.access = [{t: set(bs) for t, bs in per.items()} for per in access]
        self.references = [[{t: set(bs) for t, bs in per.items()} for per in ref]
                           for ref in (references or [])]
        self.full = [{t: set(bs) for t, bs in per.items()} for per in (full_access or access)]
        self.evaluate = bool(self.references)
        none = [{} for _ in experts]
        self.sketches = [dict(s) for s in sketches] if sketches else none
        self.ref_sketches = [[dict(s) for s in rs] if rs else none
                             for rs in (reference_sketches or [None] * len(self.references))]
        self.sketch_files = list(sketch_files or [None] * len(experts))
        self._approximated: list[dict[str, set[int]]] = [{} for _ in experts]  # k -> tensor -> ranks
        for per in (self.sketches, *self.ref_sketches):
            for k, chosen in enumerate(per):
                for t, r in chosen.items():
                    self._approximated[k].setdefault(t, set()).add(r)
        self.layers = count_layers(list(self.ref_layout.tensors))
        self.stats = ExecStats(per_expert_logical=[0] * len(experts), per_expert_storage=[0] * len(experts))
        self.deviations = [Deviation() for _ in self.references]
        self._ref_is_access = [ref == self.access and rs == self.sketches
                               for ref, rs in zip(self.references, self.ref_sketches)]
        # the access sets a unit is loaded for, and the access sets (with sketches) the operator
        # merges with: the merge's own, then, when evaluating, the full read and each reference
        self.loaded_sets = self.full if self.evaluate else self.access
        self.variants = [(self.access, self.sketches)]
        if self.evaluate:
            self.variants += [(self.full, none), *zip(self.references, self.ref_sketches)]

    # ----- planning the units -------------------------------------------------------------
    def out_specs(self) -> list[OutSpec]:
        tensors = self.ref_layout.tensors
        return [OutSpec(name, self._out_dtype(tensors[name]), tensors[name].shape) for name in self.tensor_order()]

    def tensor_order(self) -> list[str]:
        """The order tensors are merged and written in: the base's, except that whole-tensor
        units far larger than the rest (an embedding, an LM head: ≥ BIG_WHOLE_FACTOR times the
        median tensor) are spread evenly through the middle. First, the pipeline would compute
        nothing while such a unit's inputs are read; last, it would read nothing while the unit
        is computed and written. In the middle, smaller units fill both gaps."""
        tensors = self.ref_layout.tensors
        names = list(tensors)
        sizes = sorted(info.rows * info.row_bytes for info in tensors.values())
        floor = max(UNIT_BYTES, BIG_WHOLE_FACTOR * sizes[len(sizes) // 2]) if sizes else 0
        big = [name for name in names if tensors[name].rows * tensors[name].row_bytes >= floor
               and self._whole(tensors[name], self.config.resolve(name, self.layers))]
        rest = [name for name in names if name not in set(big)]
        if not big or not rest:
            return names
        order, step = list(rest), len(rest) / (len(big) + 1)
        for i, name in enumerate(big):
            order.insert(round(step * (i + 1)) + i, name)
        return order

    def _whole(self, info: TensorInfo, p: TensorParams) -> bool:
        """Is this tensor, with its resolved parameters ``p``, merged as one unit (not block by
        block)?"""
        return (not torch_dtype(info.dtype).is_floating_point or len(info.shape) < 2
                or not self.op.block_local(p, len(info.shape)))

    def _out_dtype(self, info: TensorInfo) -> str:
        stored = torch_dtype(info.dtype)
        if stored.is_floating_point and self.config.out_dtype is not None:
            return TORCH_TO_SAFETENSORS[self.config.out_dtype]
        return info.dtype

    def units(self):
        for name in self.tensor_order():
            info = self.ref_layout.tensors[name]
            p = self.config.resolve(name, self.layers)
            if not self._whole(info, p):
                yield from ((unit, p) for unit in self._pieces(name, info))
            elif (streamed := self._streamed(info, p)) is not None and not self._unread(name):
                for stage in streamed.stages:
                    yield from ((Unit(u.tensor, u.row_start, u.row_end, u.blocks, False, stage, streamed), p)
                                for u in self._pieces(name, info))
            elif streamed is not None:  # every access set sees the base's rows: copied piece by piece
                yield from ((unit, p) for unit in self._pieces(name, info))
            else:
                yield Unit(name, 0, info.rows, range(block_count(info, self.block_size)), True), p

    def _pieces(self, name: str, info: TensorInfo):
        """A tensor merged block by block, as units: runs of blocks whose set of read experts is
        the same, of at most ``UNIT_BYTES`` of rows."""
        rpb = rows_per_block(info, self.block_size)
        nblocks = block_count(info, self.block_size)
        cap = max(1, (UNIT_BYTES // max(1, info.row_bytes)) // rpb)  # blocks per unit
        key = lambda b: tuple(b in per.get(name, ()) for per in self.loaded_sets)  # noqa: E731
        b0 = 0
        while b0 < nblocks:
            k0, b1 = key(b0), b0 + 1
            while b1 < nblocks and b1 - b0 < cap and key(b1) == k0:
                b1 += 1
            yield Unit(name, b0 * rpb, min(b1 * rpb, info.rows), range(b0, b1), False)
            b0 = b1

    def _unread(self, name: str) -> bool:
        """Is this tensor left out of every access set the merge reads or evaluates (no block
        read, no sketch)?"""
        sketched = [self.sketches, *self.ref_sketches]
        return (not any(per.get(name) for per in self.loaded_sets)
                and not any(name in s for per in sketched for s in per))

    def _streamed(self, info: TensorInfo, p: TensorParams) -> StreamedTensor | None:
        """The statistics to gather when this whole-tensor unit is too big to hold and the
        operator allows it to be streamed (merged by pieces once passes over them have gathered
        them); None when it is merged whole."""
        work = self._work_dtype(info)
        if not (self.uses_base and torch_dtype(info.dtype).is_floating_point and streams(work, len(info.shape))):
            return None
        if info.rows * info.row_bytes * (len(self.experts) + 2) <= STREAMED_TENSOR_BYTES:
            return None
        numel, variants = math.prod(info.shape), len(self.variants)
        if (counts := self.op.selection_counts(p, numel)) is not None:
            return StreamedTensor(numel, work, variants, counts=counts)
        if (rescaled := self.op.streamed_rescale(p, work)) is not None:
            return StreamedTensor(numel, work, variants, rescaled=rescaled)
        return None

    # ----- loading ---------------------------------------------------------------------------
    def _load(self, unit: Unit, readers, slab: Slab, sketch_source=None) -> Loaded:
        base_reader, expert_readers, verify_reader = readers
        info = self.ref_layout.tensors[unit.tensor]
        rpb = rows_per_block(info, self.block_size)
        t0 = time.perf_counter()
        base_rows = base_reader.read_rows(self.base.tensors[unit.tensor], unit.row_start, unit.row_end, slab) \
            if self.uses_base else None
        experts, read_blocks = [], []
        for k, layout in enumerate(self.experts):
            einfo = layout.tensors[unit.tensor]
            want = [b for b in unit.blocks if b in self.access[k].get(unit.tensor, ())]
            extra = [b for b in unit.blocks if b in self.full[k].get(unit.tensor, ())
                     and b not in self.access[k].get(unit.tensor, ())] if self.evaluate else []
            blocks = sorted(want + extra)
            if not self.uses_base:  # no base: inputs are read whole
                experts.append(expert_readers[k].read_rows(einfo, unit.row_start, unit.row_end, slab))
                read_blocks.append(set(unit.blocks))
                continue
            if not blocks:
                experts.append(None)
                read_blocks.append(set())
                continue
            if len(blocks) == len(unit.blocks) and not extra:
                experts.append(expert_readers[k].read_rows(einfo, unit.row_start, unit.row_end, slab))
            else:
                rows = slab.take_tensor(base_rows.shape, base_rows.dtype).copy_(base_rows)
                for reader, chosen in ((expert_readers[k], want), (verify_reader, extra)):
                    for r0, r1 in _runs(chosen, rpb, unit, info.rows):
                        part = reader.read_rows(einfo, r0, r1, slab)
                        if rows.dim() < 2:  # a 0-D/1-D tensor is one row: part is all of it
                            rows = part
                        else:
                            rows[r0 - unit.row_start:r1 - unit.row_start] = part
                experts.append(rows)
            read_blocks.append(set(blocks))
        approx = [{r: self._approximate(k, unit, base_rows, sketch_source, r)
                   for r in self._approximated[k].get(unit.tensor, ())} for k in range(len(self.experts))]
        self.stats.read_s += time.perf_counter() - t0
        return Loaded(unit, slab, base_rows, experts, read_blocks, approx)

    def _approximate(self, k: int, unit: Unit, base_rows: torch.Tensor, source: "_SketchSource",
                     rank: int) -> torch.Tensor:
        """Expert k's rows of the unit as its rank-``rank`` sketch has them: base + A_r·B_rᵀ on
        changed blocks."""
        info = self.ref_layout.tensors[unit.tensor]
        work = self._work_dtype(info)
        acc = torch.float64 if work == torch.float64 else torch.float32
        rows = base_rows.to(acc, copy=True)  # never the base rows themselves: they are added to
        changed = sorted(b for b in unit.blocks if b in self.full[k].get(unit.tensor, ()))
        at, bt = source.factors(k, unit.tensor, max(self._approximated[k][unit.tensor]))
        for r0, r1 in _runs(changed, rows_per_block(info, self.block_size), unit, info.rows):
            i0, i1 = r0 - unit.row_start, r1 - unit.row_start
            rows[i0:i1] += approximate_rows(at[:rank], bt[:rank], r0, r1, tuple(rows[i0:i1].shape), acc)
        return rows.to(work)

    # ----- computing -------------------------------------------------------------------------
    def _input(self, x: torch.Tensor, work: torch.dtype) -> torch.Tensor:
        """Expert rows as the operator takes them: on the device, in the working dtype, or left
        in their stored dtype when the operator promotes them itself and that is exact."""
        if self.op.stored_dtype_inputs and torch.promote_types(x.dtype, work) == work:
            return x.to(self.device)
        return x.to(self.device, work)

    def _merge(self, loaded: Loaded, p, inputs_for, base: torch.Tensor | None,
               rows: tuple[int, int] | None = None, variant: int = 0) -> torch.Tensor:
        """Run the operator; ``base`` is the base's rows already in the working dtype (converted
        once, however many access sets are evaluated). ``rows``: the tensor rows this call
        covers, when it is a tile of the unit (``inputs_for`` and ``base`` are then that tile).
        ``variant``: which access set ``inputs_for`` follow (``self.variants``)."""
        unit = loaded.unit
        info = self.ref_layout.tensors[unit.tensor]
        work = self._work_dtype(info)
        inputs = [base if x is None else self._input(x, work) for x in inputs_for]
        ctx = self._context(loaded, rows, variant)
        merged = self._through_kernel(base, inputs, p, ctx, work, work)
        return merged if merged is not None else self.op.merge(base, inputs, p, ctx)

    def _through_kernel(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p, ctx: MergeContext,
                        work: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor | None:
        """The operator's merge through its compiled kernel (engine/kernels), in ``out_dtype``,
        when one is registered and takes these tensors; else None."""
        kernel = kernels.find(self.op.name, "merge", base if self.uses_base else None, inputs, p, work, out_dtype)
        return None if kernel is None else kernel.run(base if self.uses_base else None, inputs, p, ctx, out_dtype)

    def _context(self, loaded: Loaded, rows: tuple[int, int] | None = None, variant: int = 0) -> MergeContext:
        unit = loaded.unit
        info = self.ref_layout.tensors[unit.tensor]
        row_start, row_end = rows or (unit.row_start, unit.row_end)
        return MergeContext(unit.tensor, self.seed, row_start, row_end, info.rows, self.device,
                            work_dtype=self._work_dtype(info), allocate=loaded.slab.take_tensor,
                            selections=self._selection_rules(loaded, variant),
                            rescale_factors=self._rescale_factors(loaded, variant))

    # ----- streamed tensors (streamed.py) ------------------------------------------------------
    def _variant_inputs(self, loaded: Loaded, variant: int) -> list[torch.Tensor | None]:
        """The unit's expert rows as ``variant`` sees them (``_restrict``)."""
        access, sketches = self.variants[variant]
        return [self._restrict(loaded, k, access[k], sketches[k]) for k in range(len(self.experts))]

    def _count(self, loaded: Loaded, p: TensorParams) -> None:
        """A counting pass over a piece of a streamed tensor."""
        unit, streamed = loaded.unit, loaded.unit.streamed
        info = self.ref_layout.tensors[unit.tensor]
        last = unit.row_end == info.rows
        variants = range(len(self.variants))
        if streamed.kind == "rescale":
            # the base's rows in the working dtype: copied once for every variant, if a torch
            # statement needs them
            work_base = functools.cache(lambda: self._work_base(loaded, self._work_dtype(info)))
            for v in variants:
                streamed.add_sums(v, self._rescale_sums(loaded, p, v, work_base), last)
            return
        streamed.count(unit.stage, loaded.base, [self._variant_inputs(loaded, v) for v in variants], last)

    def _rescale_sums(self, loaded: Loaded, p: TensorParams, variant: int, work_base) -> list:
        """``Operator.rescale_sums`` of a piece for ``variant``, through its kernel where one
        takes it (exact sums: either gives the same factor). ``work_base()``: the base's rows in
        the working dtype."""
        work = self._work_dtype(self.ref_layout.tensors[loaded.unit.tensor])
        stored = [loaded.base if x is None else x for x in self._variant_inputs(loaded, variant)]
        ctx = self._context(loaded)
        kernel = kernels.find(self.op.name, "rescale_sums", loaded.base, stored, p, work, work)
        if kernel is not None:
            return kernel.run(loaded.base, stored, p, ctx, work)
        base = work_base()
        inputs = [base if x is loaded.base else self._input(x, work) for x in stored]
        return self.op.rescale_sums(base, inputs, p, ctx)

    def _selection_rules(self, loaded: Loaded, variant: int) -> list | None:
        """The selections of a streamed tensor's piece for ``variant``, in the tensor's flat
        positions (None for any other unit)."""
        unit = loaded.unit
        if unit.stage != MERGE or unit.streamed is None or unit.streamed.kind != "selection":
            return None
        if variant not in loaded.selections:
            start = unit.row_start * math.prod(self.ref_layout.tensors[unit.tensor].shape[1:])
            loaded.selections[variant] = unit.streamed.rules(variant, start, loaded.base,
                                                             lambda: self._variant_inputs(loaded, variant))
        return loaded.selections[variant]

    def _rescale_factors(self, loaded: Loaded, variant: int) -> list | None:
        """The rescale factors of a streamed tensor for ``variant`` (None for any other unit)."""
        unit = loaded.unit
        if unit.stage != MERGE or unit.streamed is None or unit.streamed.kind != "rescale":
            return None
        return unit.streamed.factors[variant]

    def _work_dtype(self, info: TensorInfo) -> torch.dtype:
        return self.config.dtype or torch_dtype(info.dtype)

    def compute(self, loaded: Loaded, p) -> torch.Tensor:
        """The merged rows of the unit under ``access``, in the output dtype on the CPU."""
        unit = loaded.unit
        info = self.ref_layout.tensors[unit.tensor]
        out_dtype = torch_dtype(self._out_dtype(info))
        work = self._work_dtype(info)
        if not torch_dtype(info.dtype).is_floating_point:
            src = loaded.base if loaded.base is not None else loaded.experts[0]
            return src
        nothing_read = all(not self._in_access(k, unit) and unit.tensor not in self.sketches[k]
                           for k in range(len(self.experts)))
        # (a streamed tensor's piece is computed even so: the whole tensor's merge would be)
        if (self.uses_base and nothing_read and self.op.zero_delta_identity and not self.evaluate
                and unit.streamed is None):
            if loaded.base.dtype == out_dtype and torch.promote_types(out_dtype, work) == work:
                return loaded.base  # the round trip through the working dtype is exact
            return loaded.base.to(work).to(out_dtype)
        inputs = [self._restrict(loaded, k, self.access[k], self.sketches[k]) for k in range(len(self.experts))]
        sketched = any(unit.tensor in s for s in self.sketches)
        if self.device.type == "cpu" and not self.evaluate and not sketched:
            stored = [loaded.base if x is None else x for x in inputs]
            ctx = self._context(loaded)
            merged = self._through_kernel(loaded.base, stored, p, ctx, work, out_dtype)
            if merged is None:
                merged = self.op.merge_stored(loaded.base, stored, p, ctx, work, out_dtype)
            if merged is not None:
                return merged
        if self.evaluate or unit.whole or self.device.type != "cpu":
            base = self._work_base(loaded, work)
            merged = self._merge(loaded, p, inputs, base)
            if self.evaluate:
                self._evaluate(loaded, p, merged, base)
            if self.device.type != "cpu":
                return merged.to(out_dtype).cpu()
            return loaded.slab.take_tensor(merged.shape, out_dtype).copy_(merged)
        return self._compute_tiled(loaded, p, inputs, out_dtype, work)

    def _work_base(self, loaded: Loaded, work: torch.dtype) -> torch.Tensor | None:
        """The unit's base rows on the device in the working dtype (a CPU copy goes in the slab)."""
        if loaded.base is None or (loaded.base.dtype == work and self.device.type == "cpu"):
            return loaded.base
        if self.device.type != "cpu":
            return loaded.base.to(self.device, work)
        return loaded.slab.take_tensor(loaded.base.shape, work).copy_(loaded.base)

    def _compute_tiled(self, loaded: Loaded, p, inputs: list, out_dtype: torch.dtype,
                       work: torch.dtype) -> torch.Tensor:
        """A block-local unit on the CPU, merged a few rows at a time: each tile's temporaries
        stay in cache (5x faster than whole-unit torch ops on 2 cores), and merging a slice of
        rows equals slicing the merge, which is what ``block_local`` promises."""
        unit = loaded.unit
        like = loaded.base if loaded.base is not None else next(x for x in inputs if x is not None)
        step = max(1, TILE_ELEMENTS // max(1, like[0].numel()))
        out = loaded.slab.take_tensor(like.shape, out_dtype)
        for r0 in range(0, like.shape[0], step):
            r1 = min(r0 + step, like.shape[0])
            base = loaded.base[r0:r1].to(self.device, work) if loaded.base is not None else None
            tile = [None if x is None else x[r0:r1] for x in inputs]
            rows = (unit.row_start + r0, unit.row_start + r1)
            out[r0:r1].copy_(self._merge(loaded, p, tile, base, rows))
        return out

    def _in_access(self, k: int, unit: Unit) -> bool:
        chosen = self.access[k].get(unit.tensor, ())
        return any(b in chosen for b in unit.blocks)

    def _restrict(self, loaded: Loaded, k: int, access_k: dict[str, set[int]],
                  sketched_k: dict[str, int] | None = None) -> torch.Tensor | None:
        """Expert k's rows as seen by an access set (and its sketches): read blocks outside it
        revert to the base, or to the sketch's approximation where the tensor is sketched."""
        x = loaded.experts[k]
        unit = loaded.unit
        if sketched_k and unit.tensor in sketched_k:
            return self._over_sketch(loaded, k, access_k, sketched_k[unit.tensor])
        if x is None or not self.uses_base:
            return x
        chosen = access_k.get(unit.tensor, set())
        keep = loaded.read_blocks[k] & chosen
        if keep == loaded.read_blocks[k]:
            return x
        if not keep:
            return None
        info = self.ref_layout.tensors[unit.tensor]
        rpb = rows_per_block(info, self.block_size)
        rows = loaded.base.clone()
        for r0, r1 in _runs(sorted(keep), rpb, unit, info.rows):
            rows[r0 - unit.row_start:r1 - unit.row_start] = x[r0 - unit.row_start:r1 - unit.row_start]
        return rows

    def _over_sketch(self, loaded: Loaded, k: int, access_k: dict[str, set[int]], rank: int) -> torch.Tensor:
        """The rank-``rank`` sketch's approximation with the blocks of ``access_k`` that were
        read written over it."""
        unit, approx, x = loaded.unit, loaded.approx[k][rank], loaded.experts[k]
        keep = loaded.read_blocks[k] & access_k.get(unit.tensor, set())
        if not keep:
            return approx
        info = self.ref_layout.tensors[unit.tensor]
        rows = approx.clone()
        for r0, r1 in _runs(sorted(keep), rows_per_block(info, self.block_size), unit, info.rows):
            rows[r0 - unit.row_start:r1 - unit.row_start] = x[r0 - unit.row_start:r1 - unit.row_start]
        return rows

    def _evaluate(self, loaded: Loaded, p, merged: torch.Tensor, work_base: torch.Tensor | None) -> None:
        full_inputs = [self._restrict(loaded, k, self.full[k]) for k in range(len(self.experts))]
        full = self._merge(loaded, p, full_inputs, work_base, variant=1).double()
        base = loaded.base.to(self.device, torch.float64) if loaded.base is not None else torch.zeros_like(full)
        update_sq = float(((full - base) ** 2).sum())
        weight_sq = float((full ** 2).sum())
        layer = layer_index(loaded.unit.tensor)
        for i, (ref, ref_sketches, same, dev) in enumerate(zip(self.references, self.ref_sketches,
                                                                self._ref_is_access, self.deviations)):
            if same:
                merged_ref = merged
            else:
                merged_ref = self._merge(loaded, p, [self._restrict(loaded, k, ref[k], ref_sketches[k])
                                                     for k in range(len(self.experts))], work_base, variant=2 + i)
            diff_sq = float(((merged_ref.double() - full) ** 2).sum())
            dev.diff_sq += diff_sq
            dev.update_sq += update_sq
            dev.weight_sq += weight_sq
            acc = dev.per_layer.setdefault(layer if layer is not None else "other", [0.0, 0.0])
            acc[0] += diff_sq
            acc[1] += update_sq

    # ----- no silent Inf/NaN -----------------------------------------------------------------
    def _check_finite(self, loaded: Loaded, p, rows: torch.Tensor, publishing: bool) -> None:
        """Raise NonFiniteOutput when the unit's output ``rows`` holds Inf/NaN although every
        input that went into it (the base rows, the expert rows under ``access``) was finite.
        Costs one pass over the output; the inputs are only looked at when that finds some."""
        if rows is loaded.base or all_finite(rows):
            return
        inputs = [self._restrict(loaded, k, self.access[k], self.sketches[k]) for k in range(len(self.experts))]
        if all(all_finite(x) for x in (loaded.base, *inputs) if x is not None):
            raise NonFiniteOutput(self._nonfinite_message(loaded, p, inputs, publishing))

    def _nonfinite_message(self, loaded: Loaded, p, inputs: list, publishing: bool) -> str:
        """Where, and why: the working dtype overflowed, or only the cast to the output dtype
        did (told apart by merging the unit again in the working dtype)."""
        unit = loaded.unit
        info = self.ref_layout.tensors[unit.tensor]
        work, out = self._work_dtype(info), torch_dtype(self._out_dtype(info))
        where = f"tensor '{unit.tensor}'" + ("" if unit.whole else f" (rows {unit.row_start}–{unit.row_end - 1})")
        weights = [abs(m["weight"]) for m in p.models if isinstance(m.get("weight"), (int, float))]
        lower = f"lower the weights (largest |weight| is {max(weights):g})" if weights else "lower the parameters"
        if out != work and all_finite(self._merge(loaded, p, inputs, self._work_base(loaded, work))):
            why = (f"merged values are finite in {CONFIG_NAME[work]} but exceed {CONFIG_NAME[out]}'s range "
                   f"(±{torch.finfo(out).max:.4g}); use a wider out_dtype or {lower}")
        else:
            wider = "" if work == torch.float64 else \
                f" or compute in a wider dtype (dtype: {'float64' if work == torch.float32 else 'float32'})"
            why = f"a weight or parameter overflows {CONFIG_NAME[work]}; {lower}{wider}"
        done = "; nothing was published" if publishing else ""
        return f"the merge produced Inf/NaN in {where} from finite inputs: {why}{done}"

    # ----- the pipeline ----------------------------------------------------------------------
    def run(self, sink) -> ExecStats:
        """Run all units; ``sink(name, rows_tensor)`` receives output rows in order (or None)."""
        # Python's cyclic GC would otherwise walk the heap every few hundred allocations (~3%
        # of a TIES merge's CPU); a merge creates no garbage cycles that matter before it ends.
        collecting = gc.isenabled()
        gc.disable()
        try:
            with retained_heap():
                return self._run(sink)
        finally:
            if collecting:
                gc.enable()

    def _reader_stats(self, readers, counting_readers, sketch_reader: RangeReader) -> None:
        """What was read, into ``stats``: the bytes the merge asked for (a streamed tensor's
        counting passes apart, in ``reread_logical``) and the bytes the storage gave for each
        file's reads."""
        (base_r, expert_rs, verify_r), (base_c, expert_cs, verify_c) = readers, counting_readers
        self.stats.base_logical = base_r.logical_bytes
        self.stats.base_storage = base_r.storage_bytes + base_c.storage_bytes
        self.stats.per_expert_logical = [r.logical_bytes for r in expert_rs]
        self.stats.per_expert_storage = [r.storage_bytes + c.storage_bytes for r, c in zip(expert_rs, expert_cs)]
        self.stats.expert_logical = sum(self.stats.per_expert_logical)
        self.stats.expert_storage = sum(self.stats.per_expert_storage)
        self.stats.verify_logical = verify_r.logical_bytes
        self.stats.verify_storage = verify_r.storage_bytes + verify_c.storage_bytes
        self.stats.sketch_logical = sketch_reader.logical_bytes
        self.stats.sketch_storage = sketch_reader.storage_bytes
        self.stats.reread_logical = sum(r.logical_bytes for r in (base_c, *expert_cs, verify_c))

    def _rows_bytes(self, unit: Unit) -> int:
        """Stored bytes of the unit's rows in one model."""
        return (unit.row_end - unit.row_start) * self.ref_layout.tensors[unit.tensor].row_bytes

    def _unit_bytes(self, unit: Unit) -> int:
        """About what a unit takes from its slab: the stored rows of every input and an output
        of the same size (working copies in a wider dtype take more; the slab then grows)."""
        per_input = (-(-self._rows_bytes(unit) // ALIGN) + 2) * ALIGN  # whole pages; a read widened to pages
        return per_input * (len(self.experts) + 2)

    def _run(self, sink) -> ExecStats:
        units = list(self.units())
        total = sum(self._rows_bytes(u) for u, _ in units if u.stage == MERGE)
        loaded_q: queue.Queue = queue.Queue(maxsize=2)
        out_q: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()
        errors: list[BaseException] = []

        # Slabs start with room for twice the largest unit's inputs and output (untouched
        # capacity costs nothing), so that what operators take beyond those (DELLA's masks,
        # working copies in a wider dtype) fits: a slab that overflows is replaced, and the
        # replacement's pages are faulted in and zeroed afresh (on a VM, ~1 s per GB of CPU).
        largest = max((self._unit_bytes(u) for u, _ in units), default=0)
        pool = SlabPool(POOL_SLABS, min(MAX_KEPT_BYTES, 2 * largest))

        def loader():
            io_pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="mergehub-read")
            readers = (RangeReader(sequential=True, pool=io_pool),
                       [RangeReader(sequential=not self.uses_base, pool=io_pool) for _ in self.experts],
                       RangeReader(sequential=False, pool=io_pool))
            # A streamed tensor's counting passes read through the page cache, so the passes
            # after the first (the merge's included) find its pages there; exactly the ranges
            # asked for (no readahead: reader.py announces each range instead).
            counting_readers = (RangeReader(sequential=False, direct=False, pool=io_pool),
                                [RangeReader(sequential=False, direct=False, pool=io_pool) for _ in self.experts],
                                RangeReader(sequential=False, direct=False, pool=io_pool))
            sketch_source = _SketchSource(self.sketch_files, RangeReader(sequential=False, pool=io_pool))
            try:
                for unit, p in units:
                    slab = None if stop.is_set() else pool.get(stop, self._unit_bytes(unit))
                    if slab is None:
                        break
                    chosen = readers if unit.stage == MERGE else counting_readers
                    loaded_q.put((self._load(unit, chosen, slab, sketch_source), p))
            except BaseException as exc:  # surfaced in the caller's thread
                errors.append(exc)
            finally:
                loaded_q.put(None)
                self._reader_stats(readers, counting_readers, sketch_source.reader)
                for base_r, expert_rs, verify_r in (readers, counting_readers):
                    for r in (base_r, *expert_rs, verify_r):
                        r.close()
                sketch_source.reader.close()
                io_pool.shutdown()

        def writer():
            try:
                while (item := out_q.get()) is not None:
                    name, rows, slab = item
                    if not errors:  # after an error: drain, so the producer never blocks
                        t0 = time.perf_counter()
                        sink(name, rows)
                        self.stats.write_s += time.perf_counter() - t0
                    pool.put(slab)
            except BaseException as exc:
                errors.append(exc)
                while (item := out_q.get()) is not None:
                    pool.put(item[2])

        threads = [threading.Thread(target=loader, daemon=True)]
        if sink is not None:
            threads.append(threading.Thread(target=writer, daemon=True))
        for t in threads:
            t.start()
        done = 0
        loader_done = False
        try:
            while True:
                item = loaded_q.get()
                if item is None:
                    loader_done = True
                    break
                if errors:
                    break
                self.control.check()
                loaded, p = item
                t0 = time.perf_counter()
                if loaded.unit.stage != MERGE:  # progress counts merged rows only
                    self._count(loaded, p)
                    self.stats.compute_s += time.perf_counter() - t0
                    pool.put(loaded.slab)
                    continue
                rows = self.compute(loaded, p)
                self._check_finite(loaded, p, rows, publishing=sink is not None)
                self.stats.compute_s += time.perf_counter() - t0
                if sink is not None:
                    out_q.put((loaded.unit.tensor, rows, loaded.slab))
                else:
                    pool.put(loaded.slab)
                done += self._rows_bytes(loaded.unit)
                self.control.report("merge", done, total)
        finally:
            stop.set()
            while not loader_done:  # unblock and finish the loader
                item = loaded_q.get()
                loader_done = item is None
                if item is not None:
                    pool.put(item[0].slab)
            if sink is not None:
                out_q.put(None)
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        return self.stats


class _SketchSource:
    """The loader's view of the catalog's sketch factors: the first ``rank`` rows of Aᵀ and Bᵀ,
    read once per (expert, tensor) and kept while that tensor's units load."""

    def __init__(self, files: list, reader: RangeReader):
        self.files, self.reader = files, reader
        self._layouts: dict[int, dict] = {}
        self._kept: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def factors(self, k: int, tensor: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        if k not in self._layouts:
            self._layouts[k] = factor_layout(self.files[k])
        key = (k, tensor)
        if key not in self._kept:
            self._kept = {kk: v for kk, v in self._kept.items() if kk[1] == tensor}  # one tensor at a time
            at_info, bt_info = self._layouts[k][tensor]
            self._kept[key] = (self.reader.read_rows(at_info, 0, rank), self.reader.read_rows(bt_info, 0, rank))
        return self._kept[key]


CHECK_CHUNK_BYTES = 256 << 10  # all_finite's piece of a tensor: well inside a core's L2

# per float dtype: (the same-width signed int, its unsigned numpy twin, the bits of +Inf, of -Inf)
_INF_BITS = {torch.float64: (torch.int64, np.uint64, 0x7FF0000000000000, 0xFFF0000000000000),
             torch.float32: (torch.int32, np.uint32, 0x7F800000, 0xFF800000),
             torch.float16: (torch.int16, np.uint16, 0x7C00, 0xFC00),
             torch.bfloat16: (torch.int16, np.uint16, 0x7F80, 0xFF80)}


def all_finite(x: torch.Tensor) -> bool:
    """Does ``x`` hold no Inf or NaN? A value is Inf/NaN iff its exponent bits are all ones, i.e.
    its bits are ≥ +Inf's read as a signed int (positive) or ≥ -Inf's read as an unsigned int
    (negative): on the CPU, two integer max passes in numpy, piece by piece so that memory is
    read once. numpy stays on the calling thread; a torch reduction wakes the intra-op thread
    pool, which slowed a 2-core merge's compute by tens of percent (isfinite().all() more)."""
    if not x.is_floating_point() or x.numel() == 0:
        return True
    if x.device.type != "cpu" or not x.is_contiguous() or x.dtype not in _INF_BITS:
        lo, hi = torch.aminmax(x)  # NaN propagates to both; an Inf is the min or the max
        return math.isfinite(lo.item()) and math.isfinite(hi.item())
    signed, unsigned, pos_inf, neg_inf = _INF_BITS[x.dtype]
    bits = x.view(signed).numpy().reshape(-1)
    step = CHECK_CHUNK_BYTES // bits.itemsize
    for i in range(0, bits.size, step):  # the second pass over a chunk finds it in cache
        chunk = bits[i:i + step]
        if int(chunk.max()) >= pos_inf or int(chunk.view(unsigned).max()) >= neg_inf:
            return False
    return True


def _runs(blocks: list[int], rpb: int, unit: Unit, total_rows: int) -> list[tuple[int, int]]:
    """Coalesce sorted block indices into row ranges clipped to the unit."""
    out: list[tuple[int, int]] = []
    for b in blocks:
        r0, r1 = max(b * rpb, unit.row_start), min((b + 1) * rpb, unit.row_end, total_rows)
        if out and out[-1][1] == r0:
            out[-1] = (out[-1][0], r1)
        else:
            out.append((r0, r1))
    return out
