"""tools/book_execution.py: DBPAPER_BOOK_EXECUTE switches the book build to the stored outputs, and nothing else."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import book_execution  # noqa: E402


def _config():
    return types.SimpleNamespace(nb_execution_mode="force")


def test_unset_leaves_the_configured_mode(monkeypatch):
    monkeypatch.delenv("DBPAPER_BOOK_EXECUTE", raising=False)
    config = _config()
    book_execution._config_inited(None, config)
    assert config.nb_execution_mode == "force"
    monkeypatch.setenv("DBPAPER_BOOK_EXECUTE", "")
    book_execution._config_inited(None, config)
    assert config.nb_execution_mode == "force"


def test_off_renders_stored_outputs(monkeypatch):
    monkeypatch.setenv("DBPAPER_BOOK_EXECUTE", "off")
    config = _config()
    book_execution._config_inited(None, config)
    assert config.nb_execution_mode == "off"


def test_a_misspelt_mode_fails_the_build(monkeypatch):
    monkeypatch.setenv("DBPAPER_BOOK_EXECUTE", "of")
    with pytest.raises(ValueError, match="DBPAPER_BOOK_EXECUTE"):
        book_execution._config_inited(None, _config())


def test_ci_builds_the_book_after_the_notebook_comparison():
    """The stored outputs are rendered only where nbval has just compared them with a fresh execution."""
    run = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert run.index("make test") < run.index("make book BOOK_EXECUTE=off")
