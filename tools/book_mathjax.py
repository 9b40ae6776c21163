"""Sphinx extension: MathJax served by the book itself, not by a CDN.

Sphinx loads MathJax 3 from jsDelivr by default, so a reader offline (or behind a filter, or years
from now) sees raw TeX. Where ``node_modules/mathjax`` is installed (``npm ci``: ``package.json``
pins the version that ``make check-html`` also uses) this copies its ``es5`` bundle into the built
book's ``_static/mathjax`` and points ``mathjax_path`` there, so that every page's math comes from
the same site as the page. Without ``node_modules`` the build falls back to the CDN and says so (a
warning would fail ``make book``'s ``-W``: a build without npm is still a valid build).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.util import logging

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = "tex-mml-chtml.js"
TARGET = "mathjax"  # under the HTML output's _static/

logger = logging.getLogger(__name__)


def mathjax_source(root: Path | None = None) -> Path | None:
    """The installed MathJax ``es5`` folder, or None where ``npm ci`` has not been run."""
    es5 = (root or ROOT) / "node_modules" / "mathjax" / "es5"
    return es5 if (es5 / BUNDLE).is_file() else None


def local_path() -> str:
    """``mathjax_path`` for the local copy: relative, so Sphinx resolves it under ``_static/``."""
    return f"{TARGET}/{BUNDLE}"


def configure(app, config) -> None:
    if mathjax_source() is None:
        logger.info("book_mathjax: node_modules/mathjax is missing (npm ci): MathJax is loaded from %s",
                    config.mathjax_path)
        return
    config.mathjax_path = local_path()


def copy_mathjax(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source = mathjax_source()
    if source is None or app.config.mathjax_path != local_path():
        return
    target = Path(app.outdir) / "_static" / TARGET
    if target.exists():
        shutil.rmtree(target)
    # the one bundle the pages load, and the components it loads on demand (TeX extensions, the CHTML fonts,
    # the accessibility and menu parts); not the other combined bundles or the SVG output
    def ignore(folder: str, names: list[str]) -> list[str]:
        top = Path(folder) == source
        return [n for n in names if n.endswith(".map") or (top and n.endswith(".js") and n != BUNDLE)
                or (Path(folder).name == "output" and n.startswith("svg"))]

    shutil.copytree(source, target, ignore=ignore)


def setup(app):
    app.connect("config-inited", configure, priority=900)
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
