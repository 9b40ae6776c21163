"""The book is citable: every page names the version and the commit it was built from, errata have
number anchors, and CITATION.cff points at the same repository and book as the configuration."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


book_version = _tool("book_version")


def test_footer_names_version_and_linked_commit():
    line = book_version.footer("1.2.3", "0123456789abcdef0123", False, "https://github.com/o/r")
    assert "dbpaper 1.2.3" in line
    assert 'href="https://github.com/o/r/commit/0123456789abcdef0123"' in line and ">0123456789ab<" in line
    assert "uncommitted" not in line
    assert "with uncommitted changes" in book_version.footer("1.2.3", "0123456789abcdef", True, None)


def test_footer_degrades_without_git(monkeypatch):
    monkeypatch.setattr(book_version, "_git", lambda *args: None)
    monkeypatch.delenv("DBPAPER_COMMIT", raising=False)
    monkeypatch.delenv("GITHUB_SHA", raising=False)
    assert book_version.build_commit() == (None, False)
    assert "commit unknown" in book_version.footer("1.2.3", None, False, "https://github.com/o/r")
    monkeypatch.setenv("GITHUB_SHA", "feedface")
    assert book_version.build_commit() == ("feedface", False)


def test_footer_reads_this_checkout():
    sha, _ = book_version.build_commit()
    assert sha is None or re.fullmatch(r"[0-9a-f]{40}", sha)


def test_package_version_is_the_citation_version():
    import dbpaper

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert book_version.package_version() == dbpaper.__version__ == str(cff["version"])


def test_citation_names_the_repository_and_the_book_of_the_configuration():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cff["repository-code"] == config["repository"]["url"]
    assert cff["url"].rstrip("/") == config["html"]["baseurl"].rstrip("/")
    assert "book_version" in config["sphinx"]["local_extensions"]


def test_every_erratum_has_its_number_as_anchor():
    cells = json.loads((ROOT / "book" / "errata.ipynb").read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    numbers = re.findall(r"^## E([0-9]+) —", text, re.M)
    assert numbers
    for n in numbers:
        assert re.search(rf"^\(e{n}\)=\n\([\w-]+\)=\n## E{n} —", text, re.M), f"E{n} has no (e{n})= label"
