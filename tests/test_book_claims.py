"""The book's own claims are registered and checked (book/claims/*.yml, rules in tools/book_claims.py).

The first tests validate the register (every row has its fields, a unique id and a check that resolves),
show on small synthetic registers that the rules catch each kind of violation, and require that every
finding of the introduction and every entry of the errata page has a row. The tests after them are the
checks of the introduction's findings that come from the committed benchmark data: each asserts its
statement over every workload the statement ranges over.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import book_claims as bc  # noqa: E402

yaml = pytest.importorskip("yaml")


@pytest.fixture(scope="module")
def rows():
    return bc.load()


@pytest.fixture(scope="module")
def bench():
    """The benchmark files the introduction reads (one and two threads)."""
    return {name: bc.load_bench(name) for name in bc.BENCH_FILES}


# ---------------------------------------------------------------- the register


def test_the_register_is_sound(rows):
    assert bc.problems(rows) == []
    assert len(rows) >= 10


def _root(tmp_path: Path) -> Path:
    (tmp_path / "book").mkdir()
    (tmp_path / "tests").mkdir()
    nb = {"cells": [{"cell_type": "code", "id": "good", "metadata": {}, "outputs": [], "source": "x = 1\nassert x == 1"},
                    {"cell_type": "code", "id": "silent", "metadata": {}, "outputs": [], "source": "x = 1"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "book" / "ch.ipynb").write_text(json.dumps(nb))
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")
    (tmp_path / "tests" / "test_x.py").write_text("def test_ok():\n    assert True\n")
    return tmp_path


def _row(**kw):
    row = {"id": "ch-1", "page": "ch", "claim": "a claim", "scope": "every x", "check": "book/ch.ipynb#good", "_file": "ch.yml"}
    row.update(kw)
    return {k: v for k, v in row.items() if v is not None}


def test_a_sound_synthetic_register_passes(tmp_path):
    root = _root(tmp_path)
    assert bc.problems([_row(), _row(id="ch-2", check="tests/test_x.py::test_ok"), _row(id="intro-1", page="intro")], root) == []


@pytest.mark.parametrize("row, expected", [
    (_row(check=None), "field 'check' is missing"),
    (_row(scope="  "), "field 'scope' is missing or empty"),
    (_row(id="ch-x"), "not of the form"),
    (_row(id="intro-1"), "does not start with its page"),
    (_row(id="nowhere-1", page="nowhere"), "is not a page of the book"),
    (_row(check="book/ch.ipynb#absent"), "has no code cell with id 'absent'"),
    (_row(check="book/ch.ipynb#silent"), "asserts nothing"),
    (_row(check="book/other.ipynb#good"), "does not exist"),
    (_row(check="tests/test_x.py::test_missing"), "is not defined"),
    (_row(check="tests/test_y.py::test_ok"), "does not exist"),
    (_row(check="runtimes, the big table"), "a check is"),
    (_row(note="extra"), "unknown fields"),
])
def test_the_rules_catch_each_violation(tmp_path, row, expected):
    found = bc.problems([row], _root(tmp_path))
    assert any(expected in p for p in found), found


def test_duplicate_ids_are_caught(tmp_path):
    found = bc.problems([_row(), _row(claim="another")], _root(tmp_path))
    assert any("used twice" in p for p in found), found


def test_the_rendered_register_lists_every_row(rows):
    text = bc.render(rows)
    assert all(f"| {row['id']} |" in text for row in rows)
    assert f"{len(rows)} claims" in text


def _findings(text: str) -> str:
    start = text.index("(intro-findings)=")
    return text[start:text.index("\n## ", text.index("## ", start) + 3)]


def test_every_finding_of_the_intro_is_registered(rows):
    findings = _findings((ROOT / "book" / "intro.md").read_text(encoding="utf-8"))
    bullets = re.split(r"^\* ", findings, flags=re.M)[1:]
    assert len(bullets) >= 5
    marked = [re.findall(r"<!-- claims?: ([a-z0-9, -]+) -->", b) for b in bullets]
    assert all(marked), [b[:80] for b, m in zip(bullets, marked) if not m]
    ids = {i.strip() for m in marked for group in m for i in group.split(",")}
    registered = {row["id"] for row in rows if row["page"] == "intro"}
    assert ids <= registered, sorted(ids - registered)


def test_every_entry_of_the_errata_page_is_registered(rows):
    nb = json.loads((ROOT / "book" / "errata.ipynb").read_text(encoding="utf-8"))
    entries = [m[1] for c in nb["cells"] if c["cell_type"] == "markdown"
               for m in re.finditer(r"^## (E[0-9]+) —", "".join(c["source"]), re.M)]
    claimed = [re.match(r"(E[0-9]+) —", row["claim"]) for row in rows if row["page"] == "errata"]
    assert sorted(m[1] for m in claimed if m) == sorted(entries)


def test_bench_substitution_uses_the_computed_values():
    numbers = {"x": 1.2345, "n": 3, "cpu": "some CPU"}
    assert bc.substitute_bench("{{ bench:x:.2f }}× on {{ bench:n }} of {{ bench:cpu }}", numbers) == "1.23× on 3 of some CPU"
    with pytest.raises(KeyError):
        bc.substitute_bench("{{ bench:unknown }}", numbers)


def test_every_bench_value_of_the_intro_exists():
    keys = {m["key"] for m in bc.BENCH_RE.finditer((ROOT / "book" / "intro.md").read_text(encoding="utf-8"))}
    assert keys and keys <= set(bc.bench_numbers())


# ---------------------------------------------------------------- the introduction's findings from the benchmark


def test_intro_bench_is_this_version_on_a_cpu(bench):
    """"The benchmark ran on a CPU only, with this version": every benchmark file the introduction reads records
    the package version the book ships and its commit, and ran on the CPU, the same CPU for both."""
    import dbpaper

    for name, d in bench.items():
        assert d.get("version") == dbpaper.__version__, name
        assert d.get("commit"), name
        assert d["machine"]["device"] == "cpu", name
    assert len({d["machine"]["cpu"] for d in bench.values()}) == 1
    assert sorted(d["machine"]["threads"] for d in bench.values()) == [1, 2]


def test_intro_summed_autograd_does_algorithm_4s_flops(bench):
    """Summed autograd does exactly Algorithm 4's FLOPs on all Jacobian workloads but the ones the intro names,
    and never fewer: over every Jacobian workload of both files."""
    numbers = bc.bench_numbers()
    more = set(numbers["autograd-more"].split(", ")) - {"none"}
    for d in bench.values():
        jac = bc.jacobian_workloads(d)
        assert len(jac) == numbers["jacobian-workloads"]
        for w in jac:
            a, alg4 = w["results"]["autograd-summed"]["flops"], w["results"]["alg4"]["flops"]
            assert a >= alg4, w["name"]
            assert (a > alg4) == (w["name"] in more), w["name"]
    assert numbers["autograd-less"] == "none"
    assert numbers["autograd-same"] == numbers["jacobian-workloads"] - len(more)


def test_intro_speed_over_every_workload(bench):
    """The counts of workloads where the default call is faster or slower, and which Jacobian workloads are
    slower, over every workload of each file; on the main workload and the one with most classes it is faster,
    at fewer FLOPs."""
    numbers = bc.bench_numbers()
    for t, name in ((1, "bench-cpu.json"), (2, "bench-cpu-2threads.json")):
        d = bench[name]
        s = {w["name"]: bc.speedup(w) for w in d["workloads"]}
        assert len(s) == numbers[f"workloads-{t}"] == numbers["workloads-1"]
        assert sum(v > 1 for v in s.values()) == numbers[f"faster-{t}"]
        slower_jac = [w["name"] for w in bc.jacobian_workloads(d) if s[w["name"]] < 1]
        assert (", ".join(slower_jac) or "none") == numbers[f"jacobian-slower-names-{t}"]
        assert s["mlp"] > 1 and s["classes-1000"] > s["mlp"]
        mlp = d["by_name"]["mlp"]["results"]
        assert mlp["default"]["flops"] < mlp["autograd-summed"]["flops"]


def test_intro_against_compiled_autograd(bench):
    """Over every workload with compiled peers, in both files: the range of the default call's speed-up over
    compiled autograd, and on how many of them compiling the default call makes it slower."""
    numbers = bc.bench_numbers()
    for t, name in ((1, "bench-cpu.json"), (2, "bench-cpu-2threads.json")):
        compiled = bc.compiled_workloads(bench[name])
        assert compiled and len(compiled) == numbers[f"compiled-count-{t}"] == numbers["compiled-count-1"]
        c = [bc.speedup(w, base="autograd-compiled") for w in compiled]
        assert (min(c), max(c)) == (numbers[f"compiled-min-{t}"], numbers[f"compiled-max-{t}"])
        for w in compiled:  # compiled autograd is faster than eager autograd: the eager speed-up overstates
            assert bc.speedup(w, base="autograd-compiled") < bc.speedup(w), w["name"]
        slower = sum(bc.speedup(w, "default-compiled", "default") < 1 for w in compiled)
        assert slower == numbers[f"compiled-default-slower-{t}"]


def test_intro_single_vector_penalties(bench):
    """For single-vector penalties, over every such workload of both files: the range of speed-ups and the
    workloads where the default call is slower; at one thread the range of FLOPs and of working memory against
    summed autograd, and never more FLOPs than autograd."""
    numbers = bc.bench_numbers()
    for t, name in ((1, "bench-cpu.json"), (2, "bench-cpu-2threads.json")):
        singles = bc.single_vector_workloads(bench[name])
        assert len(singles) == numbers[f"single-count-{t}"] == numbers["single-count-1"] >= 4
        s = {w["name"]: bc.speedup(w) for w in singles}
        assert min(s.values()) == numbers[f"single-min-{t}"] and max(s.values()) == numbers[f"single-max-{t}"]
        assert (", ".join(n for n, v in s.items() if v < 1) or "none") == numbers[f"single-slower-names-{t}"]
    for w in bc.single_vector_workloads(bench["bench-cpu.json"]):
        r = w["results"]
        share = r["default"]["flops"] / r["autograd-summed"]["flops"]
        mem = r["default"]["working_mib"] / r["autograd-summed"]["working_mib"]
        assert numbers["single-flops-min"] <= share <= numbers["single-flops-max"] <= 1, w["name"]
        assert numbers["single-memory-min"] <= mem <= numbers["single-memory-max"], w["name"]  # the range the intro states (above 1 on the normalised networks)


def test_intro_resnet(bench):
    """On the ResNet, for the Jacobian penalty and for classical double backpropagation: at one thread the default
    call is faster than summed autograd; at one and two threads it needs less working memory and agrees with
    autograd to float32; the quoted speed-ups are those of the data."""
    numbers = bc.bench_numbers()
    for t, d in ((1, bench["bench-cpu.json"]), (2, bench["bench-cpu-2threads.json"])):
        for name in ("resnet", "resnet-classical"):
            w = bc.resnet_workload(d, name, t)
            r = w["results"]
            assert bc.speedup(w) == numbers[f"{name}-speedup-{t}"]
            assert t == 2 or bc.speedup(w) > 1, name
            assert r["default"]["working_mib"] < r["autograd-summed"]["working_mib"], name
            assert r["default"]["max_rel_diff"] < 1e-4, name  # float32, against autograd


def test_intro_load_of_the_runs(bench):
    """The load averages the intro quotes are the largest each file records, and the two-thread run was the
    more loaded one."""
    numbers = bc.bench_numbers()
    one, two = bench["bench-cpu.json"], bench["bench-cpu-2threads.json"]
    assert (bc.max_load(one), bc.max_load(two)) == (numbers["load-1"], numbers["load-2"])
    assert numbers["load-2"] > numbers["load-1"] and numbers["cpu-count"] == two["machine"]["cpu_count"]


def test_sec_5_4_point_7_algorithm_4_needs_no_more_memory_than_one_double_backprop(bench):
    """Section 5.4, point 7, on the benchmark's main network: Algorithm 4 for the Jacobian penalty (C classes)
    needs no more working memory than one conventional double backpropagation (Algorithms 1-3 for one output
    node) on the same network and batch — but more than the minimal path for that one node."""
    for d in bench.values():
        mlp, node = d["by_name"]["mlp"], d["by_name"]["output-node"]
        assert mlp["params"]["widths"] == node["params"]["widths"] and mlp["params"]["batch"] == node["params"]["batch"]
        alg4, conventional = mlp["results"]["alg4"]["working_mib"], node["results"]["alg1-3"]["working_mib"]
        assert alg4 <= conventional
        assert alg4 > node["results"]["minimal"]["working_mib"]


# ---------------------------------------------------------------- the framing of the intro, the ledger and the references


def test_the_audit_uses_torch_not_the_package():
    """The Audit section of the errata page checks the paper's general statements with torch alone."""
    nb = json.loads((ROOT / "book" / "errata.ipynb").read_text(encoding="utf-8"))
    inside, cells = False, []
    for c in nb["cells"]:
        text = "".join(c["source"])
        if c["cell_type"] == "markdown" and re.search(r"^## ", text, re.M):
            inside = bool(re.search(r"^## Audit\b", text, re.M))
        elif inside and c["cell_type"] == "code":
            cells.append(text)
    assert len(cells) >= 3
    for text in cells:
        assert "dbpaper" not in text and "P." not in text and "net." not in text, text[:200]


def test_references_are_sorted_by_author():
    """The bibliography's sorting style orders the entries by their first author as the reader sees the name."""
    pytest.importorskip("pybtex")
    import book_ledger
    from pybtex.database import parse_file

    style = book_ledger._author_year_style()()
    entries = style.sort(list(parse_file(str(ROOT / "references.bib")).entries.values()))
    names = []
    for e in entries:
        people = e.persons.get("author") or e.persons.get("editor") or []
        names.append(" ".join(people[0].last_names or people[0].first_names).replace("{", "").replace("}", "").lower())
    assert names == sorted(names)
    assert len(names) == len(parse_file(str(ROOT / "references.bib")).entries)
