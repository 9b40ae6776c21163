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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import matplotlib

__all__ = ["COLUMN_PX", "FIGURE_FORMATS", "MIN_TEXT_PX", "figure_dir", "figure_record", "page_width", "save_figure",
           "style", "write_manifest"]  # fmt: skip

FIGURE_FORMATS = ("pdf", "png", "svg")

#: The width figures are drawn for, in CSS px: at most the book's content column at a 1280 px window
#: (sphinx-book-theme 1.x with both sidebars shown: 688 px measured in headless Chromium; 672 leaves a margin).
COLUMN_PX = 672

#: The smallest text a figure may show, in CSS px (a figure shown at ``72 w`` px for ``w`` inches: points).
MIN_TEXT_PX = 9


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

    ``min_display_px`` is the narrowest display width (CSS px) at which the smallest text is still
    :data:`MIN_TEXT_PX` px high: at display width ``D`` a font of ``s`` points is ``s D / (72 w)`` px.
    """
    from matplotlib.text import Text

    fig.canvas.draw()  # tick labels exist only once the figure has been drawn
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and t.get_alpha() != 0]
    smallest = min(texts, key=lambda t: t.get_fontsize(), default=None)
    width_in, height_in = (float(v) for v in fig.get_size_inches())
    dpi = float(matplotlib.rcParams["savefig.dpi"]) if matplotlib.rcParams["savefig.dpi"] != "figure" else float(fig.dpi)
    min_pt = round(float(smallest.get_fontsize()), 3) if smallest is not None else None
    return {
        "width_in": round(width_in, 4),
        "height_in": round(height_in, 4),
        "dpi": dpi,
        "png_px": [round(width_in * dpi), round(height_in * dpi)],
        "min_font_pt": min_pt,
        "smallest_text": smallest.get_text()[:60] if smallest is not None else None,
        "min_display_px": round(MIN_TEXT_PX * 72 * width_in / min_pt, 1) if min_pt else 0.0,
    }


def save_figure(fig, name: str, out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Save ``fig`` as ``name.{pdf,png,svg}`` with byte-stable output, and its record as ``name.json``.

    ``name`` is a stable identifier such as ``"fig-bilinear-adjoint-errors"``;
    it becomes the file stem that readers cite. A figure whose smallest text would stay under
    :data:`MIN_TEXT_PX` CSS px even at the full width of the content column is refused
    (:class:`ValueError`): draw it narrower (:func:`page_width`) or with larger fonts.
    """
    if not name or any(c in name for c in "/\\ "):
        raise ValueError(f"save_figure: name must be a plain file stem, got {name!r}")
    record = figure_record(fig)
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
