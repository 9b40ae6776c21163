"""Packaging metadata: ranges for users, exact pins for the book, one source for names and versions.

* ``pyproject.toml`` asks for ranges only (no ``==``, no upper bound on torch); the library's own
  dependencies are what it imports (torch);
* ``constraints.txt`` pins every requirement of every extra exactly, within its range;
* ``environment.yml`` carries the same pins as ``constraints.txt`` for the direct requirements;
* the repository URL is written once (``_config.yml``) and the project URLs, the CLI and the
  chapters' install cells follow it; the version is written once (``dbpaper.__version__``) and the
  citation file and the changelog follow it.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"]


def _name(s: str) -> str:
    return re.sub(r"[-_.]+", "-", s).lower()


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"constraints.txt: not an exact pin: {line!r}"
        assert _name(m[1]) not in pins, f"constraints.txt pins {m[1]} twice"
        pins[_name(m[1])] = Version(m[2])
    return pins


def requirements() -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in PROJECT["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra if _name(Requirement(r).name) != "dbpaper"]
    return reqs


def test_library_dependencies_are_ranges():
    for r in requirements():
        assert not any(s.operator in ("==", "===", "~=") for s in r.specifier), f"{r}: a pin, not a range"
    torch = [Requirement(r) for r in PROJECT["dependencies"] if Requirement(r).name == "torch"]
    assert len(torch) == 1 and all(s.operator == ">=" for s in torch[0].specifier), "torch: a lower bound only"
    assert PROJECT["requires-python"] == ">=3.10"


def test_library_depends_on_what_it_imports():
    """The library (not the paper wing, not the CLI) imports torch and the standard library only."""
    import sys

    stdlib = set(sys.stdlib_module_names)
    imported = set()
    for path in (ROOT / "dbpaper").rglob("*.py"):
        rel = path.relative_to(ROOT / "dbpaper").parts
        if rel[0] in ("paper", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - stdlib - {"dbpaper", "__future__"}
    assert third_party == {"torch"}
    assert {Requirement(r).name for r in PROJECT["dependencies"]} == third_party


def test_constraints_pin_every_requirement_within_its_range():
    pins = constraints()
    for r in requirements():
        assert _name(r.name) in pins, f"{r.name} is not pinned in constraints.txt"
        assert r.specifier.contains(pins[_name(r.name)], prereleases=True), f"{r.name}=={pins[_name(r.name)]} outside {r}"


def test_environment_yml_follows_constraints():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pinned = {}
    for p in pip:
        if p.startswith("-"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", p)
        assert m, f"environment.yml: not an exact pin: {p!r}"
        pinned[_name(m[1])] = Version(m[2])
    pins = constraints()
    assert pinned == {_name(r.name): pins[_name(r.name)] for r in requirements()}
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"  # the Python the book is built and checked with


CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def test_environment_yml_takes_the_cpu_build_of_torch():
    """Binder and conda users get torch's CPU build (PyPI's Linux torch is the CUDA build, several GB)."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    options = [p.split() for p in pip if p.startswith("-")]
    assert ["--extra-index-url", CPU_INDEX] in options, options
    assert not any(o[0] == "--index-url" for o in options)  # PyPI stays the index of every other package
    torch_pin = next(p for p in pip if p.startswith("torch=="))
    assert "+" not in torch_pin  # no local label: macOS wheels carry none, and the index's Linux +cpu wheel matches ==


@pytest.mark.skipif(not os.environ.get("CI"), reason="the CI install: a developer's venv may hold the CUDA build on purpose")
def test_the_ci_install_is_the_cpu_build():
    import torch

    assert torch.version.cuda is None and torch.version.hip is None, torch.__version__


def test_one_repository_url():
    assert REPO_URL.startswith("https://github.com/")
    owner, name = REPO_URL.removeprefix("https://github.com/").split("/")
    urls = PROJECT["urls"]
    assert urls["Repository"] == REPO_URL
    assert urls["Issues"] == f"{REPO_URL}/issues"
    assert urls["Changelog"] == f"{REPO_URL}/blob/{CONFIG['repository']['branch']}/CHANGELOG.md"
    assert urls["Documentation"] == f"https://{owner}.github.io/{name}"
    assert CONFIG["html"]["baseurl"].rstrip("/") == urls["Documentation"]
    from dbpaper.__main__ import REPOSITORY

    assert REPOSITORY == REPO_URL
    for launcher in ("binderhub_url", "colab_url"):
        assert CONFIG["launch_buttons"][launcher].startswith("https://")


def test_one_version():
    import dbpaper

    assert PROJECT["dynamic"] == ["version"] and "version" not in PROJECT
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dbpaper.__version__"}
    Version(dbpaper.__version__)  # a valid version
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert str(cff["version"]) == dbpaper.__version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[?{re.escape(dbpaper.__version__)}\]?", changelog, re.M), "no changelog section"


def test_typed_package():
    assert (ROOT / "dbpaper" / "py.typed").exists()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["dbpaper"]


@pytest.mark.parametrize("name", ["penalty", "objective", "plan", "double_backprop", "count_operations"])
def test_public_entry_points_are_annotated(name):
    import inspect

    import dbpaper

    sig = inspect.signature(getattr(dbpaper, name))
    missing = [p for p, v in sig.parameters.items() if v.annotation is inspect.Parameter.empty]
    assert missing == [], f"dbpaper.{name}: parameters without annotations: {missing}"
    assert sig.return_annotation is not inspect.Signature.empty, f"dbpaper.{name}: no return annotation"


def test_every_chapter_opens_with_the_install_cell():
    """The first code cell of each chapter installs the package from the repository URL of _config.yml,
    only where dbpaper is missing, and is skipped by nbval and the book's build."""
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    import book_install_cell

    assert book_install_cell.problems() == []
    src = book_install_cell.source()
    assert REPO_URL in src and 'find_spec("dbpaper") is None' in src and "[book]" in src
    assert {"nbval-skip", "skip-execution"} <= set(book_install_cell.TAGS)
    exec(compile(src, "install-cell", "exec"), {})  # dbpaper is importable here: nothing is fetched


def test_no_merge_conflict_markers():
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:  # not a git checkout (a source archive): every text file here
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts]
    bad = []
    for name in files:
        path = ROOT / name
        if path.suffix in (".png", ".pdf", ".svg", ".ipynb", ".json") or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        if re.search(r"^(<<<<<<< |>>>>>>> )", text, re.M) or re.search(r"^=======$", text, re.M) and "<<<<<<<" in text:
            bad.append(name)
    assert bad == []
