"""Streaming safetensors writer: header first (all shapes are known up front), then the bytes
tensor by tensor, chunk by chunk, so memory stays at one chunk whatever the model size.

Sharding follows Hugging Face: tensors fill a shard in order until the next one would pass
``shard_size`` (a larger tensor gets a shard of its own); one shard is ``model.safetensors``,
several are ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

from mergehub.engine.api import SAFETENSORS_DTYPE_NAMES, SHARDED_INDEX_NAME, SINGLE_FILE_NAME

TensorSpec = tuple[str, tuple[int, ...]]


def plan_shards(tensors: list[TensorSpec], element_size: int, shard_size: int) -> list[list[TensorSpec]]:
    shards: list[list[TensorSpec]] = [[]]
    filled = 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * element_size
        if shards[-1] and filled + nbytes > shard_size:
            shards.append([])
            filled = 0
        shards[-1].append((name, shape))
        filled += nbytes
    return shards


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_FILE_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def encode_header(tensors: list[TensorSpec], st_dtype: str, element_size: int) -> bytes:
    """``u64 length`` + JSON header padded with spaces to a multiple of 8, as safetensors writes it."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        end = offset + math.prod(shape) * element_size
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class CheckpointWriter:
    """Writes the weights of one model directory; call ``write`` with consecutive row chunks of
    each tensor in the planned order, then ``close``."""

    def __init__(self, root: Path, tensors: list[TensorSpec], dtype: torch.dtype, shard_size: int):
        self.root = Path(root)
        self.dtype = dtype
        self.st_dtype = SAFETENSORS_DTYPE_NAMES[dtype]
        self.element_size = dtype.itemsize
        self.shards = plan_shards(tensors, self.element_size, shard_size)
        self.file_names = shard_file_names(len(self.shards))
        self._queue = [(s, name, math.prod(shape) * self.element_size)
                       for s, shard in enumerate(self.shards) for name, shape in shard]
        self._position = -1  # index into _queue of the tensor being written
        self._remaining = 0
        self._shard = -1
        self._file = None

    @property
    def files(self) -> list[Path]:
        return [self.root / n for n in self.file_names]

    def write(self, chunk: torch.Tensor) -> None:
        if chunk.dtype != self.dtype:
            raise TypeError(f"chunk is {chunk.dtype}, the checkpoint is {self.dtype}")
        if self._remaining == 0:
            self._next_tensor()
        data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes > self._remaining:
            name = self._queue[self._position][1]
            raise ValueError(f"chunk of {data.nbytes} bytes overflows tensor {name!r} "
                             f"({self._remaining} bytes left)")
        self._file.write(data)
        self._remaining -= data.nbytes

    def _next_tensor(self) -> None:
        self._position += 1
        if self._position >= len(self._queue):
            raise ValueError("more data written than the checkpoint's tensors hold")
        shard, _, nbytes = self._queue[self._position]
        if shard != self._shard:
            self._open_shard(shard)
        self._remaining = nbytes

    def _open_shard(self, shard: int) -> None:
        if self._file is not None:
            self._file.close()
        self._shard = shard
        self._file = open(self.root / self.file_names[shard], "wb")
        self._file.write(encode_header(self.shards[shard], self.st_dtype, self.element_size))

    def close(self) -> None:
        while self._remaining == 0 and self._position + 1 < len(self._queue) \
                and self._queue[self._position + 1][2] == 0:
            self._next_tensor()  # empty tensors need no write call
        if self._remaining or self._position + 1 != len(self._queue):
            raise ValueError(f"checkpoint {self.root} closed with tensors not fully written")
        self._file.close()
        self._file = None
        if len(self.shards) > 1:
            self._write_index()

    def _write_index(self) -> None:
        weight_map = {name: fname for fname, shard in zip(self.file_names, self.shards)
                      for name, _ in shard}
        total = sum(n for _, _, n in self._queue)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (self.root / SHARDED_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
