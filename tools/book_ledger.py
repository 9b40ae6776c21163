"""The reproduction ledger: one table (``book/ledger.yml``) rendered into ``book/ledger.md``.

This module is three things at once:

* a reader for the chapters: it finds every MyST label ``(name)=`` in the
  markdown cells of ``book/*.ipynb`` (and in ``book/*.md``), the heading it
  belongs to, and the *place* it marks (see :func:`scan`);
* a renderer: :func:`render` turns ``book/ledger.yml`` into the MyST tables of
  the ledger page, linking every item with ``{ref}`` to the exact place that
  reproduces it;
* a Sphinx extension (registered in ``_config.yml`` under
  ``sphinx: local_extensions``): on ``source-read`` it replaces the marker
  comment of ``book/ledger.md`` by the rendered tables, and it substitutes
  ``{{ repository_url }}`` in the book's markdown pages by the one repository
  URL of ``_config.yml``.

``tests/test_book_ledger.py`` uses the same reader to enforce the ledger's
rules (see :func:`problems`).

The place of a label
--------------------
A label marks the text from the label line to the next markdown heading (of
any level) that follows it; a heading directly after the label belongs to
the place and does not end it. The code cells in between are the place's
code. An item whose status is ``reproduced``, ``corrected`` or ``special case``
must have, at every one of its places, at least one ``assert`` statement in
that code: the chapter checks what the ledger claims.

The check of an item
--------------------
Every item names its ``check``: the labels (of places that assert) and the
tests (``tests/….py`` or ``tests/….py::test_name``) that check the statement
*as printed and in the generality printed* — for a ``corrected`` item, among
them the erratum whose cell shows the printed statement failing. An item that
is checked only for an instance (one operator, one network, one kind of
``v``) has the status ``special case`` and says in ``scope`` which instance.
An item that no computation can check (a definition of notation, a pointer
to the literature, an empirical remark about other work) says why in
``unchecked`` instead; it cannot be ``reproduced``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
LEDGER_YML = BOOK / "ledger.yml"
MARKER = "<!-- ledger: the tables below are generated from book/ledger.yml at build time -->"
REPRO_PREFIX = "repro-"
ERRATUM_PREFIX = "erratum-"
ASSERTING = ("reproduced", "corrected", "special case")
STATUSES = {
    "reproduced": "reproduced",
    "corrected": "reproduced after correction",
    "special case": "reproduced for a special case only",
    "used": "used",
    "context": "context",
    "not reproduced": "not reproduced",
}

LABEL_RE = re.compile(r"^\((?P<label>[A-Za-z0-9_.:-]+)\)=\s*$")
HEADING_RE = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<title>.+?)\s*#*\s*$")
FENCE_RE = re.compile(r"^(?P<fence>`{3,}|~{3,}|:{3,})")
FIGURE_NAME_RE = re.compile(r"^:name:\s*(?P<name>\S+)\s*$")
REF_RE = re.compile(r"\{ref\}`(?P<text>[^`<]*?)\s*<(?P<label>[^`>]+)>`")
CAPTION_NUMBER_RE = re.compile(r"^\*\*(?P<number>(?:Book figure|Figure) [0-9]+)\.\*\*")


@dataclasses.dataclass
class Place:
    """What a label marks."""

    label: str
    docname: str  # e.g. "book/runtimes"
    chapter: str  # the document's title
    heading: str  # the heading the place belongs to
    asserts: int = 0  # assert statements in the place's code cells
    code_cells: int = 0


@dataclasses.dataclass
class Figure:
    """A ``{figure}`` directive of a chapter."""

    name: str
    docname: str
    number: str  # "Figure 2" or "Book figure 3", from the caption's bold prefix ("" if none)


@dataclasses.dataclass
class Document:
    docname: str
    title: str
    places: dict[str, Place]
    figures: list[Figure]
    refs: list[tuple[str, str]]  # (link text, label) of every {ref}`text <label>`
    headings: list[str]


def _cells(path: Path) -> list[tuple[str, str]]:
    """``(cell_type, source)`` of a notebook, or one markdown cell for a ``.md`` page."""
    if path.suffix == ".md":
        return [("markdown", path.read_text(encoding="utf-8"))]
    nb = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for cell in nb["cells"]:
        src = cell["source"]
        out.append((cell["cell_type"], "".join(src) if isinstance(src, list) else src))
    return out


def count_asserts(source: str) -> int:
    """Number of ``assert`` statements in a code cell (lines starting with % or ! are ignored)."""
    text = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return len(re.findall(r"^\s*assert\b", text, flags=re.M))
    return sum(isinstance(node, ast.Assert) for node in ast.walk(tree))


def plain(title: str) -> str:
    """A heading as plain text: markup that would show in a link text removed (a subscript role keeps its text)."""
    title = re.sub(r"\{su[bp]\}`([^`]*)`", r"\1", title)
    return re.sub(r"[*`]", "", title).strip()


def read_document(path: Path, docname: str | None = None) -> Document:
    """Labels, places, figures and references of one chapter or page."""
    docname = docname or path.relative_to(ROOT).with_suffix("").as_posix()
    title, heading = "", ""
    places: dict[str, Place] = {}
    open_places: list[Place] = []
    pending: list[Place] = []  # labels waiting to see whether a heading follows directly
    figures: list[Figure] = []
    refs: list[tuple[str, str]] = []
    headings: list[str] = []
    for cell_type, source in _cells(path):
        if cell_type == "code":
            n = count_asserts(source)
            for place in open_places + pending:
                place.asserts += n
                place.code_cells += 1
            open_places += pending
            pending = []
            continue
        if cell_type != "markdown":
            continue
        refs += [(m["text"].strip(), m["label"].strip()) for m in REF_RE.finditer(source)]
        fence, figure_name, caption_next = None, None, False
        for line in source.splitlines():
            stripped = line.strip()
            if fence:
                m = FIGURE_NAME_RE.match(stripped)
                if m and figure_name == "":
                    figure_name = m["name"]
                    caption_next = True
                elif caption_next and stripped and not stripped.startswith(":"):
                    c = CAPTION_NUMBER_RE.match(stripped)
                    figures.append(Figure(figure_name, docname, c["number"] if c else ""))
                    caption_next = False
                if stripped.startswith(fence) and stripped.rstrip("`~:") == "":
                    fence, figure_name = None, None
                continue
            m = FENCE_RE.match(stripped)
            if m:
                fence = m["fence"][0] * 3
                figure_name = "" if "{figure}" in stripped else None
                continue
            m = LABEL_RE.match(stripped)
            if m:
                place = Place(m["label"], docname, title, heading)
                places[place.label] = place
                pending.append(place)
                continue
            m = HEADING_RE.match(stripped)
            if m:
                heading = plain(m["title"])
                headings.append(heading)
                if not title and len(m["hashes"]) == 1:
                    title = heading
                open_places = []  # a heading ends every open place
                for place in pending:
                    place.heading = heading
                    place.chapter = place.chapter or title
                open_places, pending = pending, []
                continue
            if stripped:
                open_places += pending
                pending = []
    for place in places.values():
        place.chapter = place.chapter or title
    return Document(docname, title, places, figures, refs, headings)


def chapter_paths(book: Path = BOOK) -> list[Path]:
    """The chapters and pages of the book (notebooks and markdown pages in ``book/``)."""
    return sorted(p for p in book.iterdir() if p.suffix in (".ipynb", ".md") and not p.name.startswith("_"))


def scan(book: Path = BOOK) -> dict[str, Document]:
    """Every document of the book by docname."""
    return {doc.docname: doc for doc in map(read_document, chapter_paths(book))}


def all_places(docs: dict[str, Document]) -> dict[str, Place]:
    out: dict[str, Place] = {}
    for doc in docs.values():
        out.update(doc.places)
    return out


def load_ledger(path: Path = LEDGER_YML) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def errata_numbers(docs: dict[str, Document]) -> dict[str, str]:
    """``erratum-…`` label → ``"E3"`` from the errata page's headings."""
    out = {}
    for place in all_places(docs).values():
        if place.label.startswith(ERRATUM_PREFIX):
            m = re.match(r"(E[0-9]+)\b", place.heading)
            if m:
                out[place.label] = m.group(1)
    return out


def figure_numbers(docs: dict[str, Document]) -> dict[str, str]:
    """Figure name → its caption number ("Figure 2", "Book figure 5")."""
    return {f.name: f.number for doc in docs.values() for f in doc.figures}


# ---------------------------------------------------------------- rendering


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _place_link(place: Place) -> str:
    return f"{{ref}}`{place.chapter} › {place.heading} <{place.label}>`"


def _ref_link(ref: str, places: dict[str, Place]) -> str:
    """A check or place reference as a link (a label) or as code (a test)."""
    if is_test_ref(ref):
        return f"`{ref}`"
    return _place_link(places[ref]) if ref in places else f"`{ref}` (missing)"


def render(ledger: dict | None = None, docs: dict[str, Document] | None = None) -> str:
    """The MyST tables of the ledger page."""
    ledger = ledger if ledger is not None else load_ledger()
    docs = docs if docs is not None else scan()
    places = all_places(docs)
    errata = errata_numbers(docs)
    figs = figure_numbers(docs)
    out = []
    figure_rows = []
    for group in ledger["groups"]:
        out += [f"## {group['title']}", ""]
        if group.get("intro"):
            out += [" ".join(group["intro"].split()), ""]
        # each table in a container whose class lets _static/custom.css stack its rows on a narrow screen
        out += ["````{container} ledger-table ledger-items", "",
                "| item | what it states | status | where it is reproduced | errata |", "|---|---|---|---|---|"]
        for row in group["items"]:
            checks = list(row.get("check", []))
            others = [r for r in list(row.get("places", [])) + list(row.get("tests", [])) if r not in checks]
            where = []
            if checks:
                where.append("**checked:** " + ", ".join(_ref_link(r, places) for r in checks))
            elif row.get("unchecked"):
                where.append(f"**not checked:** {row['unchecked']}")
            if others:
                where.append(("also: " if where else "") + ", ".join(_ref_link(r, places) for r in others))
            status = STATUSES.get(row["status"], row["status"])
            if row.get("scope"):
                status += f" ({row['scope']})"
            if row.get("note"):
                status += f"; {row['note']}"
            er = [f"{{ref}}`{errata.get(label, '?')} <{label}>`" for label in row.get("errata", [])]
            out.append(
                f"| {_cell(row['item'])} | {_cell(row.get('states', ''))} | {_cell(status)} | "
                f"{_cell('; '.join(where) or '—')} | {', '.join(er) or '—'} |"
            )
            if row.get("figure"):
                name = row["figure"]
                place = places.get(row["places"][0]) if row.get("places") else None
                figure_rows.append(
                    f"| {_cell(row['item'])} | {{ref}}`{figs.get(name, '?')} <{name}>` | "
                    f"{place.chapter if place else ''} | {_cell(status)} |"
                )
        out += ["", "````", ""]
    if figure_rows:
        out += [
            "## The paper's figures in this book",
            "",
            "A reproduced figure carries the paper's number in its caption; the book's own figures",
            "are numbered *Book figure 1, 2, …* so that the two cannot be confused.",
            "",
            "````{container} ledger-table ledger-figures",
            "",
            "| paper | in this book | chapter | status |",
            "|---|---|---|---|",
            *figure_rows,
            "",
            "````",
            "",
        ]
    return "\n".join(out)


# ---------------------------------------------------------------- rules


def is_test_ref(ref: str) -> bool:
    """Whether a check reference names a test (``tests/….py`` or ``tests/….py::name``) rather than a label."""
    return ref.startswith("tests/")


def _test_ref_problem(ref: str) -> str | None:
    path, _, name = ref.partition("::")
    file = ROOT / path
    if not file.is_file():
        return f"test file {path!r} does not exist"
    if name and not re.search(rf"^\s*def {re.escape(name.split('[')[0])}\(", file.read_text(encoding="utf-8"), re.M):
        return f"test {name!r} is not defined in {path}"
    return None


def problems(ledger: dict | None = None, docs: dict[str, Document] | None = None) -> list[str]:
    """Every violation of the ledger's rules (an empty list when the ledger is consistent)."""
    ledger = ledger if ledger is not None else load_ledger()
    docs = docs if docs is not None else scan()
    places = all_places(docs)
    errata = errata_numbers(docs)
    figs = figure_numbers(docs)
    found = []
    referenced = set()
    for group in ledger["groups"]:
        for row in group["items"]:
            item = row["item"]
            if row["status"] not in STATUSES:
                found.append(f"{item}: unknown status {row['status']!r}")
            for label in row.get("places", []):
                referenced.add(label)
                if label not in places:
                    found.append(f"{item}: label {label!r} does not exist in any chapter")
                elif row["status"] in ASSERTING and places[label].asserts == 0:
                    p = places[label]
                    found.append(f"{item}: is {row['status']}, but its place {label!r} ({p.docname} › {p.heading}) asserts nothing")
            if row["status"] in ASSERTING and not row.get("places") and not row.get("check"):
                found.append(f"{item}: is {row['status']} but names no place")
            if row["status"] == "corrected" and not row.get("errata"):
                found.append(f"{item}: is corrected but names no erratum")
            # the check of the printed statement
            checks = row.get("check", [])
            if not checks and not row.get("unchecked"):
                found.append(f"{item}: names neither a check nor why it is unchecked")
            if checks and row.get("unchecked"):
                found.append(f"{item}: names a check and says it is unchecked")
            if row["status"] in ASSERTING and not checks:
                found.append(f"{item}: is {row['status']} but names no check")
            if row["status"] == "special case" and not row.get("scope"):
                found.append(f"{item}: is checked for a special case but does not say which (scope)")
            if row["status"] == "reproduced" and row.get("scope"):
                found.append(f"{item}: is reproduced, but its check covers only {row['scope']!r}: status 'special case'")
            if row["status"] == "corrected" and not set(checks) & set(row.get("errata", [])):
                found.append(f"{item}: is corrected, but its check names none of its errata")
            for ref in checks:
                if is_test_ref(ref):
                    problem = _test_ref_problem(ref)
                    if problem:
                        found.append(f"{item}: check {ref!r}: {problem}")
                    continue
                referenced.add(ref)
                if ref not in places:
                    found.append(f"{item}: check {ref!r} does not exist in any chapter")
                elif places[ref].asserts == 0:
                    p = places[ref]
                    found.append(f"{item}: its check {ref!r} ({p.docname} › {p.heading}) asserts nothing")
            for label in row.get("errata", []):
                if label not in errata:
                    found.append(f"{item}: erratum {label!r} is not an erratum heading of the errata page")
            if row.get("figure") and row["figure"] not in figs:
                found.append(f"{item}: figure {row['figure']!r} does not exist")
    for label, place in places.items():
        if label.startswith(REPRO_PREFIX) and label not in referenced:
            found.append(f"{place.docname}: label {label!r} reproduces an item the ledger does not list")
    return found


# ---------------------------------------------------------------- Sphinx extension

SUBSTITUTED_PAGES = ("book/intro", "book/ledger", "book/api", "book/references", "book/claims")
API_MARKER = "<!-- api: the autodoc directives below are generated from dbpaper.__all__ at build time -->"


# The API page in the order a reader needs it: the entry points, the penalties, the registries and the
# planning, the operators, then the rest. Each group names dbpaper.__all__ members (documented as dbpaper.X)
# and submodules (documented with their own members, minus those already documented as dbpaper.X).
API_GROUPS: list[tuple[str, str, list[str]]] = [
    ("Entry points", "What a training loop calls: the penalty or the whole objective, the plan the default "
     "call follows, the explicit algorithms and the operation counts of Section 5.",
     ["penalty", "objective", "plan", "ExecutionPlan", "double_backprop", "count_operations",
      "REDUCTIONS", "Reduction"]),
    ("Penalties", "The penalty terms of Section 4.1 and the functions p they apply.", ["penalties"]),
    ("Registries and planning", "Where layers are read into the network model, where algorithms are "
     "registered, and how the default call chooses among them.",
     ["ALGORITHM_NAMES", "AlgorithmName", "readers", "algorithms", "planning", "BatchMixingWarning", "FallbackWarning"]),
    ("Operators", "The bilinear operators of Section 2.1: K, its transpose and its weight-adjoint.",
     ["BilinearOperator", "Dense", "Conv1d", "Conv2d", "LocallyConnected2d", "AvgPool2d", "MaxPool1d",
      "MaxPool2d", "InvertibleDownsampling", "ChannelScale", "Hadamard", "IdentityMap", "operators"]),
    ("Activations and output maps", "Coordinate-wise activations (Definition 3.1), the normalisation layers read as "
     "activations that are not coordinate-wise, and the output maps of Appendix B.",
     ["Activation", "ReLU", "LeakyReLU", "ELU", "Sigmoid", "Tanh", "Softplus", "Identity", "OutputMap",
      "Softmax", "IdentityOutput", "CoordinatewiseOutput", "activations", "normalisation"]),
    ("The network model", "Eq. (8) and its residual extension, read from a torch model.",
     ["Network", "UnsupportedModelError", "nn"]),
    ("Counting, checks and references", "The operation counter, the adjoint checks of Section 2, finite "
     "differences, the autograd references and the fallback.",
     ["counting", "AdjointErrors", "adjoint_errors", "theorem_2_3_errors", "dtype_tolerance", "numdiff",
      "oracles", "fallback"]),
]


# data and type aliases carry no docstring of their own (inspect.getdoc gives their type's)
API_DATA_SUMMARIES = {
    "ALGORITHM_NAMES": "The values the `algorithm` argument of the entry points accepts.",
    "AlgorithmName": "The type of the `algorithm` argument: a `Literal` of `ALGORITHM_NAMES`.",
    "REDUCTIONS": "The values the `reduction` argument of `penalty`, `objective` and `dbpaper.nn.PenaltyTerm` accepts.",
    "Reduction": "The type of the `reduction` argument: a `Literal` of `REDUCTIONS`.",
}


def _summary(obj, name: str = "") -> str:
    import inspect

    if _kind(obj) in ("data", "alias"):
        return API_DATA_SUMMARIES.get(name, "")
    doc = inspect.getdoc(obj) or ""
    first = " ".join(doc.strip().split("\n\n", 1)[0].split())
    first = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", first)  # reST roles as code in the Markdown table
    first = re.sub(r"``([^`]+)``", r"`\1`", first)
    return first.replace("|", "\\|")


def _kind(obj) -> str:
    """How autodoc documents a public name: ``module``, ``class``, ``function`` or ``data`` (type aliases too)."""
    import inspect
    import types

    if isinstance(obj, types.ModuleType):
        return "module"
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "function"
    if type(obj).__module__ == "typing":
        return "alias"  # a type alias (AlgorithmName): annotations name it as a class
    return "data"


def _role(name: str, obj) -> str:
    role = {"module": "mod", "class": "class", "alias": "class", "function": "func", "data": "data"}[_kind(obj)]
    return f"{{py:{role}}}`{'' if role == 'mod' else '~'}dbpaper.{name}`"


def api_directives() -> str:
    """The API page's body: a summary table with links, then autodoc directives group by group (API_GROUPS).

    Every name of ``dbpaper.__all__`` is documented exactly once: the functions, classes and data as
    ``dbpaper.X``, each submodule with its own members minus those already documented as ``dbpaper.X``.
    """
    import importlib

    pkg = importlib.import_module("dbpaper")
    public = list(pkg.__all__)
    grouped = [name for _, _, names in API_GROUPS for name in names]
    missing = [name for name in public if name not in grouped]
    unknown = [name for name in grouped if name not in public]
    if missing or unknown or len(set(grouped)) != len(grouped):
        raise ValueError(f"API_GROUPS out of date: not grouped {missing}, not public {unknown}")
    out = ["```{eval-rst}", ".. automodule:: dbpaper", "```", "",
           "## Summary", "", "````{container} ledger-table api-summary", "", "| name | what it is |", "|---|---|"]
    for title, _, names in API_GROUPS:
        out.append(f"| **{title}** | |")
        for name in names:
            out.append(f"| {_role(name, getattr(pkg, name))} | {_summary(getattr(pkg, name), name)} |")
    out += ["", "````", ""]
    documented: set[int] = set()
    for title, intro, names in API_GROUPS:
        out += [f"## {title}", "", intro, "", "```{eval-rst}"]
        for name in names:
            obj = getattr(pkg, name)
            kind = _kind(obj)
            if kind == "module":
                out += [f".. automodule:: dbpaper.{name}", "   :members:"]
                # the names that dbpaper.__all__ re-exports are documented as dbpaper.X, and a name two
                # submodules share (planning and algorithms both export Estimate) with the first of them: once
                members = list(getattr(obj, "__all__", []))
                shared = sorted(m for m in members if m in public or id(getattr(obj, m, None)) in documented)
                documented |= {id(getattr(obj, m, None)) for m in members if m not in public}
                if shared:
                    out += [f"   :exclude-members: {', '.join(shared)}"]
            elif kind == "class":
                out += [f".. autoclass:: dbpaper.{name}", "   :members:"]
            elif kind == "function":
                out += [f".. autofunction:: dbpaper.{name}"]
            elif kind == "alias":
                out += [f".. py:class:: {name}", "   :module: dbpaper", "", f"   {_summary(obj, name).replace('`', '``')} ``{obj!r}``."]
            else:
                out += [f".. autodata:: dbpaper.{name}", "   :annotation:"]
            out.append("")
        out += ["```", ""]
    return "\n".join(out)


def _author_year_style():
    """A pybtex style whose bibliography labels are "Author, year", as the in-text citations."""
    from pybtex.style.formatting.unsrt import Style as UnsrtStyle
    from pybtex.style.labels import BaseLabelStyle
    from pybtex.style.sorting.author_year_title import SortingStyle

    class AuthorYearLabelStyle(BaseLabelStyle):
        def format_labels(self, sorted_entries):
            for entry in sorted_entries:
                people = entry.persons.get("author") or entry.persons.get("editor") or []
                names = [" ".join(p.last_names) or " ".join(p.first_names) for p in people]
                if len(names) > 2:
                    who = f"{names[0]} et al."
                elif len(names) == 2:
                    who = f"{names[0]} and {names[1]}"
                else:
                    who = names[0] if names else entry.fields.get("key", entry.key)
                who = who.replace("{", "").replace("}", "")
                yield f"{who}, {entry.fields.get('year', 'n.d.')}"

    class AuthorYearSorting(SortingStyle):
        # by author as a reader sees the name: the braces that protect "{Anonymous}" from BibTeX's name
        # parsing would otherwise sort it after every letter
        def person_key(self, person):
            return super().person_key(person).replace("{", "").replace("}", "")

    class AuthorYearStyle(UnsrtStyle):
        default_label_style = AuthorYearLabelStyle
        default_sorting_style = AuthorYearSorting

    return AuthorYearStyle


def _logger():
    from sphinx.util import logging

    return logging.getLogger("book_ledger")


class _LazyLogger:
    def __getattr__(self, name):
        return getattr(_logger(), name)


_LOGGER = _LazyLogger()


def _source_read(app, docname, source):
    if docname not in SUBSTITUTED_PAGES:
        return
    text = source[0]
    url = app.config.html_theme_options.get("repository_url") or ""
    text = text.replace("{{ repository_url }}", url.rstrip("/"))
    if docname == "book/ledger" and MARKER in text:
        app.env.note_dependency(str(LEDGER_YML))
        for path in chapter_paths():
            app.env.note_dependency(str(path))
        text = text.replace(MARKER, render())
    if docname == "book/api" and API_MARKER in text:
        text = text.replace(API_MARKER, api_directives())
    if "{{ bench:" in text or docname == "book/claims":
        import book_claims

        app.env.note_dependency(str(book_claims.CLAIMS))
        for path in sorted(book_claims.DATA.glob("bench-*.json")):
            app.env.note_dependency(str(path))
        if docname == "book/claims" and book_claims.MARKER in text:
            # the book's own claims: a claim without a resolving check fails the build (-W)
            for problem in book_claims.problems():
                _LOGGER.warning(f"claims register: {problem}", location=docname)
            text = text.replace(book_claims.MARKER, book_claims.render())
        text = book_claims.substitute_bench(text)
    source[0] = text


def setup(app):
    """Register the ledger, the repository URL substitution and the author-year bibliography style."""
    from pybtex.plugin import register_plugin

    register_plugin("pybtex.style.formatting", "authoryear", _author_year_style(), force=True)
    app.connect("source-read", _source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
