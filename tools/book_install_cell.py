"""The first code cell of every chapter: installs the package where a reader runs the chapter alone.

A chapter opened from the book's launch buttons (Colab, Binder) or downloaded on its own has no
checkout around it. Its first code cell fetches the repository named in ``_config.yml`` (the
chapters read ``book/data`` and write ``book/figures``), installs ``dbpaper`` with its ``book``
extra and moves into the book's folder — only where ``dbpaper`` is not importable. In a checkout it
does nothing; nbval and the book's build skip it (tags ``nbval-skip`` and ``skip-execution``), and
the rendered page leaves it out (``remove-cell``).

Usage: python tools/book_install_cell.py [--check]   (writes the cell into every chapter, or checks it)
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
TAGS = ["remove-cell", "skip-execution", "nbval-skip"]
MARKER = "# Running this chapter outside the repository"


def repository() -> tuple[str, str]:
    """The repository URL and branch of ``_config.yml`` (the one place that names them)."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return config["repository"]["url"], config["repository"]["branch"]


def source() -> str:
    """The install cell's code."""
    url, branch = repository()
    return f"""{MARKER} (Colab, Binder, a downloaded notebook)? This cell fetches
# the book and installs dbpaper with its book extra. Where dbpaper is importable it does nothing.
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("dbpaper") is None:
    subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", "{branch}", "{url}", "dbpaper-book"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "./dbpaper-book[book]"], check=True)
    importlib.invalidate_caches()
    os.chdir("dbpaper-book/book")"""


def chapters() -> list[Path]:
    return sorted((ROOT / "book").glob("*.ipynb"))


def first_code_cell(nb) -> int | None:
    return next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), None)


def problems() -> list[str]:
    """Chapters whose first code cell is not the current install cell."""
    out = []
    for path in chapters():
        nb = nbformat.read(path, as_version=4)
        i = first_code_cell(nb)
        cell = nb.cells[i] if i is not None else None
        if cell is None or cell.source != source() or cell.metadata.get("tags") != TAGS or cell.outputs:
            out.append(path.name)
    return out


def write() -> None:
    for path in chapters():
        nb = nbformat.read(path, as_version=4)
        cell = nbformat.v4.new_code_cell(source(), metadata={"tags": list(TAGS)})
        cell["id"] = "install-dbpaper"
        i = first_code_cell(nb)
        if i is not None and nb.cells[i].source.startswith(MARKER):
            nb.cells[i] = cell
        else:  # after the chapter's opening Markdown (title and summary)
            at = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
            nb.cells.insert(at, cell)
        nbformat.write(nb, path)
        print(f"install cell in {path.relative_to(ROOT)}")


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        bad = problems()
        print("\n".join(bad) or "every chapter opens with the install cell")
        sys.exit(1 if bad else 0)
    write()
