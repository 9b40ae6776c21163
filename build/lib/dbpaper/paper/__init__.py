"""The book's wing: the code that exists for the companion book, not for training.

``dbpaper`` (the library) implements the paper's operators and algorithms;
``dbpaper.paper`` imports it and is never imported by it. It holds what the
chapters and ``python -m dbpaper figures | bench | reproduce`` need:

* ``dbpaper.paper.landscape`` — the exact region walk and the slices of Section 6;
* ``dbpaper.paper.bench`` — the benchmarks of the *Runtimes* chapter;
* ``dbpaper.paper.graph`` — the dependency graph of the double-backpropagation quantities;
* ``dbpaper.paper.printed`` — the paper's formulas as printed (errata included);
* ``dbpaper.paper.checks`` — the equations of Section 4 checked against autograd;
* ``dbpaper.paper.figures`` — ``save_figure`` and the figure style;

A researcher who trains with the penalties needs only ``dbpaper``; this wing
is for reading and reproducing the paper.
"""

from __future__ import annotations

from .figures import FIGURE_FORMATS, figure_dir, save_figure, style, write_manifest

__all__ = ["FIGURE_FORMATS", "figure_dir", "save_figure", "style", "write_manifest"]
