"""Byte counts for people: IEC units (powers of 1024), as every page, chart and command prints them.

Pure Python, imported by the CLI, the API client (``mergehub remote``) and the web pages alike.
"""

from __future__ import annotations

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
