"""Reusable, page-aligned memory for the executor's reads and outputs.

Allocating a fresh buffer for every unit is expensive in a way a profile hides: the C library
returns large freed blocks to the kernel, so each new one is faulted in and zeroed page by
page again (on 2 cores that was 10 s of kernel time in a 5.5 GB merge). The loader therefore
fills *slabs*: big aligned buffers handed out by a small pool, bump-allocated for one unit's
inputs and output, and returned to the pool once the unit is written. A slab that overflowed
grows to its high-water mark when it is next reset, up to ``MAX_KEPT_BYTES``; beyond that
(a huge whole tensor) the extra memory is simply allocated and dropped.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import ctypes.util
import queue
import threading

import torch

ALIGN = 4096  # O_DIRECT needs offsets, lengths and addresses aligned to the logical block size
MAX_KEPT_BYTES = 768 << 20
# Elementwise work is done in tiles of this many elements (2 MiB of float32): a tile and its
# temporaries stay in cache, so a chain of torch ops costs one trip to memory instead of one each.
TILE_ELEMENTS = 1 << 19


def aligned_empty(nbytes: int) -> torch.Tensor:
    """An uninitialised uint8 tensor of ``nbytes`` whose data starts on an ``ALIGN`` boundary."""
    raw = torch.empty(nbytes + ALIGN, dtype=torch.uint8)
    skip = -raw.data_ptr() % ALIGN
    return raw[skip:skip + nbytes]


class Slab:
    """A bump allocator over one aligned buffer. Views it hands out stay valid until ``reset``."""

    def __init__(self, capacity: int = 0):
        self._buffer = aligned_empty(capacity)
        self._used = 0
        self._wanted = 0  # bytes the current unit asked for, overflow included

    def take(self, nbytes: int) -> torch.Tensor:
        size = -(-nbytes // ALIGN) * ALIGN
        self._wanted += size
        if self._used + size > self._buffer.numel():
            return aligned_empty(nbytes)  # overflow: the slab grows at the next reset
        out = self._buffer[self._used:self._used + nbytes]
        self._used += size
        return out

    def take_tensor(self, shape, dtype: torch.dtype) -> torch.Tensor:
        return self.take(math.prod(shape) * dtype.itemsize).view(dtype).view(tuple(shape))

    def reset(self) -> None:
        if self._buffer.numel() < self._wanted <= MAX_KEPT_BYTES:
            self._buffer = aligned_empty(self._wanted)
        self._used = self._wanted = 0


class SlabPool:
    """``size`` slabs shared by the pipeline's threads; ``get`` blocks until one is free."""

    def __init__(self, size: int):
        self._free: queue.Queue[Slab] = queue.Queue()
        for _ in range(size):
            self._free.put(Slab())

    def get(self, stop: threading.Event | None = None) -> Slab | None:
        """A reset slab, or None once ``stop`` is set while waiting."""
        while True:
            try:
                slab = self._free.get(timeout=0.05)
            except queue.Empty:
                if stop is not None and stop.is_set():
                    return None
                continue
            slab.reset()
            return slab

    def put(self, slab: Slab | None) -> None:
        if slab is not None:
            self._free.put(slab)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024
_MAX_MMAP_THRESHOLD = 32 << 20  # glibc refuses more on 64-bit
_retained_lock = threading.Lock()
_retained_depth = 0


def _load_glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl, macOS): nothing to tune
        return None


_GLIBC = _load_glibc()


@contextlib.contextmanager
def retained_heap():
    """Keep freed memory in the C heap while merging, and give it back afterwards.

    Whole-tensor operators and torch's temporaries allocate and free tens of MB per tensor;
    by default glibc serves those with fresh mmaps and returns them on free, so every one is
    faulted in and zeroed again (2-3 s of kernel time in a 5 GB TIES merge on 2 cores). With
    the mmap threshold at its maximum and no trimming, freed blocks are reused instead; at the
    end the thresholds go back to glibc's defaults and ``malloc_trim`` returns the memory, so a
    long-lived worker does not keep its peak."""
    global _retained_depth
    libc = _GLIBC
    if libc is None:
        yield
        return
    with _retained_lock:  # process-wide setting: the outermost user sets and restores it
        _retained_depth += 1
        if _retained_depth == 1:
            libc.mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        with _retained_lock:
            _retained_depth -= 1
            if _retained_depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
                libc.mallopt(_M_TRIM_THRESHOLD, 2 * _GLIBC_DEFAULT_THRESHOLD)
                libc.malloc_trim(0)
