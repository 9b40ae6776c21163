"""Every number in the book's prose is glued from a computed value, asserted next to it, or a reference.

tools/book_numbers.py does the work; these tests run it on every chapter and show, on small synthetic
chapters, that it catches a literal number, a number asserted nowhere and a multiplier in words.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("book_numbers", ROOT / "tools" / "book_numbers.py")
book_numbers = importlib.util.module_from_spec(_spec)
sys.modules["book_numbers"] = book_numbers  # dataclasses look their module up
_spec.loader.exec_module(book_numbers)


def test_every_number_of_the_book_is_glued_asserted_or_a_reference():
    findings = book_numbers.check_book()
    assert not findings, "\n".join(map(str, findings))


def _chapter(tmp_path: Path, *cells: tuple[str, str], metadata: dict | None = None) -> Path:
    nb = {"cells": [{"cell_type": kind, "metadata": {}, "source": src} for kind, src in cells],
          "metadata": metadata or {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "chapter.ipynb"
    path.write_text(json.dumps(nb))
    return path


def _numbers(path: Path) -> list[str]:
    return [f.number for f in book_numbers.check_notebook(path)]


def test_a_literal_result_is_caught(tmp_path):
    path = _chapter(tmp_path, ("code", "x = train()\nassert x > 0.5"),
                    ("markdown", "The accuracy reaches 0.73 after 12 epochs, 2.5× more than before."))
    assert _numbers(path) == ["0.73", "12", "2.5"]


def test_glued_asserted_and_referenced_numbers_pass(tmp_path):
    path = _chapter(
        tmp_path,
        ("code", "ratio = a / b\nassert 2.5 < ratio < 4\nglue('ratio', ratio)\nfor seed in range(40):\n    pass"),
        ("markdown", "The ratio is {glue:text}`ratio:.1f`, between 2.5 and 4 (asserted), over 40 seeds; "
                     "see eq. (24), eqs. (25)–(28), Section 5.4, Algorithms 1–3, Book figure 11, "
                     "erratum E5 and {cite}`etmann2019closer` (2019). In math: $x^2 + 10^{-3}$."),
    )
    assert _numbers(path) == []


def test_a_result_needs_an_assert_not_just_code(tmp_path):
    # 0.49 occurs in the code, but in no assert: a decimal is a result and must be asserted or glued
    path = _chapter(tmp_path, ("code", "err = 0.49 * x\nprint(err)"), ("markdown", "The error is 0.49."))
    assert _numbers(path) == ["0.49"]


def test_a_number_in_a_cell_further_away_is_not_asserted(tmp_path):
    path = _chapter(tmp_path, ("code", "assert r > 0.49"), ("markdown", "Text."), ("markdown", "The error is 0.49."))
    assert _numbers(path) == ["0.49"]


def test_multipliers_in_words_and_decimals_in_math_are_caught(tmp_path):
    path = _chapter(tmp_path, ("markdown", "The penalties shrink it threefold, to $\\lVert J\\rVert = 2.9$."))
    assert sorted(_numbers(path)) == ["2.9", "threefold"]


def test_the_allow_list_needs_a_reason_and_covers_only_its_phrase(tmp_path):
    path = _chapter(tmp_path, ("markdown", "The 8×8 digits, and 8 more."),
                    metadata={"book-numbers-allow": [{"text": "8×8 digits", "reason": "the data set's image size"}]})
    assert _numbers(path) == ["8"]
    path = _chapter(tmp_path, ("markdown", "x"), metadata={"book-numbers-allow": [{"text": "8×8 digits"}]})
    with pytest.raises(ValueError, match="no reason"):
        book_numbers.check_notebook(path)


def test_an_injected_number_in_a_real_chapter_is_caught(tmp_path):
    nb = json.loads((ROOT / "book" / "runtimes.ipynb").read_text())
    first_markdown = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    first_markdown["source"] = "".join(first_markdown["source"]) + "\nThe default call is 3.7× faster.\n"
    path = tmp_path / "runtimes.ipynb"
    path.write_text(json.dumps(nb))
    assert [f.number for f in book_numbers.check_notebook(path)] == ["3.7"]


def test_a_markdown_page_has_no_code_so_every_number_must_be_glued(tmp_path):
    page = tmp_path / "intro.md"
    page.write_text("Speed-ups of {glue:text}`runtimes.ipynb::mlp-speedup-1:.2f`× (Section 5), and 1.6× unglued.\n")
    assert [f.number for f in book_numbers.check_markdown(page)] == ["1.6"]


def test_a_build_time_substitution_is_a_computed_number(tmp_path):
    page = tmp_path / "intro.md"
    page.write_text("On {{ bench:single-count-1 }} workloads, {{ bench:mlp-speedup-1:.2f }}× (computed), and 1.6× typed.\n")
    assert [f.number for f in book_numbers.check_markdown(page)] == ["1.6"]
