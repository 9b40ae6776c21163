"""Under torch.autocast (CPU bfloat16 here) every algorithm runs, and the default's error against a
float64 truth is within 10x of autograd's error under the same autocast (MLPs and CNNs; the Jacobian,
classical, gradient-norm penalties and objective). The explicit algorithms compute in the parameters'
dtype with autocast switched off (dbpaper._pipeline.compute_input)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dbpaper
from dbpaper.penalties import ClassicalDoubleBackprop, GradientNormPenalty, JacobianFrobenius

from .helpers import gradients_by_backward, vector


def _model(kind, seed=0, outputs=4):
    torch.manual_seed(seed)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, outputs))
    if kind == "resnet":  # residual blocks, BatchNorm (eval), max-pooling
        return nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
            dbpaper.nn.Residual(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.Conv2d(3, 3, 3, padding=1)), nn.ReLU(),
            dbpaper.nn.Residual(nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(), shortcut=nn.Conv2d(3, 4, 1)),
            nn.Flatten(), nn.Linear(4 * 4 * 4, outputs),
        ).eval()  # fmt: skip
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, outputs),
    )  # fmt: skip


def _input(kind):
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 12, generator=g) if kind == "mlp" else torch.randn(8, 1, 8, 8, generator=g)  # cnn, resnet


def _run(model, x, case, y, algorithm):
    if case == "objective":
        r = dbpaper.objective(model, x, JacobianFrobenius(), y, 0.1, algorithm=algorithm)
    else:
        pen = {"jacobian": JacobianFrobenius(), "classical": ClassicalDoubleBackprop("nll"), "gradient-norm": GradientNormPenalty(1.0)}[case]
        r = dbpaper.penalty(model, x, pen, y if pen.needs_y else None, algorithm=algorithm)
    r, g = gradients_by_backward(list(model.parameters()), r)
    return vector([r, *g])


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("case", ["jacobian", "classical", "gradient-norm", "objective"])
def test_autocast_bfloat16_error_within_10x_of_autograd(kind, case):
    outputs = 1 if case == "gradient-norm" else 4
    x = _input(kind)
    y = torch.randint(0, outputs, (8,), generator=torch.Generator().manual_seed(2))
    truth = _run(_model(kind, outputs=outputs).double(), x.double(), case, y, "autograd")
    model = _model(kind, outputs=outputs)
    errors = {}
    for algorithm in ("auto", "autograd"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = _run(model, x, case, y, algorithm)
        assert torch.isfinite(got).all()
        errors[algorithm] = float(torch.linalg.vector_norm(got - truth) / torch.linalg.vector_norm(truth))
    assert errors["auto"] <= 10 * errors["autograd"], errors


def test_every_explicit_algorithm_runs_under_autocast():
    model, x = _model("mlp"), _input("mlp")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = {a: float(dbpaper.penalty(model, x, JacobianFrobenius(), algorithm=a)) for a in
                  ("general", "minimal", "optimized", "optimized-shortcuts", "optimized-chunked")}  # fmt: skip
    ref = float(dbpaper.penalty(model, x, JacobianFrobenius()))
    for a, v in values.items():
        assert abs(v - ref) <= 1e-5 * abs(ref), (a, v, ref)
