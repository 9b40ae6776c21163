"""The book's own claims, registered like the paper's: ``book/claims/*.yml`` rendered into ``book/claims.md``.

The ledger (``tools/book_ledger.py``) holds the paper to its printed statements; this register holds
the book to its own. Every finding of the introduction, every headline of the errata page and every
summary sentence of a chapter is one row::

    - id: intro-3                 # unique: <page>-<n>
      page: intro                 # the page the sentence is on (file stem of book/<page>.md or .ipynb)
      claim: "the sentence, as the page states it"
      scope: "what 'every' ranges over, e.g. every workload in book/data/bench-cpu*.json"
      check: "book/runtimes.ipynb#<cell-id>"   # or "tests/test_x.py::test_name"

The rules (:func:`problems`):

* every row has the five fields, each a non-empty string, and no others;
* ids are unique and read ``<page>-<n>`` with the row's own page and a positive number;
* the page exists (``book/<page>.md`` or ``book/<page>.ipynb``);
* the check resolves: a notebook cell with that id exists and contains an ``assert`` statement, or the
  test file exists and defines the test (``tests/x.py::test_name``; a class ``::Class::test_name``
  too).

The check must test the claim *in its stated generality*: a claim about "every workload" asserts over
all workloads of the data, one about "no chapter" over every chapter. The register cannot verify that
a check is strong enough; the scope field says what the check ranges over, so that a reader can.

``python tools/book_claims.py`` prints every problem and exits 1 if there is one;
``tests/test_book_claims.py`` runs the same validation, and the book build fails on it too (the
ledger's Sphinx extension, ``tools/book_ledger.py``, renders the register into ``book/claims.md`` and
reports every problem as a warning, which ``-W`` turns into an error).

The findings of the introduction that come from the committed benchmark data are computed here, by
:func:`bench_numbers`, and substituted into ``book/intro.md`` at build time (``{{ bench:key }}``);
``tests/test_book_claims.py`` asserts the same statements over every workload of the data.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CLAIMS = BOOK / "claims"
DATA = BOOK / "data"
FIELDS = ("id", "page", "claim", "scope", "check")
MARKER = "<!-- claims: the register below is generated from book/claims/*.yml at build time -->"
ID_RE = re.compile(r"^(?P<page>[a-z0-9_]+)-(?P<n>[1-9][0-9]*)$")
CELL_RE = re.compile(r"^(?P<path>book/[A-Za-z0-9_]+\.ipynb)#(?P<cell>[A-Za-z0-9_-]+)$")
TEST_RE = re.compile(r"^(?P<path>tests/[A-Za-z0-9_/]+\.py)::(?P<name>[A-Za-z0-9_:]+)$")
BENCH_RE = re.compile(r"\{\{ bench:(?P<key>[a-z0-9-]+)(?::(?P<fmt>[^ }]+))? \}\}")


# ---------------------------------------------------------------- reading


def load(directory: Path = CLAIMS) -> list[dict]:
    """Every row of every ``book/claims/*.yml``, in file order; each row remembers its file (``_file``)."""
    import yaml

    rows = []
    for path in sorted(directory.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        if not isinstance(data, list):
            raise ValueError(f"{path.name}: the register is a list of rows, got {type(data).__name__}")
        for row in data:
            row = dict(row) if isinstance(row, dict) else {"_bad": row}
            row["_file"] = path.name
            rows.append(row)
    return rows


def _count_asserts(source: str) -> int:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from book_ledger import count_asserts
    finally:
        sys.path.pop(0)
    return count_asserts(source)


def _cells(path: Path) -> dict[str, str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return {c.get("id", ""): "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"}


def check_problem(check: str, root: Path = ROOT) -> str | None:
    """Why a check reference does not resolve, or ``None`` if it does."""
    m = CELL_RE.match(check)
    if m:
        path = root / m["path"]
        if not path.is_file():
            return f"notebook {m['path']} does not exist"
        cells = _cells(path)
        if m["cell"] not in cells:
            return f"{m['path']} has no code cell with id {m['cell']!r}"
        if _count_asserts(cells[m["cell"]]) == 0:
            return f"cell {m['cell']!r} of {m['path']} asserts nothing"
        return None
    m = TEST_RE.match(check)
    if m:
        path = root / m["path"]
        if not path.is_file():
            return f"test file {m['path']} does not exist"
        text = path.read_text(encoding="utf-8")
        *classes, name = m["name"].split("::")
        for cls in classes:
            if not re.search(rf"^class {re.escape(cls)}\b", text, re.M):
                return f"class {cls!r} is not defined in {m['path']}"
        if not re.search(rf"^\s*def {re.escape(name)}\(", text, re.M):
            return f"test {name!r} is not defined in {m['path']}"
        return None
    return "a check is 'book/<chapter>.ipynb#<cell-id>' or 'tests/<file>.py::<test>'"


def problems(rows: list[dict] | None = None, root: Path = ROOT) -> list[str]:
    """Every violation of the register's rules (an empty list when the register is sound)."""
    rows = rows if rows is not None else load(root / "book" / "claims")
    found, seen = [], {}
    for k, row in enumerate(rows):
        where = f"{row.get('_file', '?')}, row {k + 1}"
        if "_bad" in row:
            found.append(f"{where}: a row is a mapping of {', '.join(FIELDS)}")
            continue
        rid = row.get("id")
        where = f"{where} ({rid})" if rid else where
        for field in FIELDS:
            if not isinstance(row.get(field), str) or not row[field].strip():
                found.append(f"{where}: field {field!r} is missing or empty")
        extra = sorted(set(row) - set(FIELDS) - {"_file"})
        if extra:
            found.append(f"{where}: unknown fields {extra}")
        if not isinstance(rid, str):
            continue
        if rid in seen:
            found.append(f"{where}: id {rid!r} is used twice (also {seen[rid]})")
        seen[rid] = where
        m = ID_RE.match(rid)
        if not m:
            found.append(f"{where}: id {rid!r} is not of the form <page>-<n>")
        elif m["page"] != row.get("page"):
            found.append(f"{where}: id {rid!r} does not start with its page {row.get('page')!r}")
        page = row.get("page")
        if isinstance(page, str) and not any((root / "book" / f"{page}{ext}").is_file() for ext in (".md", ".ipynb")):
            found.append(f"{where}: page {page!r} is not a page of the book")
        if isinstance(row.get("check"), str):
            problem = check_problem(row["check"].strip(), root)
            if problem:
                found.append(f"{where}: check {row['check']!r}: {problem}")
    return found


# ---------------------------------------------------------------- rendering


_SCRIPT = re.compile(r"([_^])\{([^{}]*)\}")


def _cell(text: str) -> str:
    """A table cell's text: one line, pipes escaped, braced sub- and superscripts (``∇_{z_j}R``) as HTML."""
    out = " ".join(str(text).split()).replace("|", "\\|")
    while True:  # innermost first
        new = _SCRIPT.sub(lambda m: f"<{'sub' if m[1] == '_' else 'sup'}>{m[2]}</{'sub' if m[1] == '_' else 'sup'}>", out)
        if new == out:
            return out
        out = new


def _check_link(check: str) -> str:
    m = CELL_RE.match(check)
    if m:
        doc = m["path"].removesuffix(".ipynb").removeprefix("book/")
        return f"{{doc}}`{doc}`, cell `{m['cell']}`"
    return f"`{check}`"


def _qualify_glue(text: str, page: str) -> str:
    """A glue role of a chapter's own sentence names its key without the notebook; on the register's page it needs it."""
    if not (BOOK / f"{page}.ipynb").is_file():
        return text
    return re.sub(r"\{glue(:\w+)?\}`(?![^`]*::)([^`]+)`", lambda m: f"{{glue{m[1] or ''}}}`{page}.ipynb::{m[2]}`", text)


def render(rows: list[dict] | None = None) -> str:
    """The MyST tables of the register, one per page, in the order of the files."""
    rows = rows if rows is not None else load()
    out, pages = [], []
    for row in rows:
        if row.get("page") not in pages:
            pages.append(row.get("page"))
    out += [f"The register holds {len(rows)} claims on {len(pages)} pages.", ""]
    for page in pages:
        out += [f"## {{doc}}`{page}`", "", "````{container} ledger-table claims-table", "",
                "| id | claim | what it ranges over | checked by |", "|---|---|---|---|"]
        for row in rows:
            if row.get("page") == page:
                claim, scope = (_qualify_glue(_cell(row[k]), page) for k in ("claim", "scope"))
                out.append(f"| {row['id']} | {claim} | {scope} | {_check_link(row['check'])} |")
        out += ["", "````", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- the introduction's benchmark numbers

BENCH_FILES = ("bench-cpu.json", "bench-cpu-2threads.json")  # one and two threads


def load_bench(name: str, data: Path = DATA) -> dict:
    """A committed benchmark file with a ``by_name`` index of its workloads."""
    d = json.loads((data / name).read_text(encoding="utf-8"))
    d["by_name"] = {w["name"]: w for w in d["workloads"]}
    return d


def speedup(w: dict, method: str = "default", base: str = "autograd-summed") -> float:
    """Time of ``base`` over the time of ``method`` on one workload (above 1: ``method`` is faster)."""
    return w["results"][base]["time_ms"] / w["results"][method]["time_ms"]


def jacobian_workloads(d: dict) -> list[dict]:
    """The workloads of the Jacobian penalty (with or without the loss)."""
    return [w for w in d["workloads"] if w["task"]["penalty"] == "jacobian"]


def single_vector_workloads(d: dict) -> list[dict]:
    """The workloads whose penalty has one ``v`` per example: every penalty but the Jacobian's."""
    return [w for w in d["workloads"] if w["task"]["penalty"] not in ("jacobian", None)]


def compiled_workloads(d: dict) -> list[dict]:
    """The workloads on which the compiled peers ran (``torch.compile`` of autograd and of the default call)."""
    return [w for w in d["workloads"] if {"autograd-compiled", "default-compiled"} <= set(w["results"])]


def resnet_workload(d: dict, name: str, threads: int, data: Path = DATA) -> dict:
    """A ResNet workload of the benchmark file ``d`` (the main files hold every workload, the ResNets included)."""
    return d["by_name"][name]


def max_load(d: dict) -> float:
    """The largest one-minute load average the file records (at the start and at the end of the run)."""
    m = d["machine"]
    return max(m.get(k, [0.0])[0] for k in ("load_average_at_start", "load_average_at_end"))


def _names(ws) -> str:
    return ", ".join(w["name"] for w in ws) or "none"


def bench_numbers(data: Path = DATA) -> dict:
    """The values the introduction quotes from the committed benchmark files (keys of ``{{ bench:key }}``)."""
    one, two = (load_bench(name, data) for name in BENCH_FILES)
    fl = lambda w, m: w["results"][m]["flops"]  # noqa: E731
    jac = jacobian_workloads(one)
    out = {
        "version": one.get("version", "?"),
        "commit": (one.get("commit") or "?")[:12],
        "cpu": one["machine"]["cpu"],
        "torch": one["machine"]["torch"].split("+")[0],
        "device": one["machine"]["device"],
        "cpu-count": one["machine"]["cpu_count"],
        "jacobian-workloads": len(jac),
        "autograd-same": sum(fl(w, "autograd-summed") == fl(w, "alg4") for w in jac),
        "autograd-more": _names(w for w in jac if fl(w, "autograd-summed") > fl(w, "alg4")),
        "autograd-less": _names(w for w in jac if fl(w, "autograd-summed") < fl(w, "alg4")),
        "classes-max": one["by_name"]["classes-1000"]["params"]["classes"],
    }
    for t, d in ((1, one), (2, two)):
        out[f"load-{t}"] = max_load(d)
        out[f"workloads-{t}"] = len(d["workloads"])
        out[f"slower-{t}"] = sum(speedup(w) < 1 for w in d["workloads"])
        out[f"faster-{t}"] = sum(speedup(w) > 1 for w in d["workloads"])
        out[f"slower-names-{t}"] = _names(w for w in d["workloads"] if speedup(w) < 1)
        out[f"jacobian-slower-names-{t}"] = _names(w for w in jacobian_workloads(d) if speedup(w) < 1)
        out[f"mlp-speedup-{t}"] = speedup(d["by_name"]["mlp"])
        out[f"classes-1000-speedup-{t}"] = speedup(d["by_name"]["classes-1000"])
        s = [speedup(w) for w in single_vector_workloads(d)]
        out[f"single-count-{t}"] = len(s)
        out[f"single-min-{t}"], out[f"single-max-{t}"] = min(s), max(s)
        out[f"single-slower-{t}"] = sum(v < 1 for v in s)
        out[f"single-slower-names-{t}"] = _names(w for w in single_vector_workloads(d) if speedup(w) < 1)
        compiled = compiled_workloads(d)
        out[f"compiled-count-{t}"] = len(compiled)
        out[f"compiled-names-{t}"] = _names(compiled)
        c = [speedup(w, base="autograd-compiled") for w in compiled]
        out[f"compiled-min-{t}"], out[f"compiled-max-{t}"] = (min(c), max(c)) if c else (float("nan"),) * 2
        out[f"compiled-default-slower-{t}"] = sum(speedup(w, "default-compiled", "default") < 1 for w in compiled)
        for name in ("resnet", "resnet-classical"):
            w = resnet_workload(d, name, t, data)
            out[f"{name}-speedup-{t}"] = speedup(w)
            out[f"{name}-memory-{t}"] = w["results"]["default"]["working_mib"] / w["results"]["autograd-summed"]["working_mib"]
    mlp = one["by_name"]["mlp"]
    out["mlp-flops-share"] = fl(mlp, "default") / fl(mlp, "autograd-summed")
    singles = single_vector_workloads(one)
    shares = [fl(w, "default") / fl(w, "autograd-summed") for w in singles]
    mem = [w["results"]["default"]["working_mib"] / w["results"]["autograd-summed"]["working_mib"] for w in singles]
    out["single-flops-min"], out["single-flops-max"] = min(shares), max(shares)
    out["single-memory-min"], out["single-memory-max"] = min(mem), max(mem)
    return out


def substitute_bench(text: str, numbers: dict | None = None) -> str:
    """Replace every ``{{ bench:key }}`` / ``{{ bench:key:fmt }}`` of a page by its value."""
    numbers = numbers if numbers is not None else bench_numbers()

    def value(m: re.Match) -> str:
        v = numbers[m["key"]]
        return format(v, m["fmt"]) if m["fmt"] else str(v)

    return BENCH_RE.sub(value, text)


def main() -> int:
    found = problems()
    for p in found:
        print(p)
    if found:
        print(f"{len(found)} problem(s) in the claims register (book/claims/*.yml)")
        return 1
    print(f"the claims register is sound: {len(load())} claims")
    return 0


if __name__ == "__main__":
    sys.exit(main())
