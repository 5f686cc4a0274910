"""Compiled loops for magnitude-pruned TIES on the CPU (ties.c), loaded with ctypes.

They are optional: ``pip install`` builds them when a C compiler is present (setup.py), and
without them, or with ``MERGEHUB_NATIVE=0``, the engine runs its torch path, which gives the
same bits on finite inputs, only slower. Tensors are flat, contiguous, on the CPU, float32 or
bfloat16. ctypes releases the GIL during each call, so ``map_parallel`` and ``ties_combine``
spread their work over ``THREADS`` Python threads.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

KEY_BINS = 1 << 15  # bins of the top 16 bits of a non-negative float32 (ties.c's KEY_BINS)
LOW_BINS = 1 << 16  # bins of its low 16 bits (ties.c's LOW_BINS)
THREADS = max(1, min(4, os.cpu_count() or 1))
DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_MIN_SPLIT = 1 << 16  # elements per thread below which one thread does the whole range


def _load() -> ctypes.CDLL | None:
    if os.environ.get("MERGEHUB_NATIVE", "1") == "0":
        return None
    here = Path(__file__).parent
    found = [here / f"_ties{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    found = [path for path in found if path.exists()]
    if not found:
        return None
    lib = ctypes.CDLL(str(found[0]))
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.mh_magnitude_histogram.argtypes = [ptr, i32, ptr, i32, i64, ptr]
    lib.mh_magnitude_histogram.restype = i32
    lib.mh_magnitude_low_histogram.argtypes = [ptr, i32, ptr, i32, i64, i32, ptr]
    lib.mh_magnitude_low_histogram.restype = i32
    lib.mh_magnitude_count.argtypes = [ptr, i32, ptr, i32, i64, ctypes.c_uint32, ptr]
    lib.mh_magnitude_count.restype = i32
    lib.mh_magnitude_position.argtypes = [ptr, i32, ptr, i32, i64, ctypes.c_uint32, i64]
    lib.mh_magnitude_position.restype = i64
    lib.mh_ties_combine.argtypes = [ptr, i32, i64, i64, i32, ptr, ptr, ptr, ptr, ptr, ptr, i32,
                                    ctypes.c_float, ptr, i32]
    lib.mh_ties_combine.restype = None
    return lib


_LIB = _load()
_POOL = ThreadPoolExecutor(THREADS, thread_name_prefix="mergehub-native") if _LIB and THREADS > 1 else None


def available() -> bool:
    return _LIB is not None


def supports(*tensors: torch.Tensor) -> bool:
    """Can the loops take these tensors: CPU, contiguous, float32 or bfloat16, same size?"""
    return _LIB is not None and all(
        t.device.type == "cpu" and t.dtype in DTYPES and t.is_contiguous() and t.numel() == tensors[0].numel()
        for t in tensors)


def map_parallel(fn, items: list) -> list:
    """fn over items, on the native thread pool when there is more than one."""
    if _POOL is None or len(items) < 2:
        return [fn(item) for item in items]
    return list(_POOL.map(fn, items))


def _ref(t: torch.Tensor) -> tuple[int, int]:
    return t.data_ptr(), DTYPES[t.dtype]


def _check(status: int) -> None:
    if status < 0:
        raise MemoryError("out of memory in the compiled TIES loops (they need under 1 MB): "
                          "free memory, or run fewer merges at once, and retry")


def magnitude_histogram(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """int64[KEY_BINS]: counts of the top 16 bits of |x − base| (as float32)."""
    hist = torch.zeros(KEY_BINS, dtype=torch.int64)
    _check(_LIB.mh_magnitude_histogram(*_ref(x), *_ref(base), base.numel(), hist.data_ptr()))
    return hist


def magnitude_low_histogram(x: torch.Tensor, base: torch.Tensor, key: int) -> torch.Tensor:
    """int64[LOW_BINS]: counts of the low 16 bits of |x − base| among entries whose top 16 are ``key``."""
    hist = torch.zeros(LOW_BINS, dtype=torch.int64)
    _check(_LIB.mh_magnitude_low_histogram(*_ref(x), *_ref(base), base.numel(), key, hist.data_ptr()))
    return hist


def magnitude_count(x: torch.Tensor, base: torch.Tensor, pattern: int) -> tuple[int, int]:
    """(#entries whose |x − base| is above, #equal to) the float32 with bit pattern ``pattern``."""
    counts = torch.zeros(2, dtype=torch.int64)
    _check(_LIB.mh_magnitude_count(*_ref(x), *_ref(base), base.numel(), pattern, counts.data_ptr()))
    return int(counts[0]), int(counts[1])


def magnitude_position(x: torch.Tensor, base: torch.Tensor, pattern: int, rank: int) -> int:
    """Flat position of the entry numbered ``rank`` (from 0, in flat order) among those whose
    |x − base| has float32 bit pattern ``pattern``; numel when there are not that many."""
    position = _LIB.mh_magnitude_position(*_ref(x), *_ref(base), base.numel(), pattern, rank)
    _check(position)
    return position


def ties_combine(base: torch.Tensor, inputs: list[torch.Tensor], weights: list[float],
                 levels: list[tuple[float, float, int]], normalize: bool, lam: float,
                 out: torch.Tensor) -> torch.Tensor:
    """``out`` ← base + λ·(TIES consensus of the pruned, weighted deltas), computed in float32
    and rounded to ``out``'s dtype. ``levels[m]`` = (before, after, cut): model m keeps entries
    with |δ| > before at flat positions below ``cut`` and |δ| > after from there on."""
    assert supports(base, out, *inputs)
    n, models = base.numel(), len(inputs)
    c_inputs = (ctypes.c_void_p * models)(*[x.data_ptr() for x in inputs])
    c_dtypes = (ctypes.c_int * models)(*[DTYPES[x.dtype] for x in inputs])
    c_weights = (ctypes.c_float * models)(*weights)
    c_before = (ctypes.c_float * models)(*[level[0] for level in levels])
    c_after = (ctypes.c_float * models)(*[level[1] for level in levels])
    c_cuts = (ctypes.c_int64 * models)(*[level[2] for level in levels])

    def run(span: tuple[int, int]) -> None:
        _LIB.mh_ties_combine(*_ref(base), span[0], span[1], models, c_inputs, c_dtypes, c_weights,
                             c_before, c_after, c_cuts, int(normalize), lam, *_ref(out))

    if n == 0:
        return out
    parts = max(1, min(THREADS, n // _MIN_SPLIT))
    step = -(-n // parts)
    map_parallel(run, [(a, min(a + step, n)) for a in range(0, n, step)])
    return out
