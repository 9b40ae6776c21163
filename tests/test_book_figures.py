"""Every figure of the book is drawn for the width its chapter shows it at, and says what it shows.

For each ``{figure}`` directive of a chapter: the figure's record (``book/figures/<name>.json``, written by
``dbpaper.paper.figures.save_figure``) exists; the directive's ``:width:`` is in CSS px, at most the
content column, and equals the drawing's width at 72 px per inch; so the smallest text of the figure shows
at least ``MIN_TEXT_PX`` px high; and the alt text describes the figure instead of naming its file.
(``tools/check_html.py`` measures the same in the built page, at 1280 and 400 px.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dbpaper.paper.figures import COLUMN_PX, MIN_TEXT_PX

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
DIRECTIVE = re.compile(r"```\{figure\} (\S+)\n((?::[a-z]+:.*\n)*)")


def _directives():
    out = []
    for path in sorted(BOOK.glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            for m in DIRECTIVE.finditer("".join(cell["source"])):
                opts = dict(re.findall(r":([a-z]+): ?(.*)", m.group(2)))
                out.append((path.stem, m.group(1), opts))
    return out


DIRECTIVES = _directives()


def test_the_chapters_have_figures():
    assert len(DIRECTIVES) >= 20


@pytest.mark.parametrize("chapter,target,opts", DIRECTIVES, ids=[Path(t).stem for _, t, _ in DIRECTIVES])
def test_figure_is_drawn_for_its_width_and_has_alt_text(chapter, target, opts):
    stem = Path(target).stem
    record = json.loads((BOOK / "figures" / f"{stem}.json").read_text(encoding="utf-8"))
    width = opts.get("width", "")
    assert re.fullmatch(r"[0-9]+px", width), f"{chapter}: {stem}: :width: must be in CSS px, got {width!r}"
    px = int(width[:-2])
    assert px <= COLUMN_PX, f"{chapter}: {stem}: {px} px is wider than the {COLUMN_PX} px column"
    assert abs(px - 72 * record["width_in"]) <= 1, f"{chapter}: {stem}: shown at {px} px, drawn {record['width_in']} in wide"
    shown = record["min_font_pt"] * px / (72 * record["width_in"])
    assert shown >= MIN_TEXT_PX - 1e-6, f"{chapter}: {stem}: smallest text {record['smallest_text']!r} shows {shown:.1f} px high"
    alt = opts.get("alt", "").strip()
    assert len(alt.split()) >= 8, f"{chapter}: {stem}: the alt text must say what the figure shows, got {alt!r}"
    assert not re.search(r"[\w-]+\.(png|svg|pdf)\b|figures/", alt), f"{chapter}: {stem}: the alt text names a file: {alt!r}"


# ---------------------------------------------------------------- the readability rule itself
from dbpaper.paper import figures as F  # noqa: E402


@pytest.mark.parametrize("text,depth", [("$x_0$", 1), ("depth $L$", 0), (r"$\|J\|_F^2$", 1), ("$x_{L_1}$", 2),
                                        (r"$\mathcal{R}_\mathrm{cdb}$", 1), ("a_b outside math", 0), ("$K^{□}$", 1),
                                        ("$x_{ }$", 0), (r"$e^{(i)}_j$ and $y$", 1), ("$g''(z)$", 1),
                                        ("it's plain text", 0)])
def test_script_depth(text, depth):
    assert F.script_depth(text) == depth
    assert F.glyph_pt(10, text) == pytest.approx(10 * 0.7**depth)


def _figure(label, fontsize, width_in=4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width_in, 2.0))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(label, fontsize=fontsize)
    return fig


def test_a_subscript_at_9_pt_is_not_readable_and_is_enlarged():
    fig = _figure("$x_0$", 9)
    assert F.readable(fig) and "$x_0$" in F.readable(fig)[0]  # the 0 is 6.3 px at the drawn width
    assert not F.readable(_figure("x0", 9))  # plain text at 9 pt is
    assert F.enlarge_scripts(fig) == 1
    assert not F.readable(fig) and fig.axes[0].xaxis.label.get_fontsize() >= 9 / 0.7
    assert F.figure_record(fig)["min_font_pt"] >= MIN_TEXT_PX  # the record counts the script, not the label's size


def test_save_figure_enlarges_scripts_and_refuses_what_stays_unreadable(tmp_path):
    fig = _figure("$x_0$", 9)
    F.save_figure(fig, "fig-test", tmp_path)
    record = json.loads((tmp_path / "fig-test.json").read_text(encoding="utf-8"))
    assert record["min_font_pt"] >= MIN_TEXT_PX and record["smallest_text"] in ("$x_0$",)
    with pytest.raises(ValueError, match="fig-test-small"):
        F.save_figure(_figure("tick", 6), "fig-test-small", tmp_path)  # plain text under 9 pt cannot be fixed
    with pytest.raises(ValueError):
        F.save_figure(_figure("tick", 9, width_in=2 * F.page_width()), "fig-too-wide", tmp_path)  # shrunk to half
