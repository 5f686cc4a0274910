"""Positional reads of planned byte ranges, with honest accounting.

Expert files are opened with POSIX_FADV_RANDOM so the kernel does not read ahead past the
ranges we plan (readahead would fetch unplanned bytes and make the budget a lie); base files,
which are read whole, get POSIX_FADV_SEQUENTIAL. Every read is wrapped with the thread's
storage counter, so ``storage_bytes`` is what this reader really cost.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .dtypes import torch_dtype
from .errors import InvalidCheckpoint
from .iostats import thread_read_bytes
from .layout import TensorInfo


class RangeReader:
    def __init__(self, sequential: bool):
        self._advice = os.POSIX_FADV_SEQUENTIAL if sequential else os.POSIX_FADV_RANDOM
        self._fds: dict[Path, int] = {}
        self.logical_bytes = 0
        self.storage_bytes = 0

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, self._advice)
            self._fds[path] = fd
        return fd

    def read_into(self, path: Path, offset: int, out: memoryview) -> None:
        """Fill ``out`` (a writable byte view) from ``path`` at ``offset``."""
        fd = self._fd(path)
        before = thread_read_bytes()
        done, n = 0, len(out)
        while done < n:
            got = os.preadv(fd, [out[done:]], offset + done)
            if got == 0:
                raise InvalidCheckpoint(f"{path}: file ended early at byte {offset + done}; "
                                        "it was truncated after indexing, re-register it")
            done += got
        self.storage_bytes += thread_read_bytes() - before
        self.logical_bytes += n

    def read_rows(self, info: TensorInfo, row_start: int, row_end: int) -> torch.Tensor:
        """Rows [row_start, row_end) of a tensor, in its stored dtype, as a fresh CPU tensor."""
        shape = (row_end - row_start,) + tuple(info.shape[1:]) if len(info.shape) >= 2 else info.shape
        out = torch.empty(shape, dtype=torch_dtype(info.dtype))
        nbytes = (row_end - row_start) * info.row_bytes
        if nbytes:
            view = memoryview(out.view(-1).view(torch.uint8).numpy())
            self.read_into(info.file, info.start + row_start * info.row_bytes, view)
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "RangeReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
