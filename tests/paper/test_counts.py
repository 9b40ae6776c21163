"""The Section 5 scenario table: measured counts equal their closed forms; the default path never does more."""

from __future__ import annotations

import pytest

from dbpaper.paper.counts import scenario_table


@pytest.mark.parametrize("L", [2, 3, 5])
def test_scenario_table(L):
    for row in scenario_table(L=L, C=6):
        assert row["paper"] == row["paper closed"], row
        assert row["minimal"] == row["minimal closed"], row
        assert row["K□ minimal"] == row["K□ minimal closed"], row
        assert row["minimal"] <= row["paper"], row
        assert row["K□ minimal"] <= row["K□ paper"], row
        # autograd (summed) performs at least as many operator evaluations as the minimal algorithms
        assert row["autograd total"] >= row["total minimal"], row
