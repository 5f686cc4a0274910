"""The C library, bound once through ctypes for the few calls Python does not expose
(mallopt, malloc_trim, madvise, mincore); None where it cannot be loaded."""

from __future__ import annotations

import ctypes
import ctypes.util


def _load() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


LIBC = _load()
