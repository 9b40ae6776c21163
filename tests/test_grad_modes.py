"""One behaviour under torch.no_grad() and torch.inference_mode(), on every path: the value alone,
no gradients computed, no graph recorded (and no error)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import dbpaper
from dbpaper.fallback import penalty_by_autograd
from dbpaper.penalties import ClassicalDoubleBackprop, JacobianFrobenius, OperatorNorm

from .helpers import unsupported_activation


def _models():
    torch.manual_seed(0)
    explicit = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4), nn.Softmax(dim=-1)).double()
    fallback = nn.Sequential(nn.Linear(5, 7), unsupported_activation(), nn.Linear(7, 4), nn.Softmax(dim=-1)).double()  # no reader: autograd
    return {"explicit": explicit, "fallback": fallback}


MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["explicit", "fallback"])
@pytest.mark.parametrize("algorithm", ["auto", "autograd"])
@pytest.mark.parametrize(
    "case", ["jacobian", "classical", "objective"],
)
def test_value_only(mode, path, algorithm, case):
    model = _models()[path]
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (6,), generator=torch.Generator().manual_seed(2))
    pen = {"jacobian": JacobianFrobenius(), "classical": ClassicalDoubleBackprop("nll"), "objective": JacobianFrobenius()}[case]
    yp = y if case in ("classical", "objective") else None
    if case == "objective":
        want = (
            nn.functional.nll_loss(torch.log(model(x)), y) + 0.3 * penalty_by_autograd(model, x, pen)
        ).detach()
    else:
        want = penalty_by_autograd(model, x, pen, yp).detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dbpaper.FallbackWarning)
        with MODES[mode]():
            xin = x.clone()
            if case == "objective":
                got = dbpaper.objective(model, xin, pen, y, 0.3, algorithm=algorithm)
            else:
                got = dbpaper.penalty(model, xin, pen, yp, algorithm=algorithm)
    assert not got.requires_grad and got.grad_fn is None
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_value_only_with_a_random_penalty_and_no_work_on_gradients(monkeypatch):
    model = _models()["explicit"]
    x = torch.randn(6, 5, dtype=torch.float64)
    from dbpaper.algorithms import passes

    called = []
    monkeypatch.setattr(passes, "forward_backward_pass", lambda *a, **k: called.append(1))
    with torch.no_grad():
        pen = OperatorNorm(iterations=2, generator=torch.Generator().manual_seed(0))
        got = dbpaper.penalty(model, x, pen, algorithm="general")
    pen = OperatorNorm(iterations=2, generator=torch.Generator().manual_seed(0))
    want = penalty_by_autograd(model, x, pen).detach()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert called == []  # Algorithm 3 (the gradients) never ran
