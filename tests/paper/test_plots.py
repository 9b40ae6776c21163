"""Every figure family of the chapters draws from small synthetic inputs (labels, panels, no line across a jump)."""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import dbpaper  # noqa: E402
from dbpaper.paper import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_slice_panels_break_lines_at_boundaries_and_mark_batches():
    ts = np.linspace(0, 1, 11)
    f = np.where(ts < 0.45, 0.0, 1.0)
    panels = [dict(ts=ts, f=f, var="w", at=0.5, boundaries=[0.45], title="(a)", ylabel="s"),
              dict(ts=ts, f=f, var="b", at=0.2, ticks=np.array([0.3, 0.7]), title="(b)", ylabel="s", ylim=(-1, 1))]
    fig = plots.slice_panels(panels)
    a, b = fig.axes
    y = a.lines[-2].get_ydata()  # the curve (then the dotted trained value)
    assert np.isnan(y[5]) and np.isfinite(y).sum() == 10
    assert a.get_xlabel() == "$w$" and b.get_ylim() == (-1, 1) and a.get_title() == "(a)"
    assert any(line.get_marker() == "|" for line in b.lines)


def test_fit_and_regions_and_smoothing():
    xs = np.linspace(-1, 1, 21)
    fig = plots.fit_and_regions(xs, np.sin(xs), xs, np.array([-1, 0, 1.0]), [0.5, -0.5], xs, xs**2, [0.0])
    assert len(fig.axes) == 3 and fig.axes[1].collections

    @dataclasses.dataclass
    class Row:
        penalty: str
        M: int
        largest_jump: float
        total_variation: float
        jump_variation: float

    rows = [Row(p, m, 1 / m, 1.0, 1 / m) for p in ("node", "cdb") for m in (1, 4, 16)]
    fig = plots.smoothing(xs, {1: xs, 4: xs / 2}, rows, {"node": 1.0, "cdb": 2.0})
    assert len(fig.axes) == 3 and fig.axes[1].get_xscale() == "log"


def test_background_figures():
    hs = np.logspace(-20, 0, 21)
    fig = plots.step_size_errors(hs, {m: hs for m in ("forward", "central")}, 2.2e-16)
    assert fig.axes[0].get_xscale() == "log"
    rmse = {(o, n): [1.0, 0.5] for o in ("exact", "noisy") for n in ("SPSA, Rademacher", "regression")}
    fig = plots.random_gradient_errors([1, 4], rmse, {"SPSA, Rademacher": [2, 8], "regression": [2, 5]}, 16)
    assert len(fig.axes) == 2
    gx, gy = np.linspace(-1, 1, 5), np.linspace(-1, 1, 4)
    prob = {"plain": np.full((4, 5), 0.3), "db": np.linspace(0, 1, 20).reshape(4, 5)}
    x = np.zeros((3, 2))
    fig = plots.decision_regions(gx, gy, prob, x, np.array([0, 1, 0]), {"plain": 0, "db": 3}, [0, 0.1],
                                 {"plain": [1, 2], "db": [1, 1.5]})
    assert len(fig.axes) == 3 and fig.axes[1].get_title() == "db ($\\lambda = 3$)"
    t = np.linspace(-1, 1, 5)
    c = np.stack([t, t], 1)
    fig = plots.generator_curves(c, c, {"plain": c}, t, np.ones(5), {"plain": np.ones(5)})
    assert len(fig.axes) == 2


def test_library_figures():
    e = dbpaper.AdjointErrors if hasattr(dbpaper, "AdjointErrors") else None
    assert e is not None
    op = dbpaper.Dense(3, 2)
    g = torch.Generator().manual_seed(0)
    trip = (torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(1, 3, generator=g, dtype=torch.float64),
            torch.randn(1, 2, generator=g, dtype=torch.float64))
    errs = {("Dense", dt): dbpaper.adjoint_errors(op, *trip) for dt in ("float32", "float64")}
    fig = plots.adjoint_defects(errs, ["Dense"], ["Dense"], {"float32": 1.2e-7, "float64": 2.2e-16})
    assert len(fig.axes[0].collections) == 4
    fig = plots.activation_curves({"tanh": dbpaper.Tanh(), "ReLU": dbpaper.ReLU()}, torch.linspace(-1, 1, 11))
    assert len(fig.axes[0].lines) == 2
    fig = plots.power_iterations([1, 2, 4], np.array([[0.5, 0.6], [0.8, 0.9], [1.0, 1.0]]))
    assert fig.axes[0].lines[-2].get_label() == "mean over 2 inputs"
