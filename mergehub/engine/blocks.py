"""Blocks: contiguous row ranges of a tensor, hence contiguous byte ranges of its file.

Blocks are the unit of indexing, planning and reading. A tensor of R rows of ``row_bytes``
bytes is cut into ceil(R / rows_per_block) blocks with rows_per_block = max(1,
block_size // row_bytes); 0-D and 1-D tensors are a single row, so a single block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigError
from .layout import TensorInfo

DEFAULT_BLOCK_SIZE = 1 << 20  # 1 MiB: fine enough to skip unchanged rows, coarse enough to read fast

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1 << 10, "mib": 1 << 20,
          "gib": 1 << 30, "tib": 1 << 40, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}


def parse_size(text: str | int, what: str = "size") -> int:
    """'512MB' -> 512_000_000, '2GiB' -> 2147483648, 4096 -> 4096."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _SIZE.match(str(text))
        unit = (m.group(2) or "").lower() if m else None
        if not m or unit not in _UNITS:
            raise ConfigError(f"{what} {text!r} is not a size: write bytes or e.g. 512KiB, 4MB, 2GiB")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ConfigError(f"{what} must be positive, got {text!r}")
    return value


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
