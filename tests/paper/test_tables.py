"""The chapters' HTML tables: real <table> markup, escaped cells, stable numbers, aligned plain text."""

from __future__ import annotations

import pytest

from dbpaper.paper.tables import Table, fmt, table


def test_html_is_a_table_with_header_and_escaped_cells():
    t = table([("a<b", 1.23456, True), {"x": "y", "n": 0.0, "ok": False}], ["x", "n", "ok"], caption="c & d")
    h = t._repr_html_()
    assert h.startswith('<div class="dbpaper-table"><table>') and h.endswith("</table></div>")
    assert "<caption>c &amp; d</caption>" in h
    assert h.count("<th style") == 3 and h.count("<tr>") == 3
    assert "a&lt;b" in h and "1.23" in h and "1.235" not in h
    assert ">yes<" in h and ">no<" in h and ">0<" in h


def test_plain_text_is_aligned():
    t = table([("forward", 1, 1.0), ("complex", 2, 2.0)], ["scheme", "order", "slope"])
    lines = repr(t).splitlines()
    assert lines[0].startswith("scheme") and len({len(line) for line in lines}) == 1
    assert lines[1].split() == ["forward", "1", "1"]


@pytest.mark.parametrize(("value", "text"), [(-0.0, "0"), (1e-17, "1e-17"), (123456.0, "1.23e+05"), (float("nan"), "–"),
                                             ("text", "text"), (3, "3")])
def test_fmt(value, text):
    assert fmt(value) == text


def test_bad_rows_and_align_raise():
    with pytest.raises(ValueError, match="cells"):
        Table([(1, 2)], ["a"])
    with pytest.raises(ValueError, match="align"):
        Table([(1,)], ["a"], align="c")
    with pytest.raises(ValueError, match="column"):
        Table([], [])


def test_braced_scripts_are_typeset_in_the_html():
    from dbpaper.paper.tables import markup, table

    assert markup("γ_{j-1} = K_jᵀ(θ_j, η_j) equals ∇_{ζ_j} R") == "γ<sub>j-1</sub> = K_jᵀ(θ_j, η_j) equals ∇<sub>ζ_j</sub> R"
    assert markup("x^{2} < y") == "x<sup>2</sup> &lt; y"
    assert markup("∇_{x_{j-1}} R") == "∇<sub>x<sub>j-1</sub></sub> R"
    html = table([["γ_{L-1}", 1.0]], ["quantity", "value"], caption="∇_{z_L} R")._repr_html_()
    assert "_{" not in html and "<sub>L-1</sub>" in html and "<sub>z_L</sub>" in html
