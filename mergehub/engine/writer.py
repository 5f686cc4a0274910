"""Streaming safetensors output, sharded HF-style, hashed as it is written.

Output files are hashed with xxh3-128 (``OUTPUT_HASHES``): the manifest's hashes exist to check
that a replay is bit-identical, which needs no cryptographic hash, and sha256 (~1.2 GB/s on
one core, as fast as the disk writes) took a core's worth of the writer's time; xxh3 runs at
~13 GB/s. Manifests recorded before 0.2.4 name no algorithm and hold sha256 hashes; replaying
them hashes with sha256 again.

All output shapes and dtypes are known before the first byte is computed, so each shard's
header is written first and tensor bytes are appended in order as they are produced: memory
never holds more than the rows in flight.

Shards are written around the page cache (``O_DIRECT``) through a small aligned staging
buffer: copying a GB of output into fresh page-cache pages cost more CPU than the merge's own
arithmetic on 2 cores, and the output is not read back. The unaligned tail of a shard, and
filesystems that refuse ``O_DIRECT``, go through the page cache.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import xxhash

from .buffers import ALIGN, aligned_empty
from .dtypes import TORCH_TO_SAFETENSORS, element_size
from .model_files import INDEX_NAME, SINGLE_NAME

DEFAULT_SHARD_BYTES = 5 * 1000**3  # HF's default "5GB"
# Every this many bytes, ask the kernel to start writing the shard out (fadvise DONTNEED starts
# writeback of dirty pages without waiting): the fsync at publish then has little left to do,
# and the merge's output does not crowd its inputs out of the page cache.
WRITEBACK_BYTES = 64 << 20
STAGE_BYTES = 8 << 20  # the O_DIRECT staging buffer: a multiple of ALIGN
_O_DIRECT = getattr(os, "O_DIRECT", 0)
OUTPUT_HASHES = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}
DEFAULT_OUTPUT_HASH = "xxh3_128"


@dataclass(frozen=True)
class OutSpec:
    name: str
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * element_size(self.dtype)


def _shards(specs: list[OutSpec], max_bytes: int) -> list[list[OutSpec]]:
    shards: list[list[OutSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def _header(specs: list[OutSpec]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for s in specs:
        header[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data region 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


class ShardedWriter:
    """Append tensors (whole or in row chunks, in spec order) into ``directory``."""

    def __init__(self, directory: Path, specs: list[OutSpec], max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 direct: bool = True, hash_name: str = DEFAULT_OUTPUT_HASH):
        self.directory = Path(directory)
        self._new_hash = OUTPUT_HASHES[hash_name]
        self.shards = _shards(specs, max_shard_bytes)
        n = len(self.shards)
        self.names = [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                                                   for i in range(n)]
        self._order = [(i, s) for i, shard in enumerate(self.shards) for s in shard]
        self._pos = 0  # index into _order of the tensor being written
        self._written_of_tensor = 0
        self._fd: int | None = None
        self._shard = -1
        self._hash = None
        self._offset = self._synced = 0  # bytes written to the open shard; handed to writeback
        self.hashes: dict[str, str] = {}
        self.bytes_written = 0
        self._want_direct = direct and bool(_O_DIRECT)
        self._direct = False  # the open shard is written around the page cache
        self._stage = aligned_empty(STAGE_BYTES).numpy() if self._want_direct else None
        self._staged = 0

    def _open_shard(self, i: int) -> None:
        self._close_shard()
        self._shard = i
        self._fd = os.open(self.directory / self.names[i], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._direct = self._want_direct and self._set_direct(True)
        self._hash = self._new_hash()
        self._offset = self._synced = 0
        self._write(_header(self.shards[i]))

    def _close_shard(self) -> None:
        if self._fd is not None:
            self._flush_stage()
            os.close(self._fd)
            self.hashes[self.names[self._shard]] = self._hash.hexdigest()
            self._fd = None

    def _set_direct(self, on: bool) -> bool:
        """Switch O_DIRECT on the open shard; False where the filesystem refuses it."""
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return False
        return on

    def _write(self, data) -> None:
        view = memoryview(data).cast("B")
        self.bytes_written += len(view)
        if self._direct:
            self._stage_bytes(view)
        else:
            self._write_cached(view)

    def _write_cached(self, view: memoryview, hashed: bool = False) -> None:
        """Write through the page cache, handing finished stretches to writeback as it goes.
        Bytes are hashed as they go to the file, in file order (``hashed``: already were)."""
        if not hashed:
            self._hash.update(view)
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        self._offset += len(view)
        if self._offset - self._synced >= WRITEBACK_BYTES:
            os.posix_fadvise(self._fd, self._synced, self._offset - self._synced, os.POSIX_FADV_DONTNEED)
            self._synced = self._offset

    def _stage_bytes(self, view: memoryview) -> None:
        while len(view) and self._direct:
            n = min(len(view), STAGE_BYTES - self._staged)
            self._stage[self._staged:self._staged + n] = view[:n]
            self._staged += n
            view = view[n:]
            if self._staged == STAGE_BYTES:
                self._flush_stage()
        if len(view):  # the flush gave up on O_DIRECT: the rest goes through the page cache
            self._write_cached(view)

    def _flush_stage(self) -> None:
        """Write out the staged bytes: whole blocks around the page cache, a partial last block
        (only at the end of a shard) through it. The bytes are hashed on a helper thread while
        this one waits for the write (sha256, which replays of old manifests use, runs about
        as fast as the disk: one after the other, they halved the writer's throughput); both
        finish before the stage is refilled."""
        if not self._staged:
            return
        staged = memoryview(self._stage)[:self._staged]
        self._staged = 0
        hashing = threading.Thread(target=self._hash.update, args=(staged,), name="mergehub-hash")
        hashing.start()
        whole = len(staged) // ALIGN * ALIGN
        done = 0
        try:
            while self._direct and done < whole:
                done += os.write(self._fd, staged[done:whole])
        except OSError as exc:
            # EINVAL: O_DIRECT accepted at open but not for this write (or a short write left
            # the file offset unaligned): write the rest through the page cache
            if exc.errno != errno.EINVAL:
                raise
        finally:
            hashing.join()
        self._offset += done
        if done < len(staged):
            self._direct = self._set_direct(False)
            self._write_cached(staged[done:], hashed=True)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next rows of tensor ``name`` (rows must arrive in order)."""
        shard, spec = self._order[self._pos]
        if spec.name != name:
            raise RuntimeError(f"writer expected {spec.name}, got {name}")
        if TORCH_TO_SAFETENSORS[tensor.dtype] != spec.dtype:
            raise RuntimeError(f"{name}: writing {tensor.dtype} into a {spec.dtype} slot")
        if shard != self._shard:
            self._open_shard(shard)
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._write(data)
        self._written_of_tensor += data.nbytes
        if self._written_of_tensor > spec.nbytes:
            raise RuntimeError(f"{name}: more bytes written than its shape holds")
        if self._written_of_tensor == spec.nbytes:
            self._pos += 1
            self._written_of_tensor = 0

    def finish(self) -> dict[str, str]:
        """Close the last shard, write the index when sharded; return {file: hex digest}."""
        if self._pos != len(self._order):
            raise RuntimeError(f"writer finished early: {len(self._order) - self._pos} tensors missing")
        self._close_shard()
        if len(self.names) > 1:
            index = {"metadata": {"total_size": sum(s.nbytes for _, s in self._order)},
                     "weight_map": {s.name: self.names[i] for i, s in self._order}}
            raw = json.dumps(index, indent=2).encode()
            (self.directory / INDEX_NAME).write_bytes(raw)
            self.hashes[INDEX_NAME] = self._new_hash(raw).hexdigest()
        return dict(self.hashes)

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
