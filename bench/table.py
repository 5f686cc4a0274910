"""Plain-text and Markdown tables (right-aligned numbers, left-aligned text)."""

from __future__ import annotations


def _is_number(cell: str) -> bool:
    return cell[:1].isdigit() or cell[:1] in "-+." and cell[1:2].isdigit()


def format_table(headers: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    numeric = [all(_is_number(r[i]) for r in rows) if rows else False for i in range(len(headers))]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])
