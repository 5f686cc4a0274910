"""Compiled loops on the CPU (loops.c), loaded with ctypes: the task-arithmetic family's
pruning and combine (operators/generalized.py), span.py's Gram matrices and combinations,
RAM, SCE, linear, nearswap and arcee_fusion (ram.py, sce.py, linear.py, nearswap.py,
arcee_fusion.py), order statistics (selection.py), the catalog's block statistics
(catalog.py) and the random stream (random_stream.py).

They are optional: ``pip install`` builds them when a C compiler is present (setup.py), and
without them, or with ``MERGEHUB_NATIVE=0``, the engine runs its torch path, which gives the
same bits on finite inputs, only slower (float64 sums taken in another order, arcee_fusion's
KL and the catalog's norms, agree to ~1e-15 instead). Tensors are flat, contiguous, on the CPU, float32 or
bfloat16. ctypes releases the GIL during each call, so the wrappers below spread a call's
range over ``THREADS`` Python threads (``_over_spans``), or run one model per thread
(``map_parallel``).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

KEY_BINS = 1 << 15  # bins of the top 16 bits of a non-negative float32 (loops.c's KEY_BINS)
LOW_BINS = 1 << 16  # bins of its low 16 bits (loops.c's LOW_BINS)
THREADS = max(1, min(4, os.cpu_count() or 1))
DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_MIN_SPLIT = 1 << 16  # elements per thread below which one thread does the whole range
# exact L1 slots (operators/exact_sum.py) as the loops fill them: 256 exponents of the kept
# entries, then 256 of the dropped ones (loops.c's SLOTS)
_EXPONENTS = 256
_SLOTS = 2 * _EXPONENTS


class ModelSpec(ctypes.Structure):
    """How one expert is pruned and weighted (loops.c's mh_model). An entry is kept when
    |δ| > keep level, |δ| ≤ drop level (each level is *_before at flat positions below *_cut,
    *_after from there on) and its draw u24 (operators/random_stream.py, key0/key1) is below
    ``threshold``; a kept entry contributes (δ·factor)·weight."""

    _fields_ = [
        ("x", ctypes.c_void_p), ("dtype", ctypes.c_int32),
        ("weight", ctypes.c_float), ("factor", ctypes.c_float),
        ("keep_before", ctypes.c_float), ("keep_after", ctypes.c_float),
        ("drop_before", ctypes.c_float), ("drop_after", ctypes.c_float),
        ("keep_cut", ctypes.c_int64), ("drop_cut", ctypes.c_int64), ("offset", ctypes.c_int64),
        ("key0", ctypes.c_uint32), ("key1", ctypes.c_uint32), ("threshold", ctypes.c_uint32),
        ("mask", ctypes.c_void_p),
    ]


class _Bracket(ctypes.Structure):
    """loops.c's mh_bracket: entries of |δ| with float32 pattern in [lo, hi], collected in flat order."""

    _fields_ = [
        ("lo", ctypes.c_uint32), ("hi", ctypes.c_uint32), ("cap", ctypes.c_int64),
        ("keys", ctypes.c_void_p), ("positions", ctypes.c_void_p),
        ("found", ctypes.c_int64), ("above", ctypes.c_int64),
    ]


@dataclass
class Collected:
    """The entries of |δ| whose float32 pattern lies in a bracket: their patterns and flat
    positions (int32), in flat order, and the number of entries above the bracket."""

    keys: torch.Tensor
    positions: torch.Tensor
    above: int


def model_spec(x: torch.Tensor, weight: float, keep: tuple[float, float, int] = (-math.inf, -math.inf, 0),
               drop: tuple[float, float, int] = (math.inf, math.inf, 0), key: tuple[int, int] = (0, 0),
               offset: int = 0, threshold: int = 1 << 24, factor: float = 1.0,
               mask: torch.Tensor | None = None) -> ModelSpec:
    """A ModelSpec for flat tensor ``x`` (which, like ``mask``, must outlive the spec); the
    defaults keep everything. ``offset``: the flat index of x[0] in the full tensor, which the
    draws are keyed by. ``mask``: a bit per entry of x (``della_masks``), entries at 0 are dropped."""
    return ModelSpec(x.data_ptr(), DTYPES[x.dtype], weight, factor, keep[0], keep[1], drop[0], drop[1],
                     keep[2], drop[2], offset, key[0], key[1], threshold,
                     None if mask is None else mask.data_ptr())


def _load() -> ctypes.CDLL | None:
    if os.environ.get("MERGEHUB_NATIVE", "1") == "0":
        return None
    here = Path(__file__).parent
    found = [here / f"_loops{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    found = [path for path in found if path.exists()]
    if not found:
        return None
    lib = ctypes.CDLL(str(found[0]))
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.mh_magnitude_histogram.argtypes = [ptr, i32, ptr, i32, i64, ptr]
    lib.mh_magnitude_histogram.restype = i32
    lib.mh_value_histogram.argtypes = [ptr, i64, i64, ptr, ptr]
    lib.mh_value_histogram.restype = i32
    lib.mh_value_positions.argtypes = [ptr, i64, i32, ptr, i64]
    lib.mh_value_positions.restype = i64
    lib.mh_magnitude_low_histogram.argtypes = [ptr, i32, ptr, i32, i64, i32, ptr]
    lib.mh_magnitude_low_histogram.restype = i32
    lib.mh_magnitude_count.argtypes = [ptr, i32, ptr, i32, i64, ptr, i32, ptr, ptr, ptr]
    lib.mh_magnitude_count.restype = i32
    lib.mh_magnitude_position.argtypes = [ptr, i32, ptr, i32, i64, ctypes.c_uint32, i64, i64]
    lib.mh_magnitude_position.restype = i64
    lib.mh_della_mask.argtypes = [ptr, i32, ptr, i32, i64, i64, i64, i64, ctypes.c_uint32, ctypes.c_uint32,
                                  ptr, ptr, ptr]
    lib.mh_della_mask.restype = i32
    lib.mh_gram_blocks.argtypes = [ptr, ptr, i32, ptr, i32, i64, i64, i64, i64, ptr]
    lib.mh_gram_blocks.restype = i32
    lib.mh_combine.argtypes = [ptr, ptr, ptr, i32, ptr, i32, ctypes.c_double, i64, i64, ptr, i32]
    lib.mh_combine.restype = None
    lib.mh_ram_counts.argtypes = [ptr, ptr, i32, ptr, i32, ctypes.c_float, i64, i64, ptr, ptr]
    lib.mh_ram_counts.restype = None
    lib.mh_ram_combine.argtypes = [ptr, ptr, i32, ptr, i32, ctypes.c_float, ptr, i64, i64, ptr, i32]
    lib.mh_ram_combine.restype = None
    lib.mh_sce_variance.argtypes = [ptr, ptr, i32, ptr, i32, i64, i64, ptr]
    lib.mh_sce_variance.restype = i32
    lib.mh_sce_energy.argtypes = [ptr, ptr, i32, ptr, i32, ptr, i32, ctypes.c_float, i64, i64, i64, i64, i64, ptr]
    lib.mh_sce_energy.restype = i32
    lib.mh_sce_combine.argtypes = [ptr, ptr, i32, ptr, i32, ptr, i32, ctypes.c_float, i64, ptr, i64, i64, ptr, i32]
    lib.mh_sce_combine.restype = i32
    lib.mh_linear.argtypes = [ptr, ptr, ptr, i32, i32, ctypes.c_float, i64, i64, ptr, i32]
    lib.mh_linear.restype = None
    lib.mh_nearswap.argtypes = [ptr, i32, ptr, i32, ctypes.c_float, i64, i64, ptr, i32]
    lib.mh_nearswap.restype = None
    lib.mh_fusion_divergence.argtypes = [ptr, i32, ptr, i32, i64, i64, i64, ptr, i64, i64, ctypes.c_uint32,
                                         ctypes.c_uint32, ptr]
    lib.mh_fusion_divergence.restype = i32
    lib.mh_fusion_apply.argtypes = [ptr, i32, ptr, i32, i64, i64, i64, ptr, ctypes.c_float, ptr, i32]
    lib.mh_fusion_apply.restype = None
    lib.mh_fusion_sample.argtypes = [ptr, i32, ptr, i32, i64, i64, i64, i64, i64, ctypes.c_uint32, ctypes.c_uint32,
                                     ptr, ptr]
    lib.mh_fusion_sample.restype = None
    lib.mh_smallest.argtypes = [ptr, i64, ptr, i32, ptr]
    lib.mh_smallest.restype = i32
    lib.mh_block_stats.argtypes = [ptr, i32, ptr, i32, i64, i64, ptr, ptr, ptr]
    lib.mh_block_stats.restype = i32
    lib.mh_draws.argtypes = [i64, i64, ctypes.c_uint32, ctypes.c_uint32, ptr]
    lib.mh_draws.restype = None
    lib.mh_prune_sums.argtypes = [ptr, i32, i64, i64, ctypes.POINTER(ModelSpec), ptr, ptr]
    lib.mh_prune_sums.restype = i32
    lib.mh_family_combine.argtypes = [ptr, i32, i64, i64, i32, ctypes.POINTER(ModelSpec), i32, i32,
                                      ctypes.c_float, ctypes.c_float, ptr, i32]
    lib.mh_family_combine.restype = None
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
        raise MemoryError("out of memory in the compiled loops' working buffers: free memory, "
                          "or run fewer merges at once, and retry")


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


def value_histogram(values: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """(int64[KEY_BINS] counts of the top 16 bits of flat float32 ``values``, the number of
    non-zero values) in one pass on all cores, as selection.topk_rule bins them; None when a
    value has its sign bit set (−0, a negative NaN), which topk_rule's torch path refuses."""
    assert supports(values) and values.dtype == torch.float32

    def run(span: tuple[int, int]) -> tuple[torch.Tensor, int] | None:
        hist, nonzero = torch.zeros(KEY_BINS, dtype=torch.int64), ctypes.c_int64(0)
        status = _LIB.mh_value_histogram(values.data_ptr(), span[0], span[1], hist.data_ptr(), ctypes.byref(nonzero))
        if status == -2:
            return None
        _check(status)
        return hist, nonzero.value

    parts = _over_spans(values.numel(), run)
    if not parts or any(part is None for part in parts):
        return None
    return sum(hist for hist, _ in parts), sum(nonzero for _, nonzero in parts)


def value_positions(values: torch.Tensor, key: int, count: int) -> torch.Tensor:
    """int64: the flat positions, ascending, of the ``count`` values whose float32 top 16 bits
    are ``key`` (``count`` from ``value_histogram``)."""
    assert supports(values) and values.dtype == torch.float32
    positions = torch.empty(count, dtype=torch.int64)
    found = _LIB.mh_value_positions(values.data_ptr(), values.numel(), key, positions.data_ptr(), count)
    if found != count:
        raise RuntimeError(f"the values changed between their histogram and their positions ({found} ≠ {count})")
    return positions


TALLY = 64 * 1024  # entries per tally of magnitude_count (loops.c TALLY)


def magnitude_count(x: torch.Tensor, base: torch.Tensor, patterns: list[int],
                    brackets: list[tuple[int, int, int] | None] | None = None
                    ) -> tuple[list[tuple[int, int]], torch.Tensor, list[Collected | None]]:
    """For each float32 bit pattern (one or two): (#entries whose |x − base| is above it, #equal
    to it), in one pass; int64[len(patterns), ⌈n / TALLY⌉], each pattern's equal entries in
    each run of TALLY, for ``magnitude_position``; and for each pattern given a bracket
    (lo, hi, cap), the entries with pattern in [lo, hi] collected in the same pass (None when
    no bracket was given, more than ``cap`` entries fell in it, or numel ≥ 2^31)."""
    n = base.numel()
    counts = torch.zeros(2 * len(patterns), dtype=torch.int64)
    tallies = torch.zeros((len(patterns), -(-n // TALLY)), dtype=torch.int32)
    c_patterns = (ctypes.c_uint32 * len(patterns))(*patterns)
    brackets = brackets or [None] * len(patterns)
    c_brackets = (_Bracket * len(patterns))()
    buffers = []
    for c, bracket in zip(c_brackets, brackets):
        lo, hi, cap = bracket or (0, 0, 0)
        cap = cap if n < 1 << 31 else 0  # positions are int32: no bracket for larger tensors
        keys, positions = torch.empty(cap, dtype=torch.int32), torch.empty(cap, dtype=torch.int32)
        c.lo, c.hi, c.cap, c.keys, c.positions = lo, hi, cap, keys.data_ptr(), positions.data_ptr()
        buffers.append((keys, positions))
    _check(_LIB.mh_magnitude_count(*_ref(x), *_ref(base), n, c_patterns, len(patterns), counts.data_ptr(),
                                   tallies.data_ptr(), c_brackets))
    collected = [None if c.cap == 0 or c.found > c.cap else  # (|δ|'s patterns are < 2^31)
                 Collected(keys[:c.found], positions[:c.found], c.above)
                 for c, (keys, positions) in zip(c_brackets, buffers)]
    pairs = counts.view(-1, 2).tolist()
    return [(above, equal) for above, equal in pairs], tallies.long(), collected


def magnitude_position(x: torch.Tensor, base: torch.Tensor, pattern: int, rank: int,
                       tallies: torch.Tensor | None = None) -> int:
    """Flat position of the entry numbered ``rank`` (from 0, in flat order) among those whose
    |x − base| has float32 bit pattern ``pattern``; numel when there are not that many.
    ``tallies`` (that pattern's row from ``magnitude_count``): the scan starts in the run of
    TALLY entries that holds it instead of at the start."""
    start = 0
    if tallies is not None:
        before = torch.cumsum(tallies, 0)
        run = int(torch.searchsorted(before, rank, right=True))  # the first run whose tally passes rank
        if run >= before.numel():
            return base.numel()
        if run:
            start, rank = run * TALLY, rank - int(before[run - 1])
    position = _LIB.mh_magnitude_position(*_ref(x), *_ref(base), base.numel(), pattern, rank, start)
    _check(position)
    return position


def smallest(values: torch.Tensor, ranks: list[int]) -> torch.Tensor:
    """float32[len(ranks)]: the r-th smallest (1-based) of flat float32 ``values`` for each r in
    ``ranks``, as sorting orders them (−0 before +0, NaN last): selection.smallest_values' two
    counting passes, on one core (fewer than 256 ranks, fewer than 2^32 values)."""
    assert values.dtype == torch.float32 and values.device.type == "cpu" and values.is_contiguous()
    assert 0 < len(ranks) < 256 and values.numel() < 1 << 32 and all(1 <= r <= values.numel() for r in ranks)
    c_ranks = (ctypes.c_int64 * len(ranks))(*ranks)
    out = torch.empty(len(ranks), dtype=torch.float32)
    _check(_LIB.mh_smallest(values.data_ptr(), values.numel(), c_ranks, len(ranks), out.data_ptr()))
    return out


def _over_spans(n: int, run, per_thread: int = 1, min_split: int | None = None) -> list:
    """run((start, stop)) over up to ``per_thread`` pieces of range(n) per thread, on the pool,
    each at least ``min_split`` long (default ``_MIN_SPLIT`` elements). Returns the results."""
    if n <= 0:
        return []
    parts = max(1, min(THREADS * per_thread, n // (_MIN_SPLIT if min_split is None else min_split)))
    step = -(-n // parts)
    return map_parallel(run, [(a, min(a + step, n)) for a in range(0, n, step)])


def draws24(key: tuple[int, int], start: int, out: torch.Tensor) -> torch.Tensor:
    """``out`` (int32, CPU, contiguous) ← the draws u24 of flat entries start, start + 1, …
    (operators/random_stream.py), on all cores."""
    assert _LIB is not None and out.dtype == torch.int32 and out.is_contiguous() and out.device.type == "cpu"
    flat = out.view(-1)

    def run(span: tuple[int, int]) -> None:
        _LIB.mh_draws(start + span[0], span[1] - span[0], key[0], key[1], flat[span[0]:].data_ptr())

    _over_spans(flat.numel(), run)
    return out


def della_masks(base: torch.Tensor, jobs: list[tuple], width: int,
                sums: bool) -> list[tuple[list[int], list[int]] | None]:
    """DELLA's keep masks, all experts at once on all cores. ``base`` is flat (rows × ``width``);
    each job is (x, offset, key, probs, mask): flat expert ``x``, the flat index of its first
    entry in the full tensor, its stream key, float32 keep probabilities by rank in a row
    (length ``width``), and the ``mask`` to fill: uint8, a bit per entry (entry j is bit j % 8,
    little-endian, of byte j // 8). With ``sums``, each job's exact L1
    slots (as ``prune_sums``) come back too, measured in the same pass."""
    rows = base.numel() // width
    per_task = -(-rows * len(jobs) // (4 * THREADS))  # a few tasks per thread,
    per_task = max(8, -(-per_task // 8) * 8)  # in multiples of 8 rows: each starts on a mask byte
    tasks = [(i, r, min(r + per_task, rows)) for i in range(len(jobs)) for r in range(0, rows, per_task)]

    def run(task) -> tuple[int, torch.Tensor | None]:
        i, r0, r1 = task
        x, offset, key, probs, mask = jobs[i]
        part = torch.zeros(_SLOTS, dtype=torch.int64) if sums else None
        _check(_LIB.mh_della_mask(*_ref(x), *_ref(base), width, r0, r1, offset, key[0], key[1],
                                  probs.data_ptr(), mask.data_ptr(), None if part is None else part.data_ptr()))
        return i, part

    totals: list[torch.Tensor | None] = [torch.zeros(_SLOTS, dtype=torch.int64) if sums else None for _ in jobs]
    for i, part in map_parallel(run, tasks):
        if part is not None:
            totals[i] += part
    return [None if t is None else _before_after(t) for t in totals]


def _before_after(sums: torch.Tensor) -> tuple[list[int], list[int]]:
    """(slots of all entries, slots of the kept ones) from kept | dropped slots."""
    kept, dropped = sums[:_EXPONENTS].tolist(), sums[_EXPONENTS:].tolist()
    return [a + b for a, b in zip(kept, dropped)], kept


def prune_sums(base: torch.Tensor, spec: ModelSpec,
               drawn: torch.Tensor | None = None) -> tuple[list[int], list[int]]:
    """Exact L1 sums (operators/exact_sum.py slots) of |δ| over all entries and over the kept ones.
    ``drawn`` (uint8, ⌈n/8⌉ bytes, or None) ← a bit per entry (as ``della_masks``' masks): 1 where
    the spec's draw keeps the entry (all 1 when it draws nothing), a ``mask`` for the combine.
    One thread: callers run one expert per thread (``map_parallel``), which must not nest."""
    assert supports(base)
    assert drawn is None or (drawn.dtype == torch.uint8 and drawn.numel() * 8 >= base.numel())
    sums = torch.zeros(_SLOTS, dtype=torch.int64)
    _check(_LIB.mh_prune_sums(*_ref(base), 0, base.numel(), ctypes.byref(spec), sums.data_ptr(),
                              None if drawn is None else drawn.data_ptr()))
    return _before_after(sums)


def family_combine(base: torch.Tensor, specs: list[ModelSpec], consensus: bool, normalize: bool,
                   lam: float, out: torch.Tensor, sum_divisor: float = 1.0) -> torch.Tensor:
    """``out`` ← base + λ·combine(pruned, weighted deltas), computed in float32 and rounded to
    ``out``'s dtype: the TIES sign consensus (with ``normalize``: divided by the agreeing weights)
    or a plain sum (with ``normalize``: divided by ``sum_divisor``, as a float32)."""
    assert supports(base, out)
    n = base.numel()
    c_specs = (ModelSpec * len(specs))(*specs)

    def run(span: tuple[int, int]) -> None:
        _LIB.mh_family_combine(*_ref(base), span[0], span[1], len(specs), c_specs, int(consensus),
                               int(normalize), sum_divisor, lam, *_ref(out))

    _over_spans(n, run)
    return out


def _pointers(tensors: list[torch.Tensor]):
    return ((ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors]),
            (ctypes.c_int * len(tensors))(*[DTYPES[t.dtype] for t in tensors]))


def gram_blocks(xs: list[torch.Tensor], base: torch.Tensor | None, block: int) -> torch.Tensor:
    """float64[blocks, k, k]: per block of ``block`` entries (a multiple of 8), the Gram matrix
    (upper triangle) of v_i = x_i − base (x_i without a base); operators/span.py's order."""
    assert supports(*xs, *([] if base is None else [base])) and block % 8 == 0
    n, k = xs[0].numel(), len(xs)
    blocks = -(-n // block)
    out = torch.zeros(blocks, k, k, dtype=torch.float64)
    c_xs, c_dtypes = _pointers(xs)
    b_ptr, b_dtype = (None, 0) if base is None else _ref(base)

    def run(span: tuple[int, int]) -> None:
        _check(_LIB.mh_gram_blocks(c_xs, c_dtypes, k, b_ptr, b_dtype, n, block, span[0], span[1],
                                   out[span[0]:].data_ptr()))

    _over_spans(blocks, run, per_thread=4, min_split=1)
    return out


def combine(xs: list[torch.Tensor], coefs: list[float], base: torch.Tensor | None, base_coef: float,
            out: torch.Tensor) -> torch.Tensor:
    """``out`` ← Σ c_i·x_i (+ base_coef·base), summed in float64, rounded to float32 then to
    ``out``'s dtype (operators/span.py's order)."""
    assert supports(out, *xs, *([] if base is None else [base]))
    c_xs, c_dtypes = _pointers(xs)
    c_coefs = (ctypes.c_double * len(xs))(*coefs)
    b_ptr, b_dtype = (None, 0) if base is None else _ref(base)

    def run(span: tuple[int, int]) -> None:
        _LIB.mh_combine(c_xs, c_dtypes, c_coefs, len(xs), b_ptr, b_dtype, base_coef, span[0], span[1], *_ref(out))

    _over_spans(out.numel(), run)
    return out


RAM_MODELS = 8  # the RAM loops count active models per entry for up to this many


def ram_counts(xs: list[torch.Tensor], base: torch.Tensor, eps: float) -> tuple[list[int], list[int]]:
    """(#entries active in model i alone, #entries active in model i) for RAM+."""
    assert supports(base, *xs) and len(xs) <= RAM_MODELS
    c_xs, c_dtypes = _pointers(xs)

    def run(span: tuple[int, int]) -> torch.Tensor:
        counts = torch.zeros(2, len(xs), dtype=torch.int64)
        _LIB.mh_ram_counts(c_xs, c_dtypes, len(xs), *_ref(base), eps, span[0], span[1],
                           counts[0].data_ptr(), counts[1].data_ptr())
        return counts

    total = torch.zeros(2, len(xs), dtype=torch.int64)
    for part in _over_spans(base.numel(), run):
        total += part
    return total[0].tolist(), total[1].tolist()


def ram_combine(xs: list[torch.Tensor], base: torch.Tensor, eps: float, boosts: list[float],
                out: torch.Tensor) -> torch.Tensor:
    """``out`` ← RAM (boosts all 1) or RAM+ merge of flat tensors (operators/ram.py's order)."""
    assert supports(base, out, *xs) and len(xs) <= RAM_MODELS
    c_xs, c_dtypes = _pointers(xs)
    c_boosts = (ctypes.c_float * len(xs))(*boosts)

    def run(span: tuple[int, int]) -> None:
        _LIB.mh_ram_combine(c_xs, c_dtypes, len(xs), *_ref(base), eps, c_boosts, span[0], span[1], *_ref(out))

    _over_spans(base.numel(), run)
    return out


def sce_variance(xs: list[torch.Tensor], base: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` (float32, flat) ← the population variance of the deltas x_i − base, entry by entry."""
    assert supports(base, *xs) and out.dtype == torch.float32 and out.is_contiguous()
    c_xs, c_dtypes = _pointers(xs)

    def run(span: tuple[int, int]) -> None:
        _check(_LIB.mh_sce_variance(c_xs, c_dtypes, len(xs), *_ref(base), span[0], span[1], out.data_ptr()))

    _over_spans(base.numel(), run)
    return out


def _selection_args(variance: torch.Tensor | None, selection: tuple[float, int] | None):
    """(variance pointer, select, threshold, cut): keep entries whose variance is above the
    threshold, or equal to it before flat position cut; ``selection`` None keeps everything."""
    if selection is None:
        return None, 0, 0.0, 0
    return variance.data_ptr(), 1, selection[0], selection[1]


def sce_energy(xs: list[torch.Tensor], base: torch.Tensor, variance: torch.Tensor | None,
               selection: tuple[float, int] | None, block: int) -> torch.Tensor:
    """float64[blocks, k]: per block, Σ of each selected δ_i² (operators/span.py's lane order)."""
    assert supports(base, *xs) and block % 8 == 0
    n, k = base.numel(), len(xs)
    blocks = -(-n // block)
    out = torch.zeros(blocks, k, dtype=torch.float64)
    c_xs, c_dtypes = _pointers(xs)
    v_ptr, select, threshold, cut = _selection_args(variance, selection)

    def run(span: tuple[int, int]) -> None:
        _check(_LIB.mh_sce_energy(c_xs, c_dtypes, k, *_ref(base), v_ptr, select, threshold, cut, n, block,
                                  span[0], span[1], out[span[0]:].data_ptr()))

    _over_spans(blocks, run, per_thread=4, min_split=1)
    return out


def sce_combine(xs: list[torch.Tensor], base: torch.Tensor, variance: torch.Tensor | None,
                selection: tuple[float, int] | None, weights: list[float], out: torch.Tensor) -> torch.Tensor:
    """``out`` ← SCE's erase step over the selected deltas (operators/sce.py's float32 order)."""
    assert supports(base, out, *xs)
    c_xs, c_dtypes = _pointers(xs)
    c_weights = (ctypes.c_float * len(xs))(*weights)
    v_ptr, select, threshold, cut = _selection_args(variance, selection)

    def run(span: tuple[int, int]) -> None:
        _check(_LIB.mh_sce_combine(c_xs, c_dtypes, len(xs), *_ref(base), v_ptr, select, threshold, cut,
                                   c_weights, span[0], span[1], *_ref(out)))

    _over_spans(base.numel(), run)
    return out


def linear(xs: list[torch.Tensor], weights: list[float], divisor: float | None, out: torch.Tensor) -> torch.Tensor:
    """``out`` ← (Σ w_i·x_i) / divisor (no division when None), accumulated in float32 with one
    fused multiply-add per input (operators/linear.py's order)."""
    assert supports(out, *xs)
    c_xs, c_dtypes = _pointers(xs)
    c_weights = (ctypes.c_float * len(xs))(*weights)

    def run(span: tuple[int, int]) -> None:
        _LIB.mh_linear(c_xs, c_dtypes, c_weights, len(xs), divisor is not None,
                       1.0 if divisor is None else divisor, span[0], span[1], *_ref(out))

    _over_spans(out.numel(), run)
    return out


def nearswap(x: torch.Tensor, base: torch.Tensor, t: float, out: torch.Tensor) -> torch.Tensor:
    """``out`` ← nearswap of flat ``x`` towards ``base`` (operators/nearswap.py's float32 order)."""
    assert supports(base, x, out)

    def run(span: tuple[int, int]) -> None:
        _LIB.mh_nearswap(*_ref(x), *_ref(base), t, span[0], span[1], *_ref(out))

    _over_spans(base.numel(), run)
    return out


def fusion_divergence(x: torch.Tensor, base: torch.Tensor, width: int, sample_size: int = 0,
                      key: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(kl, sample): kl float32[rows] = KL(softmax(x_r) + ε ‖ softmax(base_r) + ε) of each row of
    flat rows × ``width`` tensors, in float64 as a sum of non-negative terms
    (operators/arcee_fusion.py), NaN for a row holding NaN or ±Inf; with ``sample_size``, also
    the importance |x − base|·kl[row] at the ``sample_size`` positions arcee_fusion.sample_positions
    draws with ``key`` (NaN in those rows), else None."""
    assert supports(base, x)
    rows = base.numel() // width
    kl = torch.empty(rows, dtype=torch.float32)
    sample = torch.empty(sample_size, dtype=torch.float32) if sample_size else None
    sample_ptr = sample.data_ptr() if sample is not None else None

    def run(span: tuple[int, int]) -> None:
        _check(_LIB.mh_fusion_divergence(*_ref(x), *_ref(base), width, span[0], span[1], kl.data_ptr(), rows,
                                         sample_size, key[0], key[1], sample_ptr))

    _over_spans(rows, run, per_thread=4, min_split=max(1, _MIN_SPLIT // width))
    return kl, sample


def fusion_sample(x: torch.Tensor, base: torch.Tensor, width: int, kl: torch.Tensor, key: tuple[int, int],
                  sample: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
    """``sample`` (float32, the size of the sample) ← |x − base|·kl[row] at the positions
    arcee_fusion.sample_positions draws with ``key`` in flat rows × ``width`` tensors, in that
    order: fusion_divergence's sample, again for a ``kl`` computed otherwise. With ``rows``, only
    the shares of those rows are taken again (the ones whose KL torch computed)."""
    assert supports(base, x) and kl.dtype == torch.float32 and sample.dtype == torch.float32
    assert sample.is_contiguous()
    kl, size, total_rows = kl.contiguous(), sample.numel(), base.numel() // width

    def run(span: tuple[int, int]) -> None:
        _LIB.mh_fusion_sample(*_ref(x), *_ref(base), width, total_rows, size, span[0], span[1],
                              key[0], key[1], kl.data_ptr(), sample[span[0]:].data_ptr())

    if rows is None:
        _over_spans(size, run)
    else:  # row r's share: samples ⌈r·size / rows⌉ … ⌈(r + 1)·size / rows⌉ − 1 (loops.c, first_sample)
        for r in rows:
            first, end = -(-r * size // total_rows), -(-(r + 1) * size // total_rows)
            if first < end:
                run((first, end))
    return sample


def fusion_apply(x: torch.Tensor, base: torch.Tensor, width: int, kl: torch.Tensor, threshold: float,
                 out: torch.Tensor) -> torch.Tensor:
    """``out`` ← base + [|x − base|·kl[row] ≥ threshold]·(x − base) (arcee_fusion.py's float32 order)."""
    assert supports(base, x, out) and kl.dtype == torch.float32 and kl.is_contiguous()

    def run(span: tuple[int, int]) -> None:
        _LIB.mh_fusion_apply(*_ref(x), *_ref(base), width, span[0], span[1], kl.data_ptr(), threshold, *_ref(out))

    _over_spans(base.numel(), run)
    return out


def block_stats(x: torch.Tensor, base: torch.Tensor, block: int) -> tuple[list[float], list[float], list[int], bool]:
    """Per block of ``block`` entries of flat ``x`` and ``base``: (Σ δ² over finite δ = x − base,
    float32 squares summed in float64; max |δ| over finite δ; #δ ≠ 0), and whether any δ is
    NaN or ±Inf (the catalog's statistics, catalog.py)."""
    assert supports(base, x)
    blocks = -(-base.numel() // block)
    sq = torch.empty(blocks, dtype=torch.float64)
    top = torch.empty(blocks, dtype=torch.float32)
    nonzero = torch.empty(blocks, dtype=torch.int64)
    bad = _LIB.mh_block_stats(*_ref(x), *_ref(base), base.numel(), block, sq.data_ptr(), top.data_ptr(),
                              nonzero.data_ptr())
    return sq.tolist(), top.tolist(), nonzero.tolist(), bool(bad)
