"""Is a byte range of a file already in the page cache? Answered without any I/O.

The file range is mapped but never touched, and ``mincore`` reports which of its pages are
resident; then the mapping is dropped. Where that is unavailable (not Linux/glibc) every range
counts as not cached, which only means it is read from storage.
"""

from __future__ import annotations

import ctypes
import mmap

from .libc import LIBC

PAGE = mmap.PAGESIZE


def _bind():
    if LIBC is None:
        return None
    try:
        LIBC.mmap.restype = ctypes.c_void_p
        LIBC.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        LIBC.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        return LIBC
    except AttributeError:  # no mincore (not Linux)
        return None


_LIBC = _bind()
_MAP_FAILED = ctypes.c_void_p(-1).value
_LOW_BIT = bytes(i & 1 for i in range(256))  # mincore's low bit of each byte: page resident


def resident_pages(fd: int, offset: int, length: int) -> bytes | None:
    """One byte per page of [offset, offset + length) of ``fd`` (the page holding ``offset``
    first): 1 where the page is in the page cache, 0 where not. None when unknown."""
    if _LIBC is None or length <= 0:
        return None
    start = offset - offset % PAGE
    size = offset + length - start
    addr = _LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
    if addr is None or addr == _MAP_FAILED:
        return None
    try:
        resident = (ctypes.c_ubyte * (-(-size // PAGE)))()
        if _LIBC.mincore(addr, size, resident) != 0:
            return None
        return bytes(resident).translate(_LOW_BIT)
    finally:
        _LIBC.munmap(addr, size)


def fully_cached(fd: int, offset: int, length: int) -> bool:
    """True when every page of bytes [offset, offset + length) of ``fd`` is resident."""
    if length <= 0:
        return True
    pages = resident_pages(fd, offset, length)
    return pages is not None and 0 not in pages
