"""Human-readable numbers for pages and charts."""

from __future__ import annotations

from mergehub.engine.api import binary_size


def human_bytes(n: int | float | None) -> str:
    """1536 -> '1.50 KiB'; IEC units (powers of 1024), three significant digits, as the CLI prints them."""
    return "—" if n is None else binary_size(n)


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
