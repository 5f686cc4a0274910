"""Bytes actually fetched from storage, as the kernel counts them.

``/proc/thread-self/io`` ``read_bytes`` counts what this thread caused to be fetched from the
block device (page-cache hits cost nothing; readahead it triggered counts). Reading it around
each read attributes storage I/O to exactly the bytes we asked for. Where /proc is missing
(not Linux) the counters read 0 and reports say "not measured".
"""

from __future__ import annotations

import os
from pathlib import Path

_IO_PATHS = ("/proc/thread-self/io", "/proc/self/io")


def io_counters_available() -> bool:
    return any(Path(p).exists() for p in _IO_PATHS)


def thread_read_bytes() -> int:
    """read_bytes of the calling thread (falls back to the process); 0 if unavailable."""
    for path in _IO_PATHS:
        try:
            with open(path, "rb") as f:
                for line in f:
                    if line.startswith(b"read_bytes:"):
                        return int(line.split()[1])
        except OSError:
            continue
    return 0


def evict_from_page_cache(paths) -> None:
    """Drop clean cached pages of these files so the next read comes from storage.
    Dirty pages survive DONTNEED, so flush them first."""
    os.sync()
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
