"""The compiled kernels' library, bound from its header with cffi (ABI mode).

``mergehub_kernels.h`` declares every exported function and struct once: kernels.c includes
it (the compiler checks the definitions), and ``load`` hands the same text to ``ffi.cdef``.
The library reports the SHA-256 of the header it was built against (setup.py compiles it in);
a library built from another version of the header is refused with ``KernelInterfaceError``,
and every declared function is resolved at load, so a missing one fails there too, never at
a call with the wrong arguments.

No library (no C compiler at install time) or ``MERGEHUB_NATIVE=0``: ``LIB`` is None and the
engine runs the operators' torch statements. cffi releases the GIL during each call, so
``over_spans`` spreads a call's range over ``THREADS`` Python threads.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cffi
import torch

HERE = Path(__file__).parent
HEADER = HERE / "mergehub_kernels.h"
THREADS = max(1, min(4, os.cpu_count() or 1))
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}  # MH_F32, MH_BF16
MIN_SPLIT = 1 << 16  # elements per thread below which one thread does the whole range

# cdef takes declarations and integer constants; include guards and #includes are dropped
_INTEGER_DEFINE = re.compile(r"#define\s+\w+\s+\d+\b")


class KernelInterfaceError(RuntimeError):
    """The library and the header disagree: it was built from another version of the interface."""


def declarations(header_text: str) -> str:
    """The header as cffi's cdef reads it: preprocessor lines other than integer #defines dropped."""
    kept = [line for line in header_text.splitlines()
            if not line.lstrip().startswith("#") or _INTEGER_DEFINE.match(line.strip())]
    return "\n".join(kept)


def library_path() -> Path | None:
    """The built library next to this module (named like a Python extension), if any."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = HERE / f"_kernels{suffix}"
        if path.exists():
            return path
    return None


def load(library: Path, header: Path = HEADER):
    """(ffi, lib) for ``library`` bound through ``header``; KernelInterfaceError when the library
    was built against another header or lacks a declared function."""
    text = header.read_bytes()
    ffi = cffi.FFI()
    ffi.cdef(declarations(text.decode()))
    try:
        lib = ffi.dlopen(str(library))
    except OSError as exc:
        raise KernelInterfaceError(f"{library} cannot be loaded ({exc}): rebuild it with `pip install -e .`") from exc
    try:
        built_against = ffi.string(lib.mh_interface_digest()).decode()
    except AttributeError:
        built_against = "nothing (no mh_interface_digest)"
    expected = hashlib.sha256(text).hexdigest()
    if built_against != expected:
        raise KernelInterfaceError(
            f"{library.name} was built against another {header.name} (its digest {built_against}, the header's "
            f"{expected}): rebuild it with `pip install -e .`, or set MERGEHUB_NATIVE=0 to run without kernels")
    for name in dir(lib):  # resolve every declared symbol now, not at its first call
        try:
            getattr(lib, name)
        except AttributeError as exc:
            raise KernelInterfaceError(f"{library.name} lacks {name}, which {header.name} declares: "
                                       "rebuild it with `pip install -e .`") from exc
    return ffi, lib


def _load_default():
    if os.environ.get("MERGEHUB_NATIVE", "1") == "0":
        return None, None
    path = library_path()
    if path is None:
        return None, None
    if not HEADER.is_file():  # an install that left the header out: no binding without it
        warnings.warn(f"{HEADER.name} is missing beside {path.name}: the compiled kernels are off "
                      "(package it with the library)", RuntimeWarning, stacklevel=2)
        return None, None
    return load(path)


FFI, LIB = _load_default()
_POOL = ThreadPoolExecutor(THREADS, thread_name_prefix="mergehub-kernels") if LIB and THREADS > 1 else None


def available() -> bool:
    return LIB is not None


def ptr(t: torch.Tensor | None):
    """A tensor's data as a ``void *`` for the kernels (NULL for None)."""
    return FFI.NULL if t is None else FFI.cast("void *", t.data_ptr())


def tensor_ref(t: torch.Tensor) -> tuple:
    """(pointer, dtype code): how the kernels take a float32 or bfloat16 tensor."""
    return ptr(t), DTYPE_CODES[t.dtype]


def tensor_arrays(tensors: list[torch.Tensor]) -> tuple:
    """(pointers, dtype codes) as C arrays, how the kernels take a list of tensors (which must
    outlive the arrays)."""
    return (FFI.new("void *[]", [ptr(t) for t in tensors]), FFI.new("int[]", [DTYPE_CODES[t.dtype] for t in tensors]))


def check(status: int) -> int:
    if status < 0:
        raise MemoryError("out of memory in the compiled kernels' working buffers: free memory, "
                          "or run fewer merges at once, and retry")
    return status


def map_parallel(fn, items: list) -> list:
    """fn over items, on the kernels' thread pool when there is more than one."""
    if _POOL is None or len(items) < 2:
        return [fn(item) for item in items]
    return list(_POOL.map(fn, items))


def over_spans(n: int, run, per_thread: int = 1, min_split: int | None = None) -> list:
    """run((start, stop)) over up to ``per_thread`` pieces of range(n) per thread, on the pool,
    each at least ``min_split`` long (default ``MIN_SPLIT`` elements). Returns the results."""
    if n <= 0:
        return []
    parts = max(1, min(THREADS * per_thread, n // (MIN_SPLIT if min_split is None else min_split)))
    step = -(-n // parts)
    return map_parallel(run, [(a, min(a + step, n)) for a in range(0, n, step)])
