"""Where every tensor of a checkpoint lives, read from safetensors headers only.

A safetensors file is ``u64 little-endian header length N``, ``N bytes of JSON``, then the
data region. The JSON maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}``
relative to the data region (plus an optional ``__metadata__`` string map). We validate it as
strictly as the reference Rust loader does and never read tensor data here.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .dtypes import SAFETENSORS_DTYPES, element_size
from .errors import InvalidCheckpoint
from .model_files import INDEX_NAME, WEIGHT_SUFFIXES, refuse_pickle, weight_files

MAX_HEADER_BYTES = 100_000_000  # same limit as the safetensors library


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: its file and absolute byte range inside that file."""

    name: str
    dtype: str  # safetensors dtype name, e.g. "BF16"
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute offset of the first byte in ``file``
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def rows(self) -> int:
        """Rows are the unit blocks are cut from: dim 0 of a 2-D+ tensor; a 0-D/1-D tensor is one row."""
        return self.shape[0] if len(self.shape) >= 2 else 1

    @property
    def row_bytes(self) -> int:
        return self.nbytes // self.rows if self.rows else 0

    @property
    def signature(self) -> tuple[str, tuple[int, ...]]:
        return (self.dtype, self.shape)


@dataclass(frozen=True)
class FileHeader:
    path: Path
    header_bytes: int  # 8 + JSON length: what reading the header costs
    size: int
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelLayout:
    """All weight files of one model directory, in HF layout (single or sharded)."""

    root: Path
    files: tuple[FileHeader, ...]
    tensors: dict[str, TensorInfo]  # in file order, then offset order
    extra_files: tuple[Path, ...]  # config, tokenizer and other non-weight files

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def header_bytes(self) -> int:
        return sum(f.header_bytes for f in self.files)

    def signature(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {name: t.signature for name, t in self.tensors.items()}


def read_file_header(path: Path) -> tuple[FileHeader, list[TensorInfo]]:
    """Parse and validate one safetensors header; return it and its tensors by offset."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise InvalidCheckpoint(f"{path}: file not found") from None
    except OSError as exc:
        raise InvalidCheckpoint(f"{path}: cannot open ({exc.strerror})") from None
    try:
        # No readahead: it would cache tensor bytes nobody asked for and leave a readahead mark
        # that later makes the kernel read ahead even on the executor's FADV_RANDOM descriptors.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        size = os.fstat(fd).st_size
        if size < 8:
            raise InvalidCheckpoint(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
        if n > MAX_HEADER_BYTES:
            raise InvalidCheckpoint(
                f"{path}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit; "
                "the file is corrupt or not safetensors")
        if 8 + n > size:
            raise InvalidCheckpoint(
                f"{path}: header length {n} runs past the end of the {size}-byte file; "
                "the file is truncated or not safetensors")
        raw = os.pread(fd, n, 8)
    finally:
        os.close(fd)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidCheckpoint(f"{path}: header is not valid JSON ({exc}); the file is corrupt "
                                "or not safetensors") from None
    if not isinstance(header, dict):
        raise InvalidCheckpoint(f"{path}: header must be a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise InvalidCheckpoint(f"{path}: __metadata__ must be an object of strings")
    data_start = 8 + n
    data_len = size - data_start
    tensors = [_tensor_info(path, name, entry, data_start) for name, entry in header.items()]
    tensors.sort(key=lambda t: (t.start, t.name))
    _check_ranges(path, tensors, data_start, data_len)
    return FileHeader(path, data_start, size, {str(k): str(v) for k, v in metadata.items()}), tensors


def _tensor_info(path: Path, name: str, entry: object, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise InvalidCheckpoint(f"{path}: tensor {name!r} needs dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in SAFETENSORS_DTYPES:
        known = ", ".join(SAFETENSORS_DTYPES)
        raise InvalidCheckpoint(f"{path}: tensor {name!r} has unknown dtype {dtype!r} "
                                f"(supported: {known})")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise InvalidCheckpoint(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and o >= 0 for o in offsets) and offsets[0] <= offsets[1]):
        raise InvalidCheckpoint(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    nbytes = offsets[1] - offsets[0]
    expected = math.prod(shape) * element_size(dtype)
    if nbytes != expected:
        raise InvalidCheckpoint(
            f"{path}: tensor {name!r} spans {nbytes} bytes but shape {shape} of {dtype} needs "
            f"{expected}; the file is corrupt")
    return TensorInfo(name, dtype, tuple(shape), path, data_start + offsets[0], nbytes)


def _check_ranges(path: Path, tensors: list[TensorInfo], data_start: int, data_len: int) -> None:
    """Tensors must tile the data region exactly: in range, no overlap, no gap, no tail."""
    cursor = data_start
    for t in tensors:
        if t.start + t.nbytes > data_start + data_len:
            raise InvalidCheckpoint(
                f"{path}: tensor {t.name!r} ends at byte {t.start + t.nbytes} past the end of the "
                f"file ({data_start + data_len} bytes); the file is truncated")
        if t.start < cursor:
            raise InvalidCheckpoint(f"{path}: tensor {t.name!r} overlaps the previous tensor; "
                                    "the file is corrupt")
        if t.start > cursor:
            raise InvalidCheckpoint(f"{path}: {t.start - cursor} unused bytes before tensor "
                                    f"{t.name!r}; the file is corrupt")
        cursor = t.start + t.nbytes
    if cursor != data_start + data_len:
        raise InvalidCheckpoint(f"{path}: {data_start + data_len - cursor} trailing bytes after the "
                                "last tensor; the file is corrupt")


def read_model_layout(path: str | os.PathLike) -> ModelLayout:
    """Read and validate every header of a model directory (or a single .safetensors file)."""
    root = Path(path)
    refuse_pickle(root)
    if not root.exists():
        raise InvalidCheckpoint(f"{root}: no such file or directory")
    if root.is_file():
        if root.suffix != ".safetensors":
            raise InvalidCheckpoint(f"{root}: not a .safetensors file or a model directory")
        files, root = [root], root.parent
        extra: list[Path] = []
    else:
        files = weight_files(root)
        extra = sorted(p for p in root.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.name != INDEX_NAME
                       and p.suffix.lower() not in WEIGHT_SUFFIXES)
    headers, tensors = [], {}
    for f in files:
        header, infos = read_file_header(f)
        headers.append(header)
        for t in infos:
            if t.name in tensors:
                raise InvalidCheckpoint(f"{root}: tensor {t.name!r} appears in both "
                                        f"{tensors[t.name].file.name} and {f.name}")
            tensors[t.name] = t
    index = root / INDEX_NAME
    if len(files) > 1 or index.is_file():
        _check_index_matches(index, tensors)
    if not tensors:
        raise InvalidCheckpoint(f"{root}: the checkpoint holds no tensors")
    return ModelLayout(root.resolve(), tuple(headers), tensors, tuple(extra))


def _check_index_matches(index: Path, tensors: dict[str, TensorInfo]) -> None:
    weight_map = json.loads(index.read_text())["weight_map"]
    for name, fname in weight_map.items():
        t = tensors.get(name)
        if t is None:
            raise InvalidCheckpoint(f"{index}: lists tensor {name!r} in {fname}, which lacks it")
        if t.file.name != fname:
            raise InvalidCheckpoint(f"{index}: lists tensor {name!r} in {fname} but it is in "
                                    f"{t.file.name}")
    unlisted = [n for n in tensors if n not in weight_map]
    if unlisted:
        raise InvalidCheckpoint(f"{index}: tensors missing from weight_map: {', '.join(unlisted[:5])}")
