"""Byte counts for people: IEC units (powers of 1024), as every page, chart and command prints them,
and sizes as people write them ("512MB", "2GiB"), as every option and form reads them.

Pure Python, imported by the CLI, the API client (``mergehub remote``) and the web pages alike.
"""

from __future__ import annotations

import re

from .errors import ConfigError

BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def binary_size(n: int | float) -> str:
    """1536 -> '1.50 KiB', 4034304 -> '3.85 MiB'; three significant digits past bytes."""
    value, sign = float(abs(n)), "-" if n < 0 else ""
    unit = 0
    while value >= 1024 and unit < len(BYTE_UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{sign}{int(value)} B"
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{sign}{value:.{digits}f} {BYTE_UNITS[unit]}"


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
