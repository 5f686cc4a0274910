"""Reusable, page-aligned memory for the executor's reads and outputs.

Allocating a fresh buffer for every unit is expensive in a way a profile hides: the C library
returns large freed blocks to the kernel, so each new one is faulted in and zeroed page by
page again (on 2 cores that was 10 s of kernel time in a 5.5 GB merge). The loader therefore
fills *slabs*: big aligned buffers handed out by a small pool, bump-allocated for one unit's
inputs and output, and returned to the pool once the unit is written. A slab that overflowed
is replaced, when it is next reset, by one of ``MAX_KEPT_BYTES`` (address space only: a page
costs memory once touched); a unit larger than that (a huge whole tensor) gets its extra
memory allocated and dropped.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import threading

import torch

from .libc import LIBC

ALIGN = 4096  # O_DIRECT needs offsets, lengths and addresses aligned to the logical block size
MAX_KEPT_BYTES = 768 << 20
# Elementwise work is done in tiles of this many elements (2 MiB of float32): a tile and its
# temporaries stay in cache, so a chain of torch ops costs one trip to memory instead of one each.
TILE_ELEMENTS = 1 << 19
HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_MADVISE = getattr(LIBC, "madvise", None)  # None without a C library that has it


def aligned_empty(nbytes: int) -> torch.Tensor:
    """An uninitialised uint8 tensor of ``nbytes`` whose data starts on an ``ALIGN`` boundary.
    Large ones start on a huge-page boundary and ask the kernel for transparent huge pages:
    a fresh slab of hundreds of MB is then faulted in 2 MiB at a time instead of 4 KiB (on
    2 cores the 4 KiB faults of a 5 GB TIES merge's slabs cost about a second of kernel time)."""
    align = HUGE_PAGE if nbytes >= 2 * HUGE_PAGE else ALIGN
    raw = torch.empty(nbytes + align, dtype=torch.uint8)
    skip = -raw.data_ptr() % align
    out = raw[skip:skip + nbytes]
    if align == HUGE_PAGE and _MADVISE is not None:
        _MADVISE(ctypes.c_void_p(out.data_ptr()), ctypes.c_size_t(nbytes // HUGE_PAGE * HUGE_PAGE),
                 _MADV_HUGEPAGE)  # a hint: where THP is off it fails harmlessly
    return out


class Slab:
    """A bump allocator over one aligned buffer. Views it hands out stay valid until ``reset``."""

    def __init__(self, capacity: int = 0):
        self._buffer = aligned_empty(capacity)
        self._used = 0
        self._wanted = 0  # bytes the current unit asked for, overflow included
        self.served = 0  # the largest unit (SlabPool.get's nbytes) this slab was handed for

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
            # Reserve the most a slab may keep at once: pages cost memory only once touched, so
            # this costs no more than the high-water mark, and a slab whose units keep growing
            # is not replaced (and its fresh pages faulted in and zeroed) again and again.
            self._buffer = aligned_empty(MAX_KEPT_BYTES)
        self._used = self._wanted = 0


class SlabPool:
    """``size`` slabs of ``capacity`` bytes (they grow as units need) shared by the pipeline's
    threads; ``get`` blocks until one is free."""

    def __init__(self, size: int, capacity: int = 0):
        self._free = [Slab(capacity) for _ in range(size)]
        self._changed = threading.Condition()

    def get(self, stop: threading.Event | None = None, nbytes: int = 0) -> Slab | None:
        """A reset slab for a unit of about ``nbytes``, or None once ``stop`` is set while
        waiting. Fresh pages are costly (zeroed by the kernel, and by a VM's host too), so of
        the free slabs this takes the one that served the smallest units at least this large,
        or else the one that served the largest: a big tensor goes where the last big tensor
        went, and small ones leave that slab free for the next big one."""
        with self._changed:
            while not self._free:
                if stop is not None and stop.is_set():
                    return None
                self._changed.wait(0.05)
            fits = [s for s in self._free if s.served >= nbytes]
            served = lambda s: s.served  # noqa: E731
            slab = min(fits, key=served) if fits else max(self._free, key=served)
            self._free.remove(slab)
            slab.served = max(slab.served, nbytes)
        slab.reset()
        return slab

    def put(self, slab: Slab | None) -> None:
        if slab is not None:
            with self._changed:
                self._free.append(slab)
                self._changed.notify()


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_DEFAULT_MMAP_MAX = 65536
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024
_MAX_MMAP_THRESHOLD = 32 << 20  # glibc refuses more on 64-bit
_retained_lock = threading.Lock()
_retained_depth = 0


# glibc's allocator controls (not in musl or macOS: then there is nothing to tune)
_GLIBC = LIBC if LIBC is not None and hasattr(LIBC, "mallopt") and hasattr(LIBC, "malloc_trim") else None


@contextlib.contextmanager
def retained_heap():
    """Keep freed memory in the C heap while merging, and give it back afterwards.

    Whole-tensor operators and torch's temporaries allocate and free tens of MB per tensor;
    by default glibc serves those with fresh mmaps and returns them on free, so every one is
    faulted in and zeroed again (2-3 s of kernel time in a 5 GB TIES merge on 2 cores). With
    mmap off (glibc's threshold stops at 32 MiB, and whole tensors are larger) and no trimming,
    freed blocks are reused from the heap instead (DARE-TIES on the README's family: 28 → 20 s,
    kernel time 16 → 3 s); at the end glibc's defaults come back and ``malloc_trim`` returns
    the memory, so a long-lived worker does not keep its peak."""
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
            libc.mallopt(_M_MMAP_MAX, 0)
    try:
        yield
    finally:
        with _retained_lock:
            _retained_depth -= 1
            if _retained_depth == 0:
                libc.mallopt(_M_MMAP_MAX, _GLIBC_DEFAULT_MMAP_MAX)
                libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
                libc.mallopt(_M_TRIM_THRESHOLD, 2 * _GLIBC_DEFAULT_THRESHOLD)
                libc.malloc_trim(0)
