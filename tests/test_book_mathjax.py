"""The book serves its own MathJax (tools/book_mathjax.py): the path Sphinx loads it from, the copy it ships,
and the fallback to the CDN where node_modules is absent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"


@pytest.fixture()
def bm(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("book_mathjax", ROOT / "tools" / "book_mathjax.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    return module


def _install(root: Path) -> None:
    es5 = root / "node_modules" / "mathjax" / "es5"
    (es5 / "output" / "chtml" / "fonts").mkdir(parents=True)
    (es5 / "tex-mml-chtml.js").write_text("// bundle\n")
    (es5 / "output" / "chtml" / "fonts" / "tex.js").write_text("// font\n")
    (es5 / "tex-mml-chtml.js.map").write_text("{}\n")


def test_local_mathjax_is_configured_and_copied(bm, tmp_path):
    _install(tmp_path)
    config = SimpleNamespace(mathjax_path=CDN)
    bm.configure(None, config)
    assert config.mathjax_path == "mathjax/tex-mml-chtml.js"  # relative: Sphinx serves it from _static/
    out = tmp_path / "html"
    app = SimpleNamespace(builder=SimpleNamespace(format="html"), outdir=str(out), config=config)
    bm.copy_mathjax(app, None)
    assert (out / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()
    assert (out / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "tex.js").is_file()  # loaded on demand
    assert not (out / "_static" / "mathjax" / "tex-mml-chtml.js.map").exists()


def test_without_node_modules_the_cdn_stays(bm, tmp_path):
    config = SimpleNamespace(mathjax_path=CDN)
    bm.configure(None, config)
    assert config.mathjax_path == CDN
    app = SimpleNamespace(builder=SimpleNamespace(format="html"), outdir=str(tmp_path / "html"), config=config)
    bm.copy_mathjax(app, None)
    assert not (tmp_path / "html").exists()


def test_the_book_uses_the_extension_and_package_json_pins_mathjax():
    config = (ROOT / "_config.yml").read_text(encoding="utf-8")
    assert "book_mathjax: tools/" in config
    assert "mathjax" in json.loads((ROOT / "package.json").read_text(encoding="utf-8"))["dependencies"]
