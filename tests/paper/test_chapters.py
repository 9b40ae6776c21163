"""What the chapters promise about themselves, checked over every chapter.

* No chapter times anything while it runs: wall times in the book come from the committed benchmark
  files, never from the machine that builds the book (the Runtimes chapter and the introduction say so).
* Every chapter but the errata ends with what it found: a "What this chapter found" section whose
  sentences are glued values, asserted by the cell ``summary-checks`` and registered in
  ``book/claims/<chapter>.yml``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))
TIMING = re.compile(r"\b(time\.(perf_counter|time|monotonic|process_time)(_ns)?\s*\(|timeit|torch\.profiler|"
                    r"torch\.autograd\.profiler|cProfile|^%%?time)", re.M)


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_no_chapter_times_anything(path):
    found = [(c.get("id"), m.group(0)) for c in _cells(path) if c["cell_type"] == "code"
             for m in [TIMING.search("".join(c["source"]))] if m]
    assert not found, f"{path.name} times something while it runs: {found}"


SUMMARISED = [p for p in CHAPTERS if p.stem != "errata"]


@pytest.mark.parametrize("path", SUMMARISED, ids=[p.stem for p in SUMMARISED])
def test_every_chapter_ends_with_what_it_found(path):
    cells = _cells(path)
    assert cells[-1].get("id") == "summary" and cells[-2].get("id") == "summary-checks", path.name
    text = "".join(cells[-1]["source"])
    assert text.startswith("## What this chapter found\n")
    body = " ".join(text.split("\n", 1)[1].split())
    sentences = [s for s in re.split(r"(?<=[.])\s+(?=[A-Z$])", body) if s]
    assert 2 <= len(sentences) <= 4, (path.name, len(sentences))
    assert all("{glue:" in s or "{ref}" in s for s in sentences[:1])  # the values are computed, not typed in
    assert "{glue:" in text and "assert" in "".join(cells[-2]["source"])
    claims = (ROOT / "book" / "claims" / f"{path.stem}.yml").read_text(encoding="utf-8")
    ids = re.findall(r"^- id: (\S+)$", claims, re.M)
    assert ids == [f"{path.stem}-{i}" for i in range(1, len(sentences) + 1)], (path.name, ids)
    checks = re.findall(r'^  check: "book/([a-z_]+)\.ipynb#([\w-]+)"$', claims, re.M)
    assert len(checks) == len(sentences) and all(page == path.stem for page, _ in checks), (path.name, checks)
    by_id = {c.get("id"): "".join(c["source"]) for c in cells}
    assert all(cid in by_id and "assert" in by_id[cid] for _, cid in checks), (path.name, checks)
