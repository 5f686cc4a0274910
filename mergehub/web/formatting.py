"""Human-readable numbers for pages and charts."""

from __future__ import annotations

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int | float | None) -> str:
    """1536 -> '1.5 KiB'; IEC units (powers of 1024), three significant digits."""
    if n is None:
        return "—"
    value, sign = float(abs(n)), "-" if n < 0 else ""
    unit = 0
    while value >= 1024 and unit < len(_BYTE_UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{sign}{int(value)} B"
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{sign}{value:.{digits}f} {_BYTE_UNITS[unit]}"


def human_seconds(s: float | None) -> str:
    """0.0123 -> '12 ms', 75 -> '1 min 15 s'."""
    if s is None:
        return "—"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    minutes, seconds = divmod(int(round(s)), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def percent(part: float | None, whole: float | None) -> str:
    """part / whole as '42.0%' ('—' when whole is 0 or unknown)."""
    if part is None or not whole:
        return "—"
    return f"{100.0 * part / whole:.1f}%"
