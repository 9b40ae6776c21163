"""HTML tables for the chapters' outputs.

A chapter shows a table with ``table(rows, columns)``: the notebook stores it
as ``text/html`` (a real ``<table>`` in the book, inside a container that
scrolls on a narrow screen instead of the page) and as ``text/plain`` (aligned
columns, what nbval compares besides the HTML). Cells are formatted here, with
a fixed number of significant digits, so that stored outputs are stable. In the
HTML a braced subscript or superscript of a cell's text (``γ_{j-1}``,
``∇_{ζ_j} R``) is typeset as ``<sub>``/``<sup>``: no pseudo-TeX in the page.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["Table", "fmt", "markup", "table"]

_SCRIPT = re.compile(r"([_^])\{([^{}]*)\}")


def markup(text: str) -> str:
    """``text`` escaped for HTML, with ``_{...}`` and ``^{...}`` as ``<sub>`` and ``<sup>`` (no pseudo-TeX in the page)."""
    out, tag = html.escape(text), {"_": "sub", "^": "sup"}
    while True:  # innermost first: ∇_{x_{j-1}} R
        new = _SCRIPT.sub(lambda m: f"<{tag[m[1]]}>{m[2]}</{tag[m[1]]}>", out)
        if new == out:
            return out
        out = new


def fmt(value: Any, digits: int = 3) -> str:
    """A cell as text: floats to ``digits`` significant digits (``-0`` as ``0``), bools as yes/no, else ``str``."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) or type(value).__name__ in ("float32", "float64"):
        v = float(value)
        if math.isnan(v):
            return "–"
        if v == 0:
            return "0"
        return f"{v:.{digits}g}"
    return str(value)


class Table:
    """A table with a header row; ``_repr_html_`` for the book, ``repr`` for plain text.

    Parameters
    ----------
    rows : sequence of sequences or of mappings
        The body, one row per item; mappings are read in the order of ``columns``.
    columns : sequence of str
        The header.
    caption : str, optional
        Shown above the table.
    digits : int
        Significant digits of float cells (see :func:`fmt`).
    align : str
        ``"l"`` or ``"r"`` per column (default: the first column left, the others right).
    """

    def __init__(self, rows: Iterable[Sequence[Any] | Mapping[str, Any]], columns: Sequence[str], caption: str | None = None, digits: int = 3,
                 align: str | None = None, formatter: Callable[[Any], str] | None = None):
        self.columns: list[str] = [str(c) for c in columns]
        if not self.columns:
            raise ValueError("table: at least one column")
        fmt_cell = formatter or (lambda v: fmt(v, digits))
        body: list[list[str]] = []
        for row in rows:
            cells = [row[c] for c in columns] if isinstance(row, Mapping) else list(row)
            if len(cells) != len(self.columns):
                raise ValueError(f"table: a row has {len(cells)} cells for {len(self.columns)} columns: {row!r}")
            body.append([fmt_cell(c) for c in cells])
        self.rows: list[list[str]] = body
        self.caption: str | None = caption
        self.align: str = align or ("l" + "r" * (len(self.columns) - 1))
        if len(self.align) != len(self.columns) or set(self.align) - {"l", "r"}:
            raise ValueError(f"table: align must have one 'l' or 'r' per column, got {self.align!r}")

    def _repr_html_(self) -> str:
        def cell(tag, text, a):
            style = ' style="text-align: right"' if a == "r" else ' style="text-align: left"'
            return f"<{tag}{style}>{markup(text)}</{tag}>"

        head = "".join(cell("th", c, a) for c, a in zip(self.columns, self.align))
        body = "".join("<tr>" + "".join(cell("td", c, a) for c, a in zip(r, self.align)) + "</tr>" for r in self.rows)
        cap = f"<caption>{markup(self.caption)}</caption>" if self.caption else ""
        return (f'<div class="dbpaper-table"><table>{cap}<thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>")

    def __repr__(self) -> str:
        widths = [max(len(x) for x in col) for col in zip(self.columns, *self.rows)]

        def line(cells):
            return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, self.align)).rstrip()

        out = [self.caption] if self.caption else []
        return "\n".join(out + [line(self.columns)] + [line(r) for r in self.rows])


def table(rows: Iterable[Sequence[Any] | Mapping[str, Any]], columns: Sequence[str], caption: str | None = None, digits: int = 3, align: str | None = None,
          formatter: Callable[[Any], str] | None = None) -> Table:
    """A :class:`Table` (the last expression of a cell, or ``display(table(...))``)."""
    return Table(rows, columns, caption=caption, digits=digits, align=align, formatter=formatter)
