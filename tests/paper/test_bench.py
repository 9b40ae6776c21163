"""The benchmark harness on its quick workloads: every exact method agrees with autograd; the default is reported."""

from __future__ import annotations

import pytest

from dbpaper.paper import bench


@pytest.fixture(scope="module")
def quick():
    return bench.run(quick=True, only=["penalties", "mlp-tanh"], repeats=3, min_repeats=1, budget_s=0.2, progress=False)


def test_every_exact_method_agrees_with_autograd(quick):
    names = {w["name"] for w in quick["workloads"]}
    assert {"logits", "classical-nll", "classical-mse", "output-node", "operator-norm", "objective", "mlp-tanh"} <= names
    for w in quick["workloads"]:
        for m, r in w["results"].items():
            if quick["methods"][m]["exact"]:
                assert r["max_rel_diff"] < 1e-4, (w["name"], m)  # float32
                assert r["value_rel_diff"] < 1e-4, (w["name"], m)


def test_the_default_call_and_its_plan_are_reported(quick):
    rows = bench.default_table(quick)
    assert len(rows) == len(quick["workloads"])
    for w, row in zip(quick["workloads"], rows):
        assert row["default picks"] == w["default_plan"]["algorithm"]
        assert w["results"]["default"]["flops"] <= w["results"]["autograd-summed"]["flops"] * 1.0001, w["name"]
    assert quick["machine"]["matmul_gflops_per_s"] > 0
    assert "default on" in bench.summary(quick)
