"""One helper that saves every reproduced figure into stable, citable files.

:func:`save_figure` writes ``<name>.pdf``, ``<name>.png`` and ``<name>.svg``
into the figure directory (``book/figures`` by default, or
``$DBPAPER_FIGURE_DIR``) with all embedded dates, ids and software-version
stamps removed, so that two runs produce byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FIGURE_FORMATS", "figure_dir", "save_figure", "style", "write_manifest"]

FIGURE_FORMATS = ("pdf", "png", "svg")

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


def save_figure(fig: Figure, name: str, out: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Save ``fig`` as ``name.{pdf,png,svg}`` with byte-stable output; return the paths.

    ``name`` is a stable identifier such as ``"fig-bilinear-adjoint-errors"``;
    it becomes the file stem that readers cite.
    """
    if not name or any(c in name for c in "/\\ "):
        raise ValueError(f"save_figure: name must be a plain file stem, got {name!r}")
    folder = figure_dir(out)
    # font subsetting for the PDF logs harmless warnings about the font's own timestamps
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    paths: dict[str, Path] = {}
    with matplotlib.rc_context({"svg.hashsalt": "dbpaper"}):
        for fmt in FIGURE_FORMATS:
            path = folder / f"{name}.{fmt}"
            fig.savefig(path, format=fmt, metadata=_METADATA[fmt], bbox_inches=None)
            paths[fmt] = path
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
