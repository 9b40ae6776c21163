"""The Runtimes chapter's tables and figures, on a small synthetic benchmark result (schema 2)."""

from __future__ import annotations

import json

import matplotlib
import pytest

from dbpaper.paper import bench, runtimes

matplotlib.use("Agg")


def _result(name, group, times, flops, x=None, penalty="jacobian", algorithm="optimized-chunked"):
    res = {
        m: {"time_ms": t, "flops": f, "gflops_per_s": f / t / 1e6, "working_mib": 1.0 + t / 100, "max_rel_diff": 1e-7}
        for m, t, f in zip(("default", "alg4", "alg4-chunked", "autograd-summed"), times, flops)
    }
    return {
        "name": name, "group": group, "description": name, "params": {"x": x}, "task": {"penalty": penalty, "lam": None},
        "default_plan": {"algorithm": algorithm, "chunk_size": 8, "predicted_flops": flops[0], "autograd_flops": flops[3]},
        "results": res,
    }  # fmt: skip


@pytest.fixture
def data(tmp_path):
    workloads = [
        _result("mlp", "main", (30.0, 50.0, 29.0, 60.0), (6, 9, 6, 9)),  # 2.0x: met
        _result("cnn", "main", (100.0, 110.0, 95.0, 110.0), (5, 8, 5, 8)),  # 1.1x: missed (target 1.2)
        _result("classes-10", "classes", (10.0, 12.0, 10.0, 20.0), (1, 2, 1, 2), x=10),
        _result("classes-1000", "classes", (100.0, 120.0, 100.0, 300.0), (10, 20, 10, 20), x=1000),
    ]
    result = {
        "schema": 2, "targets": bench.TARGETS, "workloads": workloads,
        "machine": {"matmul_gflops_per_s": 50.0, "threads": 1, "cpu": "test"},
        "methods": {m: {"label": bench.METHODS[m].label, "exact": True} for m in ("default", "alg4", "alg4-chunked", "autograd-summed")},
    }  # fmt: skip
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result))
    return runtimes.load(path)


def test_default_rows_and_targets(data):
    rows = {r["workload"]: r for r in runtimes.default_rows(data)}
    assert rows["mlp"]["met"] and not rows["cnn"]["met"]
    assert rows["mlp"]["fastest registered"] == "optimized-chunked"
    assert rows["mlp"]["default / fastest registered"] == pytest.approx(30 / 29)
    goals = {g["goal"]: g for g in runtimes.target_rows(data)}
    assert goals["speed-up over autograd (summed) >= 2.0 on mlp"]["met"]
    assert not goals["speed-up over autograd (summed) >= 1.2 on cnn"]["met"]
    growth = runtimes.memory_growth(data)
    assert growth["default"] == pytest.approx((1 + 100 / 100) / (1 + 10 / 100))
    assert "share of matmul rate" in repr(runtimes.method_table(data, "mlp"))


def test_schema_is_checked(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"schema": 1, "workloads": []}))
    with pytest.raises(ValueError, match="schema"):
        runtimes.load(path)


def test_figures(data):
    import matplotlib.pyplot as plt

    for fig in (runtimes.plot_methods(data, "mlp"), runtimes.plot_sweeps(data)):
        assert fig.axes
        plt.close(fig)
