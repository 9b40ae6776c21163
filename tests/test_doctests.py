"""Every public entry point carries a runnable example (``>>>``), and every example runs as written."""

from __future__ import annotations

import doctest

import pytest

import dbpaper

ENTRY_POINTS = [
    dbpaper.penalty,
    dbpaper.objective,
    dbpaper.plan,
    dbpaper.double_backprop,
    dbpaper.count_operations,
    dbpaper.nn.PenaltyTerm,
]


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda f: f.__qualname__)
def test_the_entry_point_has_an_example_that_runs(entry):
    finder = doctest.DocTestFinder(recurse=False)
    (test,) = finder.find(entry, entry.__qualname__, globs={})
    assert test.examples, f"{entry.__qualname__} has no >>> example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0, f"{entry.__qualname__}: {runner.failures} of {runner.tries} examples failed"
