"""The house has two wings: the library ``dbpaper`` and the book's ``dbpaper.paper``.

* no module of the library imports the paper wing (it imports the library, never the reverse);
* no import cycle among the package's modules (module-level imports), and the library's layers
  import one way only: operators ← network ← seeds ← penalties ← algorithms ← planning ← _pipeline ← entry points;
* no public module outside ``PUBLIC_MODULES``, and the built-ins are registered in one place (``dbpaper/__init__.py``);
* no module is longer than ``MAX_LINES`` unless it is listed here with a reason;
* every name of the library's ``__all__`` resolves, and the paper wing's names are not in it.
* no function of the library is longer than ``MAX_FUNCTION_LINES`` (80).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "dbpaper"
PAPER = PKG / "paper"
MAX_LINES = 400

# modules over MAX_LINES, each with the reason it is not split
LONG_MODULES = {
    "dbpaper/numdiff.py": "the finite-difference oracle: one registry of stencils and their error model, read as one",
    "dbpaper/activations.py": "every coordinate-wise g of Definition 3.1 with g' and g'', and the output maps of Appendix B that are written in their terms",
    "dbpaper/penalties.py": "every penalty of Section 3 and its seeds (Appendix B) in one place, as the paper lists them",
    "dbpaper/paper/bench.py": "the benchmark registry (methods × workloads) and its runner share private helpers",
    "dbpaper/network.py": "the network of eq. (8) in one class: its layers, wiring, reading and the recorded forward pass, normalisations included",
}

# the library may name the paper wing only inside functions of its command line (lazy imports)
LAZY_IMPORTERS = {"dbpaper/__main__.py": "python -m dbpaper figures | bench imports the paper wing inside the commands"}

# known import cycles (module-level imports), each with the reason it is still there: none. The
# library is layered one way: operators <- network <- seeds <- penalties <- algorithms <- planning
# <- pipeline <- entry points (test_library_is_layered).
KNOWN_CYCLES: dict = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(path: Path, module_level_only: bool) -> set[str]:
    """Absolute names of the modules ``path`` imports (``from a import b``: ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    if module_level_only:  # module-level statements, including those nested in if/try blocks (not functions)
        stack, nodes = list(tree.body), []
        while stack:
            node = stack.pop()
            nodes.append(node)
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                stack += node.orelse  # the body runs only under a type checker: no import at run time
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                stack += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def _library_files() -> list[Path]:
    return [p for p in sorted(PKG.rglob("*.py")) if PAPER not in p.parents]


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_library_does_not_import_the_paper_wing(path):
    rel = str(path.relative_to(ROOT))
    names = _imports(path, module_level_only=rel in LAZY_IMPORTERS)
    offending = sorted(n for n in names if n == "dbpaper.paper" or n.startswith("dbpaper.paper."))
    assert not offending, f"{rel} imports the paper wing: {offending}"


def test_no_import_cycles():
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges = set()
        for imp in _imports(path, module_level_only=True):
            parts = imp.split(".")
            # importing a.b.c runs the __init__ of a and a.b, except a package the importer lives in
            for k in range(1, len(parts) + 1):
                target = ".".join(parts[:k])
                if target in mods and target != name and not name.startswith(target + "."):
                    edges.add(target)
        graph[name] = edges
    # strongly connected components (Tarjan)
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(frozenset(comp))

    for v in graph:
        if v not in index:
            visit(v)
    unknown = [sorted(c) for c in sccs if c not in KNOWN_CYCLES]
    assert not unknown, f"import cycles: {unknown}"


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_short(path):
    rel = str(path.relative_to(ROOT))
    n = len(path.read_text().splitlines())
    if rel in LONG_MODULES:
        return
    assert n <= MAX_LINES, f"{rel} has {n} lines (> {MAX_LINES}): split it, or list it in LONG_MODULES with a reason"


def test_long_module_list_is_current():
    for rel in LONG_MODULES:
        path = ROOT / rel
        assert path.exists(), f"{rel} is listed in LONG_MODULES but does not exist"
        assert len(path.read_text().splitlines()) > MAX_LINES, f"{rel} is short now: remove it from LONG_MODULES"


def test_library_all_resolves_and_excludes_the_paper_wing():
    pkg = importlib.import_module("dbpaper")
    missing = [n for n in pkg.__all__ if not hasattr(pkg, n)]
    assert not missing, f"dbpaper.__all__ names that do not resolve: {missing}"
    assert len(set(pkg.__all__)) == len(pkg.__all__)
    paper = importlib.import_module("dbpaper.paper")
    assert not set(paper.__all__) & set(pkg.__all__), "the paper wing's names belong to dbpaper.paper"
    for n in paper.__all__:
        assert hasattr(paper, n), n


def test_importing_the_library_loads_no_paper_module():
    import subprocess
    import sys

    code = "import sys, dbpaper; print(sorted(m for m in sys.modules if m.startswith('dbpaper.paper')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


# the library's layers, lowest first; a module may import (at module level) only from its own layer or below
LAYERS = [
    ["dbpaper.counting", "dbpaper.activations", "dbpaper.normalisation", "dbpaper.operators", "dbpaper.diagnostics", "dbpaper.numdiff"],
    ["dbpaper.nn", "dbpaper.readers", "dbpaper._norm_readers", "dbpaper._translate", "dbpaper._record", "dbpaper.network"],
    ["dbpaper.losses", "dbpaper.seeds"],
    ["dbpaper.penalties"],
    ["dbpaper.algorithms"],
    ["dbpaper.planning"],
    ["dbpaper._pipeline", "dbpaper._precomputed"],
    ["dbpaper.fallback"],
    ["dbpaper.api", "dbpaper.oracles", "dbpaper.__main__", "dbpaper"],
]


def _layer_of(module: str) -> int:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    assert best is not None, f"{module} is in no layer of LAYERS"
    return best[0]


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_is_layered(path):
    name = _module_name(path)
    if name == "dbpaper":
        return  # the package's __init__ re-exports every layer
    mine = _layer_of(name)
    upward = sorted(
        imp for imp in _imports(path, module_level_only=True)
        if imp.startswith("dbpaper.") and not imp.startswith("dbpaper.paper") and imp in _modules() and _layer_of(imp) > mine
    )  # fmt: skip
    assert not upward, f"{name} (layer {mine}) imports from a layer above: {upward}"


MAX_FUNCTION_LINES = 80


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_functions_are_short(path):
    """No function of the library (the paper wing aside) is longer than ``MAX_FUNCTION_LINES``, docstring included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


# the public surface: every module a user may import. Anything else is private (a leading underscore in its
# path); the book's wing dbpaper.paper is public as a whole.
PUBLIC_MODULES = {
    "dbpaper", "dbpaper.__main__", "dbpaper.activations", "dbpaper.api", "dbpaper.counting", "dbpaper.diagnostics",
    "dbpaper.fallback", "dbpaper.losses", "dbpaper.network", "dbpaper.nn", "dbpaper.normalisation", "dbpaper.numdiff", "dbpaper.oracles",
    "dbpaper.penalties", "dbpaper.planning", "dbpaper.readers", "dbpaper.seeds",
    "dbpaper.algorithms", *(f"dbpaper.algorithms.{m}" for m in ("algorithm4", "costs", "general", "jacobian", "passes", "registry", "shortcuts", "variants")),
    "dbpaper.operators", *(f"dbpaper.operators.{m}" for m in ("base", "channel_scale", "conv", "dense", "feature_scale", "hadamard", "locally_connected", "max_pool", "parameter_free")),
}  # fmt: skip


def test_no_public_module_outside_the_chosen_list():
    public = {m for m in _modules() if not m.startswith("dbpaper.paper") and not any(part.startswith("_") and part != "__main__" for part in m.split("."))}
    assert public - PUBLIC_MODULES == set(), f"public modules outside PUBLIC_MODULES (make them private or list them): {sorted(public - PUBLIC_MODULES)}"
    assert PUBLIC_MODULES - public == set(), f"PUBLIC_MODULES names modules that do not exist or are private: {sorted(PUBLIC_MODULES - public)}"


def test_importing_a_module_registers_nothing_the_package_registers_its_builtins_in_one_place():
    """The built-in readers and algorithms are registered by ``dbpaper/__init__.py`` alone (one call each), not as a
    side effect of importing ``readers`` or ``algorithms``."""
    calls = {}
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module-level statements only
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                calls.setdefault(name, []).append(ast.unparse(node.value))
    assert calls == {"dbpaper": ["readers.register_builtin()", "algorithms.register_builtin()"]}, calls
