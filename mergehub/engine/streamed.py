"""Streamed tensors: whole-tensor statistics gathered over a tensor's rows, so that a tensor too
big to hold is merged block by block (docs/engine.md, Execute, "Streamed tensors").

Two operators' steps look at the whole tensor only through statistics that can be gathered
piece by piece, after which merging is block-local:

* TIES keeps each expert's k largest |x − base| (``Operator.selection_counts``). Pass one
  counts every input's |δ| by the top 16 bits of its float32 pattern, pass two counts the
  entries in the bin holding the k-th largest by their low 16 bits
  (``selection.StreamedTopK``); the rules go to the merge in ``ctx.selections``.
* DARE and DELLA with ``rescale`` scale each expert's kept delta by ‖δ‖₁ / ‖kept δ‖₁ over the
  tensor, their masks being drawn row by row (``Operator.streamed_rescale``). One pass sums
  every input's exact L1 slots before and after its mask (``Operator.rescale_sums``, which add
  up over rows: exact_sum.py); the factors go to the merge in ``ctx.rescale_factors``.

The executor loads each piece once per pass (``STAGES``), then once more to merge it. The
re-reads come from the page cache (reader.py), and memory stays one piece per slab.

|δ| is computed as the merge computes it: x − base in the working dtype (float64 merges are
not streamed: their order is not their float32 patterns', see ``streams``). Counted through
kernels/topk.py's counting functions where the kernels are loaded and the work dtype is float32,
else in torch: the same float32 patterns either way (tests/engine/test_streamed.py merges both
ways).
"""

from __future__ import annotations

from typing import Callable

import torch

from . import kernels
from .kernels import topk as compiled
from .operators.exact_sum import SLOTS, rescale_factor
from .operators.selection import KEY_BINS, LOW_BINS, StreamedTopK
from .operators.sparsify import RESCALE_EPS

STAGES = {"selection": ("top", "low"), "rescale": ("sums",)}  # the counting passes of each kind
MERGE = "merge"  # the last pass over a streamed tensor's pieces, and the only one of other units
# float32 patterns give the exact order of these working dtypes' values (not float64's)
STREAMED_WORK = (torch.float32, torch.bfloat16, torch.float16)


def streams(work: torch.dtype, ndim: int) -> bool:
    """Can a tensor merged in ``work`` with ``ndim`` dimensions be streamed?"""
    return work in STREAMED_WORK and ndim >= 2


def _compiled(x: torch.Tensor, base: torch.Tensor, work: torch.dtype) -> bool:
    """Do the kernels count these |x − base| (float32 work, dtypes they read, plain layout)?"""
    return (kernels.enabled() and work == torch.float32
            and all(t.dtype in kernels.KERNEL_DTYPES and t.is_contiguous() and t.device.type == "cpu"
                    for t in (x, base)))


def _patterns(x: torch.Tensor, base: torch.Tensor, work: torch.dtype) -> torch.Tensor:
    """int64 float32 bit patterns of |x − base| computed in ``work`` (flat)."""
    magnitudes = (x.reshape(-1).to(work) - base.reshape(-1).to(work)).abs_().float()
    return magnitudes.view(torch.int32).long()


def top_histogram(x: torch.Tensor, base: torch.Tensor, work: torch.dtype) -> torch.Tensor:
    """int64[KEY_BINS]: |x − base| counted by the top 16 bits of its float32 pattern."""
    if _compiled(x, base, work):
        return compiled.magnitude_histogram(x.reshape(-1), base.reshape(-1))
    return torch.bincount(_patterns(x, base, work) >> 16, minlength=KEY_BINS)


def low_histogram(x: torch.Tensor, base: torch.Tensor, work: torch.dtype, key: int) -> tuple[torch.Tensor, int]:
    """(int64[LOW_BINS]: the entries of |x − base| in bin ``key`` by their low 16 bits, the
    number of non-zero entries when ``key`` is 0, else 0)."""
    if _compiled(x, base, work):
        flat_x, flat_base = x.reshape(-1), base.reshape(-1)
        hist = compiled.magnitude_low_histogram(flat_x, flat_base, key)
        nonzero = compiled.magnitude_count(flat_x, flat_base, [0])[0][0][0] if key == 0 else 0
        return hist, nonzero
    patterns = _patterns(x, base, work)
    hist = torch.bincount(patterns[(patterns >> 16) == key] & 0xFFFF, minlength=LOW_BINS)
    return hist, int(torch.count_nonzero(patterns)) if key == 0 else 0


def tie_count(x: torch.Tensor, base: torch.Tensor, work: torch.dtype, pattern: int) -> int:
    """How many entries of |x − base| have float32 pattern ``pattern``."""
    if _compiled(x, base, work):
        return compiled.magnitude_count(x.reshape(-1), base.reshape(-1), [pattern])[0][0][1]
    return int((_patterns(x, base, work) == pattern).sum())


def tie_position(x: torch.Tensor, base: torch.Tensor, work: torch.dtype, pattern: int, rank: int) -> int:
    """Flat position of the entry numbered ``rank`` (from 0) among those whose |x − base| has
    float32 pattern ``pattern``."""
    if _compiled(x, base, work):
        return compiled.magnitude_position(x.reshape(-1), base.reshape(-1), pattern, rank)
    return int((_patterns(x, base, work) == pattern).nonzero()[rank])


class StreamedTensor:
    """The statistics of one streamed tensor: per variant (the merge's access set, then the
    references a run evaluates), per non-base input, a ``StreamedTopK`` (kind "selection") or
    its L1 slots before and after pruning (kind "rescale"), or None (nothing to find)."""

    def __init__(self, numel: int, work: torch.dtype, variants: int, counts: list[int | None] | None = None,
                 rescaled: list[bool] | None = None):
        assert (counts is None) != (rescaled is None), "one kind of statistics per tensor"
        self.work = work
        self.kind = "selection" if counts is not None else "rescale"
        if counts is not None:
            self.tops = [[None if k is None else StreamedTopK(numel, k) for k in counts] for _ in range(variants)]
        else:
            self.sums = [[[[0] * SLOTS, [0] * SLOTS] if r else None for r in rescaled] for _ in range(variants)]
            self.factors: list[list[float | None]] = []

    @property
    def stages(self) -> tuple[str, ...]:
        return STAGES[self.kind] + (MERGE,)

    def count(self, stage: str, base: torch.Tensor, inputs: list[list[torch.Tensor | None]], last: bool) -> None:
        """Pass ``stage`` ("top" or "low") over a piece of ``base`` rows, with each variant's
        inputs (None: the base's values there, δ = 0)."""
        for tops, xs in zip(self.tops, inputs):
            for top, x in zip(tops, xs):
                if top is None:
                    continue
                x = base if x is None else x
                if stage == "top":
                    top.add_top(top_histogram(x, base, self.work))
                    if last:
                        top.end_top()
                else:
                    top.add_low(*low_histogram(x, base, self.work, top.key))
                    if last:
                        top.end_low()

    def add_sums(self, variant: int, sums: list[tuple[list[int], list[int]] | None], last: bool) -> None:
        """Pass "sums": one piece's L1 slots per input (``Operator.rescale_sums``) for ``variant``."""
        for total, piece in zip(self.sums[variant], sums):
            if total is not None:
                for acc, add in zip(total, piece):
                    for i, value in enumerate(add):
                        acc[i] += value
        if last and variant == len(self.sums) - 1:
            self.factors = [[None if s is None else rescale_factor(*s, RESCALE_EPS) for s in per]
                            for per in self.sums]

    def rules(self, variant: int, start: int, base: torch.Tensor,
              inputs_of: Callable[[], list[torch.Tensor | None]]) -> list:
        """The selections for the piece of ``base`` rows starting at flat ``start`` (merged in
        order), in the tensor's flat positions. ``inputs_of()`` gives the piece's inputs for
        ``variant``; asked only while a tie cut is still to be located."""
        tops = self.tops[variant]
        if all(top is None or top.settled for top in tops):
            return [None if top is None else top.rule for top in tops]
        out = []
        for top, x in zip(tops, inputs_of()):
            if top is None:
                out.append(None)
                continue
            x = base if x is None else x
            out.append(top.rule_for(start, lambda pattern, x=x: tie_count(x, base, self.work, pattern),
                                    lambda pattern, rank, x=x: tie_position(x, base, self.work, pattern, rank)))
        return out
