"""Whole-tensor selections over a tensor's rows, so that a tensor too big to hold is merged
block by block (docs/engine.md, Execute, "Streamed tensors").

TIES keeps each expert's k largest |x − base| over the whole tensor, which is all that stops
it being block-local (``Operator.selection_counts``). For a big tensor the executor reads its
rows three times, piece by piece: pass one counts every input's |δ| by the top 16 bits of its
float32 pattern, pass two counts the entries in the bin holding the k-th largest by their low
16 bits (``selection.StreamedTopK``), pass three merges each piece with the rules found. The
re-reads come from the page cache (docs/engine.md), and memory stays one piece per slab.

|δ| is computed as the merge computes it: x − base in the working dtype (float64 merges are
not streamed: their order is not their float32 patterns', see ``streams``). Counted
through kernels/topk.py's counting passes where the kernels are loaded and would merge the
tensor (float32 work), else in torch: the same float32 patterns either way
(tests/engine/test_streamed_selection.py merges both ways).
"""

from __future__ import annotations

import torch

from . import kernels
from .kernels import topk as compiled
from .operators.selection import KEY_BINS, LOW_BINS, StreamedTopK

STAGES = ("top", "low", "merge")  # the passes over a streamed tensor's pieces, in order
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


def tie_position(x: torch.Tensor, base: torch.Tensor, work: torch.dtype, pattern: int, rank: int) -> int:
    """Flat position of the entry numbered ``rank`` (from 0) among those whose |x − base| has
    float32 pattern ``pattern``."""
    if _compiled(x, base, work):
        return compiled.magnitude_position(x.reshape(-1), base.reshape(-1), pattern, rank)
    return int((_patterns(x, base, work) == pattern).nonzero()[rank])


class TensorSelections:
    """The rules of one streamed tensor: per variant (the merge's access set, then the
    references a run evaluates), per non-base input, a ``StreamedTopK`` or None (keeps all)."""

    def __init__(self, numel: int, counts: list[int | None], variants: int, work: torch.dtype):
        self.numel, self.work = numel, work
        self.tops = [[None if k is None else StreamedTopK(numel, k) for k in counts] for _ in range(variants)]

    def count(self, stage: str, start: int, base: torch.Tensor, inputs: list[list[torch.Tensor | None]],
              last: bool) -> None:
        """Pass ``stage`` ("top" or "low") over the piece of ``base`` rows starting at flat
        ``start``, with each variant's inputs (None: the base's values there, δ = 0)."""
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
                    top.add_low(start, *low_histogram(x, base, self.work, top.key))
                    if last:
                        top.end_low()

    def rules(self, variant: int, start: int, base: torch.Tensor,
              inputs: list[torch.Tensor | None]) -> list:
        """The rules for the piece of ``base`` rows starting at flat ``start`` (merged in order),
        in the tensor's flat positions."""
        stop = start + base.numel()
        out = []
        for top, x in zip(self.tops[variant], inputs):
            if top is None:
                out.append(None)
                continue
            x = base if x is None else x

            def locate(pattern: int, rank: int, x=x) -> int:
                return tie_position(x, base, self.work, pattern, rank)

            out.append(top.rule_for(start, stop, locate))
        return out
