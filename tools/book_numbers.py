"""Literal numbers in the book's prose that no computation stands behind.

Every number in a chapter's Markdown must be one of

* glued: written by a ``{glue:text}`` / ``{glue}`` role from a value the chapter computed;
* asserted: the same number occurs in an ``assert`` of a code cell next to the Markdown cell (the run
  of code cells directly before or directly after it);
* set up: a whole number that is not written as a result (no decimals, no "%" or "×" after it) may
  instead occur as a literal in the chapter's code -- the code that chooses it (a width, a number of
  points or seeds) and computes with it;
* a reference, not a measurement: an equation, section, figure, table, algorithm, appendix, erratum,
  lemma or theorem number, a year, a page, a version, a citation key or label;
* inside mathematics or code (``$...$``, ``$$...$$``, backticks, fences), where digits are part of the
  formula or the identifier, not a measured value -- except a decimal in inline math ($x_0 = 1.022$),
  which must be set up by the chapter's code or asserted like any other value;
* a multiplier in words ("threefold") is always reported: glue the number instead.

The pages are the chapters (``book/*.ipynb``) and the Markdown pages in MARKDOWN_PAGES (the
introduction, whose numbers are glued from the chapters with ``{glue:text}`chapter.ipynb::key:fmt```).
* a build-time substitution, ``{{ bench:key:fmt }}``: computed from the committed benchmark data by
  ``tools/book_claims.py`` when the book is built (the introduction's benchmark findings);
* inside a phrase of the chapter's ``book-numbers-allow`` list (notebook metadata), each entry
  ``{"text": phrase, "reason": why}`` naming a fixed input that is neither computed nor chosen next to
  it (the image size of the data set that ships with scikit-learn, a number the paper prints and the
  book quotes to contradict it);

``python tools/book_numbers.py`` prints every other number with its chapter, cell and context and exits
1 if there is one (tests/test_book_numbers.py runs it on every chapter).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"

# A number as prose writes it: 12, 0.49, 1.01, 3.5e-4, 1,000 (a thousands separator), 34 %.
NUMBER = re.compile(r"(?<![\w.])(\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?)(?![\w])")

# Things removed before numbers are looked for (their digits are not measurements).
_STRIP = [
    re.compile(r"```.*?```", re.S),  # fences, directives included (their body is handled separately)
    re.compile(r"\$\$.*?\$\$", re.S),  # display math
    re.compile(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.S),  # amsmath environments
    re.compile(r"(?<!\\)\$[^$\n]+?(?<!\\)\$"),  # inline math
    re.compile(r"\{(?:cite|cite:\w+|ref|doc|numref|eq|glue|glue:\w+|download|math|term)\}`[^`]*`"),  # roles
    re.compile(r"``[^`]+``|`[^`\n]+`"),  # code spans
    re.compile(r"^\([\w.:-]+\)=\s*$", re.M),  # labels
    re.compile(r"^:[\w-]+:.*$", re.M),  # directive options (:width: 90%)
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"https?://\S+"),  # bare URLs
    re.compile(r"<[^>\n]+>"),  # HTML tags and comments
    re.compile(r"\{\{ [^}\n]+ \}\}"),  # build-time substitutions ({{ bench:key }}: computed by tools/book_claims.py)
]

# A number right after one of these words (or an abbreviation of it) names an item, not a quantity.
_REFERENCE_WORDS = (
    r"eqs?\.|equations?|sections?|§|figures?|fig\.|book figure|tables?|algorithms?|alg\.|appendix|appendices|"
    r"lemmas?|theorems?|corollary|corollaries|propositions?|definitions?|remarks?|errat(?:um|a)|chapters?|"
    r"steps?|lines?|pages?|pp?\.|version|python|rows?|columns?|part|items?|cases?|issue|points?"
)
_REFERENCE = re.compile(
    r"(?:\b(?:" + _REFERENCE_WORDS + r")\s*\(?)"  # "eq. (24", "Section 3", "Algorithms 1"
    r"(?:[\dA-Z.]+\)?(?:\s*(?:[–,-]|and|or|to)\s*\(?))*$",  # ... and "(24)–(", "1, 2 and "
    re.I,
)
_BEFORE_PAREN_EQ = re.compile(  # "eqs. (24) and (", "eqs. (24), (25)–("
    r"\b(?:eqs?\.|equations?)\s*\(\d+\)(?:\s*(?:,|and|or|–|-|to)\s*\(\d+\))*\s*(?:,|and|or|–|-|to)\s*\($", re.I
)
_ERRATUM = re.compile(r"\b[EBCRL]$")  # E5, and the paper's appendix labels B1, C2 ...
_YEAR = re.compile(r"^(?:19|20)\d\d$")


@dataclass
class Finding:
    chapter: str
    cell: int
    number: str
    context: str

    def __str__(self) -> str:
        return f"{self.chapter} cell {self.cell}: {self.number!r} in …{self.context}…"


def _prose(text: str) -> str:
    """The cell's text with math, code, roles, labels and link targets blanked out (offsets kept).

    A directive's fence is blanked as a whole, except the body of a ``{figure}`` (its caption is prose).
    """

    def blank(m: re.Match) -> str:
        s = m.group(0)
        head = s.split("\n", 1)[0]
        if s.startswith("```") and ("{figure}" in head or "{admonition}" in head or "{note}" in head or
                                    "{important}" in head or "{warning}" in head or "{tip}" in head):
            lines = s.split("\n")
            kept = [" " * len(lines[0])] + lines[1:-1] + [" " * len(lines[-1])]
            inner = "\n".join(kept)
            return _prose(inner) if inner != s else inner
        return re.sub(r"[^\n]", " ", s)

    for pattern in _STRIP:
        text = pattern.sub(blank, text)
    return text


def _code_numbers(sources: list[str], asserts_only: bool = False) -> set[str]:
    """Every numeric literal of the code cells (as written and as a float's canonical text).

    With ``asserts_only`` only the literals of the lines that carry an ``assert`` (and of the lines
    continuing it) count.
    """
    out: set[str] = set()
    for src in sources:
        if asserts_only:
            src = "\n".join(_assert_lines(src))
        for tok in re.findall(r"(?<![\w.])\d+(?:_\d{3})*(?:\.\d*)?(?:e[-+]?\d+)?", src):
            tok = tok.replace("_", "")
            out |= _forms(tok)
    return out


def _assert_lines(src: str) -> list[str]:
    lines, inside = [], False
    for line in src.splitlines():
        stripped = line.strip()
        if stripped.startswith("assert ") or " assert " in line:
            inside = True
        elif inside and (not line.startswith((" ", "\t")) or not stripped):
            inside = False
        if inside:
            lines.append(line.split("#", 1)[0])
    return lines


def _forms(tok: str) -> set[str]:
    tok = tok.replace(",", "")
    forms = {tok}
    try:
        v = float(tok)
    except ValueError:
        return forms
    forms |= {repr(v), f"{v:g}"}
    if v == int(v):
        forms.add(str(int(v)))
    return forms


def _allowed_by_context(before: str, number: str, after: str = "") -> bool:
    if _YEAR.match(number):
        return True
    if _REFERENCE.search(before) or _BEFORE_PAREN_EQ.search(before) or _ERRATUM.search(before):
        return True
    # "(24)" standing alone in prose is an equation number
    if before.endswith("(") and after.startswith(")") and re.fullmatch(r"\d+", number):
        return True
    return False


def _blank_roles(text: str) -> str:
    for pattern in (_STRIP[0], _STRIP[4], _STRIP[5]):
        text = pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    return text


def check_notebook(path: Path) -> list[Finding]:
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    allow_entries = nb.get("metadata", {}).get("book-numbers-allow", [])
    for entry in allow_entries:
        if not entry.get("reason"):
            raise ValueError(f"{path.name}: book-numbers-allow entry {entry!r} gives no reason")
    phrases = [entry["text"] for entry in allow_entries]
    in_code = _code_numbers(["".join(c["source"]) for c in cells if c["cell_type"] == "code"])
    allow: set[str] = set()
    findings = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        neighbours = []
        for step in (-1, 1):
            j = i + step
            while 0 <= j < len(cells) and cells[j]["cell_type"] == "code":
                neighbours.append("".join(cells[j]["source"]))
                j += step
        asserted = _code_numbers(neighbours, asserts_only=True)
        source = "".join(cell["source"])
        for phrase in phrases:
            source = source.replace(phrase, " " * len(phrase))
        text = _prose(source)
        for m in NUMBER.finditer(text):
            number = m.group(1)
            before = text[max(0, m.start() - 40) : m.start()]
            if _allowed_by_context(before, number, text[m.end() : m.end() + 1]) or number in allow:
                continue
            after = text[m.end() : m.end() + 3].lstrip()
            result = "." in number or after.startswith(("%", "×", "x ")) or "e" in number
            if _forms(number) & (asserted if result else in_code):
                continue
            context = " ".join(text[max(0, m.start() - 50) : m.end() + 30].split())
            findings.append(Finding(path.name, i, number, context))
        # decimals inside inline math ($x_0 = 1.022$) are values too: set up by the chapter's code or asserted
        for m in re.finditer(r"(?<!\\)\$([^$\n]+?)\$", _blank_roles(source)):
            for d in re.findall(r"(?<![\w.])\d+\.\d+", m.group(1)):
                if d not in allow and not (_forms(d) & (asserted | in_code)):
                    findings.append(Finding(path.name, i, d, m.group(0)))
        # a multiplier in words ("threefold") is a measured ratio: glue it
        for m in re.finditer(r"\b\w+-?fold\b", text):
            context = " ".join(text[max(0, m.start() - 50) : m.end() + 30].split())
            findings.append(Finding(path.name, i, m.group(0), context))
    return findings


def check_markdown(path: Path) -> list[Finding]:
    """A Markdown page of the book (the introduction): one cell with no code next to it."""
    nb = {"cells": [{"cell_type": "markdown", "source": path.read_text()}], "metadata": {}}
    tmp = path.with_suffix(".numbers-check.json")
    try:
        tmp.write_text(json.dumps(nb))
        return [Finding(path.name, f.cell, f.number, f.context) for f in check_notebook(tmp)]
    finally:
        tmp.unlink()


# Markdown pages of the book that carry prose (ledger.md and api.md are generated or directives only).
MARKDOWN_PAGES = ("intro.md",)


def check_book(paths: list[Path] | None = None) -> list[Finding]:
    paths = paths or sorted(BOOK.glob("*.ipynb")) + [BOOK / name for name in MARKDOWN_PAGES]
    return [f for p in paths for f in (check_markdown(p) if p.suffix == ".md" else check_notebook(p))]


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or None
    findings = check_book(paths)
    for f in findings:
        print(f)
    if findings:
        print(f"{len(findings)} literal number(s) in the prose are neither glued nor asserted nor references")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
