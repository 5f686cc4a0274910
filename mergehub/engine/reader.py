"""Positional reads of planned byte ranges, with honest accounting.

A range that is not in the page cache is read around it (``O_DIRECT``): widened to whole
4 KiB pages, read straight into an aligned buffer, the tensor a view into it. That makes the
I/O bound exact (at most one partial page at each end of a run of adjacent reads, since the
last page read is remembered; never readahead) and saves the CPU time of copying every byte
out of the page cache, which on 2 cores is a third of a merge. A range that is already
cached (``pagecache.resident_pages``: checked without I/O) is copied from the cache instead,
at memory speed and at no storage cost; so are the cached pages of a range that is only
partly cached. Where ``O_DIRECT`` is refused (tmpfs, some network
filesystems) everything goes through the page cache: expert files then get
``POSIX_FADV_RANDOM`` so the kernel reads ahead nothing we did not plan, base files
``POSIX_FADV_SEQUENTIAL``.

Every read is bracketed by the storage counter of the thread doing it, so ``storage_bytes`` is
what this reader really cost; ``logical_bytes`` is what was asked for.
"""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import torch

from .buffers import ALIGN, Slab, aligned_empty
from .dtypes import torch_dtype
from .errors import InvalidCheckpoint
from .iostats import thread_read_bytes
from .layout import TensorInfo
from .pagecache import PAGE, resident_pages

_O_DIRECT = getattr(os, "O_DIRECT", 0)
# Uncached reads are synchronous: one request in flight cannot keep a disk busy. Large ranges
# are split into pieces read concurrently by the reader's thread pool, when it has one.
PIECE_BYTES = 4 << 20


class RangeReader:
    def __init__(self, sequential: bool, direct: bool = True, pool: ThreadPoolExecutor | None = None):
        self._pool = pool
        self._advice = os.POSIX_FADV_SEQUENTIAL if sequential else os.POSIX_FADV_RANDOM
        self._direct = direct and bool(_O_DIRECT)
        self._cached_fds: dict[Path, int] = {}
        self._direct_fds: dict[Path, int | None] = {}  # None: this filesystem refuses O_DIRECT
        self._tails: dict[Path, tuple[int, torch.Tensor]] = {}  # path -> (offset, last page read)
        self.logical_bytes = 0
        self.storage_bytes = 0

    # -- file descriptors ----------------------------------------------------------------------
    def _cached_fd(self, path: Path) -> int:
        fd = self._cached_fds.get(path)
        if fd is None:
            fd = self._cached_fds[path] = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, self._advice)
        return fd

    def _direct_fd(self, path: Path) -> int | None:
        if not self._direct:
            return None
        if path not in self._direct_fds:
            try:
                self._direct_fds[path] = os.open(path, os.O_RDONLY | _O_DIRECT)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: this filesystem has no O_DIRECT
                    raise
                self._direct_fds[path] = None
        return self._direct_fds[path]

    def _refuse_direct(self, path: Path) -> None:
        """The filesystem accepted O_DIRECT at open but refuses the reads: use the page cache."""
        fd = self._direct_fds.get(path)
        if fd is not None:
            os.close(fd)
        self._direct_fds[path] = None

    # -- reading -------------------------------------------------------------------------------
    @staticmethod
    def _pread_all(fd: int, path: Path, offset: int, out: memoryview, need: int) -> None:
        """Fill ``out`` from ``offset``; a short read is an error only before ``need`` bytes
        (a page-widened read may run past the end of the file)."""
        done = 0
        while done < len(out):
            got = os.preadv(fd, [out[done:]], offset + done)
            if got == 0:
                if done >= need:
                    return
                raise InvalidCheckpoint(f"{path}: file ended early at byte {offset + done}; "
                                        "it was truncated after indexing, re-register it")
            done += got

    def _read_pieces(self, fd: int, path: Path, offset: int, buf: torch.Tensor, need: int) -> int:
        """Fill ``buf`` from ``offset`` (in pieces, concurrently, when there is a pool); return the
        storage bytes this cost, each piece measured on the thread that read it."""

        def piece(a: int, b: int) -> int:
            before = thread_read_bytes()
            self._pread_all(fd, path, offset + a, memoryview(buf[a:b].numpy()), need - a)
            return thread_read_bytes() - before

        n = buf.numel()
        if self._pool is None or n <= PIECE_BYTES:
            return piece(0, n)
        futures = [self._pool.submit(piece, a, min(a + PIECE_BYTES, n)) for a in range(0, n, PIECE_BYTES)]
        wait(futures)  # all done before any error surfaces: no thread still writes into buf
        return sum(f.result() for f in futures)

    def _copy_cached(self, path: Path, offset: int, out: memoryview, ahead: bool = False) -> None:
        """Fill ``out`` (a writable byte view) from ``path`` at ``offset`` through the page cache.
        ``ahead``: ask the kernel for exactly this range first (``POSIX_FADV_WILLNEED``). Under
        ``POSIX_FADV_RANDOM`` a large read of uncached pages is otherwise fetched in small
        synchronous requests (measured once: a merge whose counting passes read 24 GB this way
        took 90 s without the hint, 73 s with it)."""
        fd = self._cached_fd(path)
        before = thread_read_bytes()
        if ahead and len(out):
            os.posix_fadvise(fd, offset, len(out), os.POSIX_FADV_WILLNEED)
        self._pread_all(fd, path, offset, out, len(out))
        self.storage_bytes += thread_read_bytes() - before

    def read_range(self, path: Path, offset: int, nbytes: int, slab: Slab | None = None) -> torch.Tensor:
        """Bytes [offset, offset + nbytes) of ``path`` as a uint8 tensor, placed in ``slab``
        when given (a view into it: valid until the slab is reset)."""
        fd = self._direct_fd(path)
        pages = resident_pages(self._cached_fd(path), offset, nbytes) if fd is not None else None
        if fd is None or nbytes <= 0 or (pages is not None and 0 not in pages):
            buf = _buffer(slab, nbytes)
            if nbytes:  # (all resident, or no O_DIRECT here)
                self._copy_cached(path, offset, memoryview(buf.numpy()), ahead=fd is None)
                self.logical_bytes += nbytes
            return buf
        start = offset - offset % ALIGN
        stop = -(-(offset + nbytes) // ALIGN) * ALIGN
        buf = _buffer(slab, stop - start)
        try:
            # Pages already cached (a page-cache warm-up, or holes the kernel left in one) are
            # copied; only the runs of missing pages are read from storage.
            read_last_page = False
            for resident, a, b in _page_runs(pages if PAGE == ALIGN else None, start, stop):
                read_last_page = not resident
                if resident:
                    lo, hi = max(a, offset), min(b, offset + nbytes)
                    self._copy_cached(path, lo, memoryview(buf[lo - start:hi - start].numpy()))
                    continue
                tail = self._tails.get(path)
                if tail is not None and tail[0] == a:
                    # this read begins in the page the previous one ended in: reuse it, so
                    # adjacent reads cost no more than one read of their union
                    buf[a - start:a - start + ALIGN].copy_(tail[1])
                    a += ALIGN
                if a < b:
                    self.storage_bytes += self._read_pieces(fd, path, a, buf[a - start:b - start],
                                                            offset + nbytes - a)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._refuse_direct(path)
            return self.read_range(path, offset, nbytes, slab)
        self.logical_bytes += nbytes
        if read_last_page:  # a copied last page holds only the bytes asked for: not reusable
            self._tails[path] = (stop - ALIGN, buf[stop - start - ALIGN:].clone())
        else:
            self._tails.pop(path, None)
        return buf[offset - start:offset - start + nbytes]

    def read_rows(self, info: TensorInfo, row_start: int, row_end: int, slab: Slab | None = None) -> torch.Tensor:
        """Rows [row_start, row_end) of a tensor in its stored dtype (a view into ``slab``
        when given, else a tensor of its own)."""
        shape = (row_end - row_start,) + tuple(info.shape[1:]) if len(info.shape) >= 2 else info.shape
        dtype = torch_dtype(info.dtype)
        nbytes = (row_end - row_start) * info.row_bytes
        raw = self.read_range(info.file, info.start + row_start * info.row_bytes, nbytes, slab)
        if raw.data_ptr() % dtype.itemsize:  # an oddly aligned tensor in the file: realign
            raw = raw.clone()
        return raw.view(dtype).view(shape)

    def close(self) -> None:
        for fd in [*self._cached_fds.values(), *self._direct_fds.values()]:
            if fd is not None:
                os.close(fd)
        self._cached_fds.clear()
        self._direct_fds.clear()

    def __enter__(self) -> "RangeReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _page_runs(pages: bytes | None, start: int, stop: int):
    """(resident, begin, end) for the runs of equally resident pages of [start, stop) (page
    aligned); one missing run when residency is unknown."""
    if pages is None:
        yield False, start, stop
        return
    i = 0
    while i < len(pages):
        j = i + 1
        while j < len(pages) and pages[j] == pages[i]:
            j += 1
        yield bool(pages[i]), start + i * PAGE, min(stop, start + j * PAGE)
        i = j


def _buffer(slab: Slab | None, nbytes: int) -> torch.Tensor:
    """``nbytes`` of page-aligned memory: from the unit's slab, or a buffer of its own."""
    return slab.take(nbytes) if slab is not None else aligned_empty(nbytes)
