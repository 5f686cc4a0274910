"""Blocks: contiguous row ranges of a tensor, hence contiguous byte ranges of its file.

Blocks are the unit of indexing, planning and reading. A tensor of R rows of ``row_bytes``
bytes is cut into ceil(R / rows_per_block) blocks with rows_per_block = max(1,
block_size // row_bytes); 0-D and 1-D tensors are a single row, so a single block.
"""

from __future__ import annotations

from dataclasses import dataclass

from .layout import TensorInfo

DEFAULT_BLOCK_SIZE = 1 << 20  # 1 MiB: fine enough to skip unchanged rows, coarse enough to read fast

@dataclass(frozen=True)
class Block:
    tensor: str
    index: int  # position within the tensor
    row_start: int
    row_end: int  # exclusive
    start: int  # absolute byte offset in the tensor's file
    nbytes: int


def rows_per_block(tensor: TensorInfo, block_size: int) -> int:
    return max(1, block_size // max(1, tensor.row_bytes))


def partition(tensor: TensorInfo, block_size: int = DEFAULT_BLOCK_SIZE) -> list[Block]:
    """Cut a tensor into blocks of whole rows, about ``block_size`` bytes each."""
    rpb = rows_per_block(tensor, block_size)
    blocks = []
    for i, r0 in enumerate(range(0, max(tensor.rows, 1), rpb)):
        r1 = min(r0 + rpb, tensor.rows)
        blocks.append(Block(tensor.name, i, r0, r1, tensor.start + r0 * tensor.row_bytes,
                            (r1 - r0) * tensor.row_bytes))
    return blocks


def block_count(tensor: TensorInfo, block_size: int) -> int:
    rpb = rows_per_block(tensor, block_size)
    return -(-max(tensor.rows, 1) // rpb)


def coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge adjacent/overlapping (start, nbytes) ranges into as few reads as possible."""
    out: list[tuple[int, int]] = []
    for start, n in sorted(ranges):
        if out and start <= out[-1][0] + out[-1][1]:
            s, m = out[-1]
            out[-1] = (s, max(s + m, start + n) - s)
        else:
            out.append((start, n))
    return out
