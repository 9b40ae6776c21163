"""The book's bookkeeping agrees with its chapters (book/ledger.yml, the errata page, figure numbers).

The rules are documented in tools/book_ledger.py and at the top of book/ledger.yml.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import book_ledger as bl  # noqa: E402

yaml = pytest.importorskip("yaml")

# Every numbered item of Etmann (2019): equations, definitions, theorems, remarks, lemmas,
# corollaries, algorithms, figures, sections and appendix items, and the claims of the abstract
# and of the conclusion.
PAPER_ITEMS = (
    [f"eq-{k}" for k in range(1, 45)]
    + ["def-2.1", "def-2.2", "def-3.1"]
    + ["thm-2.3", "thm-2.7", "thm-2.8", "thm-2.9"]
    + ["rem-2.1", "rem-2.2", "rem-2.4", "rem-2.5", "rem-2.6", "rem-A.2"]
    + ["lem-3.1", "lem-A.1", "cor-3.1.1", "cor-A.0.1"]
    + [f"alg-{k}" for k in range(1, 5)]
    + [f"fig-{k}" for k in range(1, 8)]
    + ["sec-1", "sec-1.1", "sec-1.2", "sec-1.3", "sec-2", "sec-2.1", "sec-2.2", "sec-3", "sec-3.1", "sec-3.2"]
    + ["sec-4", "sec-4.1", "sec-4.1.1", "sec-4.1.2", "sec-4.1.3", "sec-4.2", "sec-4.3", "sec-4.4", "sec-4.5"]
    + ["sec-5", "sec-5.1", "sec-5.2", "sec-5.3", "sec-5.4", "sec-6", "sec-6.1", "sec-6.2", "sec-6.3", "sec-7"]
    + ["app-A", "app-B", "app-B.1", "app-B.2", "app-B.3", "app-C"]
    + ["abstract-framework", "abstract-third", "abstract-landscape", "abstract-batches"]
    + ["sec-7-framework", "sec-7-third", "sec-7-landscape", "sec-7-batches"]
)


@pytest.fixture(scope="module")
def docs():
    return bl.scan()


@pytest.fixture(scope="module")
def ledger():
    return bl.load_ledger()


def rows(ledger):
    return [row for group in ledger["groups"] for row in group["items"]]


def test_ledger_rules_hold(ledger, docs):
    assert bl.problems(ledger, docs) == []


def test_every_paper_item_is_in_the_ledger(ledger):
    covered = {c for row in rows(ledger) for c in row.get("covers", [])}
    assert sorted(set(PAPER_ITEMS) - covered) == []
    assert sorted(covered - set(PAPER_ITEMS)) == []


def test_every_item_names_its_check(ledger, docs):
    places = bl.all_places(docs)
    for row in rows(ledger):
        if row["status"] in bl.ASSERTING:
            assert row.get("check"), row["item"]
            for ref in row["check"]:
                assert bl.is_test_ref(ref) or places[ref].asserts > 0, (row["item"], ref)
        else:
            assert row.get("check") or row.get("unchecked"), row["item"]
        if row["status"] == "reproduced":
            assert not row.get("scope"), row["item"]  # checked only for an instance: "special case"
        if row["status"] == "corrected":
            assert set(row["check"]) & set(row["errata"]), row["item"]


def test_section_5_is_linked_to_the_runtimes_chapter(ledger, docs):
    places = bl.all_places(docs)
    for row in rows(ledger):
        if {"sec-5.1", "sec-5.2", "sec-5.3", "sec-5.4", "eq-34", "alg-4", "app-C"} & set(row.get("covers", [])):
            assert row["status"] in bl.ASSERTING, row["item"]
            assert all(places[label].docname == "book/runtimes" for label in row["places"]), row["item"]


def test_the_rules_catch_violations(ledger, docs):
    bad = {"groups": [{"title": "x", "items": [
        {"item": "missing", "status": "reproduced", "places": ["repro-does-not-exist"]},
        {"item": "silent", "status": "reproduced", "places": ["errata-typos"]},
        {"item": "unchecked", "status": "reproduced", "places": ["repro-eq-8"]},
        {"item": "narrow", "status": "reproduced", "scope": "one network", "check": ["repro-eq-8"]},
        {"item": "vague", "status": "special case", "check": ["repro-eq-8"]},
        {"item": "uncorrected", "status": "corrected", "errata": ["erratum-a-third"], "check": ["repro-eq-8"]},
        {"item": "no reason", "status": "context"},
        {"item": "bad test", "status": "reproduced", "check": ["tests/test_book_ledger.py::test_missing"]},
        {"item": "empty check", "status": "reproduced", "check": ["errata-typos"]},
    ]}]}
    found = bl.problems(bad, docs)
    assert any("does not exist" in p for p in found)
    assert any("asserts nothing" in p for p in found)
    assert any(p.startswith("unchecked: ") and "names no check" in p for p in found)
    assert any(p.startswith("narrow: ") and "special case" in p for p in found)
    assert any(p.startswith("vague: ") and "does not say which" in p for p in found)
    assert any(p.startswith("uncorrected: ") and "none of its errata" in p for p in found)
    assert any(p.startswith("no reason: ") and "neither a check" in p for p in found)
    assert any(p.startswith("bad test: ") and "is not defined" in p for p in found)
    assert any(p.startswith("empty check: ") and "asserts nothing" in p for p in found)
    assert any("the ledger does not list" in p for p in found)  # every real repro- label is now unlisted


def test_place_of_a_label_ends_at_the_next_heading(tmp_path):
    nb = {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# T\n\n(repro-a)=\n## A\n\ntext"},
            {"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": [], "execution_count": None},
            {"cell_type": "markdown", "metadata": {}, "source": "(repro-b)=\nmore text\n\n## B"},
            {"cell_type": "code", "metadata": {}, "source": "assert x == 1", "outputs": [], "execution_count": None},
        ],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5,
    }
    import json

    (tmp_path / "ch.ipynb").write_text(json.dumps(nb))
    doc = bl.read_document(tmp_path / "ch.ipynb", docname="book/ch")
    assert doc.title == "T"
    assert (doc.places["repro-a"].heading, doc.places["repro-a"].asserts) == ("A", 0)
    assert (doc.places["repro-b"].heading, doc.places["repro-b"].asserts) == ("A", 0)  # ends at "## B"
    assert bl.count_asserts("assert x\n%timeit f()\nassert y") == 2


def test_errata_are_numbered_without_gaps(docs):
    numbers = [int(m.group(1)) for h in docs["book/errata"].headings if (m := re.match(r"E([0-9]+)\b", h))]
    assert numbers == list(range(1, len(numbers) + 1))
    typos = re.findall(r"^\* T([0-9]+) —", (ROOT / "book" / "errata.ipynb").read_text(encoding="utf-8").replace("\\n", "\n"), re.M)
    assert [int(t) for t in typos] == list(range(1, len(typos) + 1))


def test_erratum_links_carry_their_number(docs):
    numbers = bl.errata_numbers(docs)
    for doc in docs.values():
        for text, label in doc.refs:
            if label.startswith(bl.ERRATUM_PREFIX):
                assert text == numbers[label], (doc.docname, text, label)


def test_figures_are_numbered_as_in_the_paper_or_as_book_figures(docs, ledger):
    numbers = bl.figure_numbers(docs)
    assert all(numbers.values()), [name for name, n in numbers.items() if not n]
    paper = {row["figure"]: row["item"] for row in rows(ledger) if row.get("figure")}
    for name, number in numbers.items():
        if name in paper:
            assert number == paper[name], name
        else:
            assert number.startswith("Book figure "), name
    own = sorted(int(n.split()[-1]) for n in numbers.values() if n.startswith("Book figure "))
    assert own == list(range(1, len(own) + 1))
    for doc in docs.values():
        for text, label in doc.refs:
            if label in numbers:
                assert text == numbers[label], (doc.docname, text, label)


def test_no_numref_and_no_tex_in_titles(docs):
    for path in bl.chapter_paths():
        assert "{numref}" not in path.read_text(encoding="utf-8"), path.name
    for doc in docs.values():
        assert "$" not in doc.title and "\\" not in doc.title, doc.docname
        for heading in doc.headings:
            assert "$" not in heading, (doc.docname, heading)


def test_rendered_ledger_links_every_place(ledger, docs):
    text = bl.render(ledger, docs)
    for row in rows(ledger):
        for label in row.get("places", []):
            assert f"<{label}>`" in text
    assert "(missing)" not in text and "`? <" not in text


def test_api_page_groups_every_public_name():
    """The API page is generated from ``dbpaper.__all__``: a new public name must join a group (else the
    book build fails), and every data name or type alias needs its one-line summary."""
    body = bl.api_directives()
    import dbpaper

    for name in dbpaper.__all__:
        assert f"dbpaper.{name}" in body, name
        obj = getattr(dbpaper, name)
        if bl._kind(obj) in ("data", "alias"):
            assert bl.API_DATA_SUMMARIES.get(name), f"{name} has no summary in API_DATA_SUMMARIES"
