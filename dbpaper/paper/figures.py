"""One helper that saves every reproduced figure into stable, citable files.

:func:`save_figure` writes ``<name>.pdf``, ``<name>.png`` and ``<name>.svg``
into the figure directory (``book/figures`` by default, or
``$DBPAPER_FIGURE_DIR``) with all embedded dates, ids and software-version
stamps removed, so that two runs produce byte-identical files, and a small
``<name>.json`` beside them that records what the page needs to know to show
the figure readably: its size in inches, the resolution of the PNG and the
smallest font it was drawn with.

Figures are drawn for the page. The book's content column is
:data:`COLUMN_PX` CSS px wide at 1280 px; a figure ``w`` inches wide shown
``72 w`` CSS px wide shows a font of ``s`` points at ``s`` CSS px, so a figure
drawn at most :func:`page_width` inches wide with no font under
:data:`MIN_TEXT_PX` points is readable where the chapter shows it at
``72 w`` px (the figure directive's ``:width:``). :func:`save_figure` refuses a
figure whose smallest text could not reach :data:`MIN_TEXT_PX` CSS px within
the column, and ``tools/check_html.py`` measures the same in the built page.

A label's smallest glyph is what must be readable, not its nominal size: mathtext draws a sub- or
superscript at :data:`SCRIPT_SCALE` (70 %) of the text around it, and a script of a script at 49 %.
:func:`glyph_pt` counts that; :func:`readable` lists the texts of a figure whose smallest glyph falls
under :data:`MIN_TEXT_PX` where the figure is shown; :func:`save_figure` first enlarges every text whose
scripts would (:func:`enlarge_scripts`) and then refuses a figure that is still not :func:`readable`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.text import Text

__all__ = ["COLUMN_PX", "FIGURE_FORMATS", "MIN_TEXT_PX", "SCRIPT_SCALE", "enlarge_scripts", "figure_dir",
           "figure_record", "glyph_pt", "page_width", "readable", "save_figure", "script_depth", "style",
           "write_manifest"]  # fmt: skip

FIGURE_FORMATS = ("pdf", "png", "svg")

#: The width figures are drawn for, in CSS px: at most the book's content column at a 1280 px window
#: (sphinx-book-theme 1.x with both sidebars shown: 688 px measured in headless Chromium; 672 leaves a margin).
COLUMN_PX = 672

#: The smallest text a figure may show, in CSS px (a figure shown at ``72 w`` px for ``w`` inches: points).
MIN_TEXT_PX = 9


#: The size of a sub- or superscript relative to the text it is attached to (matplotlib's mathtext, as TeX).
SCRIPT_SCALE = 0.7


def script_depth(text: str) -> int:
    """How deep the sub- and superscripts of ``text`` nest inside its ``$...$`` parts (0: none; ``$x_0$``: 1).

    Only glyphs count: ``$x_{ }$`` has no glyph in its subscript. A prime is a superscript (``$g'(z)$``: 1), as
    mathtext sets it. Outside ``$...$`` an underscore or an apostrophe is a glyph like any other.
    """
    deepest = 0
    for k, part in enumerate(re.split(r"(?<!\\)\$", text)):
        if k % 2 == 0:
            continue  # outside math
        stack, pending, i = [0], False, 0
        while i < len(part):
            c = part[i]
            level = stack[-1] + (1 if pending else 0)
            if c in "^_":
                pending = True
                i += 1
                continue
            if c == "'":  # mathtext sets a prime as a superscript
                deepest = max(deepest, stack[-1] + 1)
                i += 1
                continue
            if c == "{":
                stack.append(level)
                pending = False
            elif c == "}":
                if len(stack) > 1:
                    stack.pop()
            elif c == "\\":
                m = re.match(r"\\([A-Za-z]+|.)", part[i:])
                command = m[1] if m else ""
                i += len(command)
                # font switches and spacing draw no glyph of their own; a symbol does
                if command not in ("mathrm", "mathbf", "mathit", "mathsf", "mathcal", "mathfrak", "mathbb", "operatorname",
                                   ",", ";", "!", " ", "quad", "qquad", "left", "right", "big", "Big"):
                    deepest = max(deepest, level)
                    pending = False
            elif not c.isspace():
                deepest = max(deepest, level)
                pending = False
            i += 1
    return deepest


def glyph_pt(fontsize: float, text: str) -> float:
    """The size in points of the smallest glyph of ``text`` drawn at ``fontsize`` (scripts at 70 %)."""
    return float(fontsize) * SCRIPT_SCALE ** script_depth(text)


def _texts(fig: Figure) -> list[Text]:
    from matplotlib.text import Text

    fig.canvas.draw()  # tick labels exist only once the figure has been drawn
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and t.get_alpha() != 0]


def readable(fig: Figure, shown_px: float | None = None) -> list[str]:
    """The texts of ``fig`` whose smallest glyph shows under :data:`MIN_TEXT_PX` CSS px (empty: readable).

    ``shown_px`` is the width the page shows the figure at; by default the width it is drawn for
    (72 px per inch), at most the content column. Sub- and superscripts count at :data:`SCRIPT_SCALE`.
    """
    width_in = float(fig.get_size_inches()[0])
    shown = min(72 * width_in, COLUMN_PX) if shown_px is None else float(shown_px)
    scale = shown / (72 * width_in)  # CSS px per point
    out = []
    for t in _texts(fig):
        px = glyph_pt(float(t.get_fontsize()), t.get_text()) * scale
        if px < MIN_TEXT_PX - 1e-6:
            out.append(f"{t.get_text()[:40]!r}: {t.get_fontsize():g} pt, smallest glyph {px:.1f} px at {shown:.0f} px")
    return out


def enlarge_scripts(fig: Figure) -> int:
    """Raise the font of every text whose sub- or superscripts would be smaller than the figure's plain text.

    A text at ``s`` points whose scripts nest ``d`` deep is set to ``s / 0.7**d`` points at most, and to at least
    the size that brings its smallest glyph to :data:`MIN_TEXT_PX` at the width the figure is drawn for
    (at most the column); returns how many texts were changed.
    """
    width_in = float(fig.get_size_inches()[0])
    scale = min(72 * width_in, COLUMN_PX) / (72 * width_in)
    changed = 0
    for t in _texts(fig):
        depth = script_depth(t.get_text())
        if depth == 0:
            continue
        needed = MIN_TEXT_PX / scale / SCRIPT_SCALE**depth
        if float(t.get_fontsize()) < needed - 1e-9:
            t.set_fontsize(round(needed + 0.05, 1))
            changed += 1
    return changed


def page_width(fraction: float = 1.0) -> float:
    """The width in inches of a figure drawn for ``fraction`` of the content column (1 pt = 1 CSS px there)."""
    return fraction * COLUMN_PX / 72

_METADATA = {
    "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": "dbpaper"},
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": "dbpaper"},
}


def figure_dir(out: str | os.PathLike[str] | None = None) -> Path:
    """The directory figures are written to: ``out``, ``$DBPAPER_FIGURE_DIR`` or ``book/figures``."""
    if out is not None:
        path = Path(out)
    elif os.environ.get("DBPAPER_FIGURE_DIR"):
        path = Path(os.environ["DBPAPER_FIGURE_DIR"])
    else:
        path = Path(__file__).resolve().parents[2] / "book" / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def style() -> dict[str, str | int | float | bool]:
    """The rc settings every figure uses (fixed fonts, hash salt and sizes for stable output)."""
    return {
        "svg.hashsalt": "dbpaper",
        "svg.fonttype": "path",
        "pdf.fonttype": 42,
        "font.family": "DejaVu Sans",
        "font.size": 9,
        "figure.dpi": 100,
        "savefig.dpi": 150,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }


def figure_record(fig) -> dict:
    """What the page needs to show ``fig`` readably: size, PNG resolution and its smallest text.

    ``min_font_pt`` is the size of the smallest glyph any text of the figure draws, sub- and superscripts
    at :data:`SCRIPT_SCALE` of their text (``$x_0$`` at 13 pt: 9.1); ``smallest_text`` is that text.
    ``min_display_px`` is the narrowest display width (CSS px) at which the smallest text is still
    :data:`MIN_TEXT_PX` px high: at display width ``D`` a font of ``s`` points is ``s D / (72 w)`` px.
    """
    texts = _texts(fig)
    smallest = min(texts, key=lambda t: glyph_pt(float(t.get_fontsize()), t.get_text()), default=None)
    width_in, height_in = (float(v) for v in fig.get_size_inches())
    dpi = float(matplotlib.rcParams["savefig.dpi"]) if matplotlib.rcParams["savefig.dpi"] != "figure" else float(fig.dpi)
    min_pt = round(glyph_pt(float(smallest.get_fontsize()), smallest.get_text()), 3) if smallest is not None else None
    return {
        "width_in": round(width_in, 4),
        "height_in": round(height_in, 4),
        "dpi": dpi,
        "png_px": [round(width_in * dpi), round(height_in * dpi)],
        "min_font_pt": min_pt,
        "smallest_text": smallest.get_text()[:60] if smallest is not None else None,
        "min_display_px": round(MIN_TEXT_PX * 72 * width_in / min_pt, 1) if min_pt else 0.0,
    }


def _laid_out_by_tight_layout(fig: Figure) -> bool:
    """Whether ``fig.tight_layout()`` laid the figure out once (a constrained layout runs again by itself)."""
    from matplotlib.layout_engine import PlaceHolderLayoutEngine, TightLayoutEngine

    return isinstance(fig.get_layout_engine(), (PlaceHolderLayoutEngine, TightLayoutEngine))


def save_figure(fig, name: str, out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Save ``fig`` as ``name.{pdf,png,svg}`` with byte-stable output, and its record as ``name.json``.

    ``name`` is a stable identifier such as ``"fig-bilinear-adjoint-errors"``;
    it becomes the file stem that readers cite. Texts whose sub- or superscripts would be too small are
    enlarged first (:func:`enlarge_scripts`; a figure laid out by ``tight_layout`` is laid out again, with the
    keyword arguments of its ``dbpaper_tight_layout`` attribute if it has one). A figure whose smallest text would stay under
    :data:`MIN_TEXT_PX` CSS px even at the full width of the content column is refused
    (:class:`ValueError`): draw it narrower (:func:`page_width`) or with larger fonts.
    """
    if not name or any(c in name for c in "/\\ "):
        raise ValueError(f"save_figure: name must be a plain file stem, got {name!r}")
    if enlarge_scripts(fig) and _laid_out_by_tight_layout(fig):
        fig.tight_layout(**getattr(fig, "dbpaper_tight_layout", {}))  # the larger texts laid out again
    record = figure_record(fig)
    unreadable = readable(fig)  # shown at the width it is drawn for (72 px per inch), at most the column
    if unreadable:
        raise ValueError(f"save_figure: {name}: text under {MIN_TEXT_PX} px where the page shows it: "
                         + "; ".join(unreadable[:3]))
    if record["min_display_px"] > COLUMN_PX:
        raise ValueError(
            f"save_figure: {name}: its smallest text ({record['min_font_pt']} pt, {record['smallest_text']!r}) needs "
            f"{record['min_display_px']:.0f} px of display width to be {MIN_TEXT_PX} px high, but the column is "
            f"{COLUMN_PX} px: draw it at most {page_width():.2f} in wide with fonts of at least {MIN_TEXT_PX} pt")
    folder = figure_dir(out)
    # font subsetting for the PDF logs harmless warnings about the font's own timestamps
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    paths: dict[str, Path] = {}
    with matplotlib.rc_context({"svg.hashsalt": "dbpaper"}):
        for fmt in FIGURE_FORMATS:
            path = folder / f"{name}.{fmt}"
            fig.savefig(path, format=fmt, metadata=_METADATA[fmt], bbox_inches=None)
            paths[fmt] = path
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths


def write_manifest(folder: str | os.PathLike[str]) -> Path:
    """Write ``MANIFEST.json`` with the SHA-256 of every figure file in ``folder``."""
    folder = Path(folder)
    entries = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.suffix.lstrip(".") in FIGURE_FORMATS
    }
    path = folder / "MANIFEST.json"
    path.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return path
