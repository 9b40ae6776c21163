"""``reduction="mean" | "sum" | "none"`` on the entry points, checked against autograd per example in float64.

The oracle for ``"none"`` is independent of the package's autograd path too:
each ``R_n`` is the penalty of the batch ``{x_n}`` alone (every network here
treats its examples independently), and the gradient of ``Σ_n w_n R_n`` is
``Σ_n w_n`` times the gradient of that one-example penalty.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import dbpaper
from dbpaper import penalties as P

from .helpers import PENALTIES, penalty_targets, random_model, random_residual_model

DT = torch.float64
CASES = [
    ("dense", "tanh", False, 0),
    ("dense", "softplus", True, 1),
    ("conv2d", "elu", False, 0),
    ("batchnorm", "relu", True, 1),
]


def _grads(model, x):
    gs = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]
    return gs, (torch.zeros_like(x) if x.grad is None else x.grad.clone())


def _run(model, x, pen_name, y, w, reduction, algorithm="auto", lam=None):
    """The value and the gradients of ``(value * w).sum()`` (``w`` per example for ``"none"``, a scalar otherwise)."""
    model.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    pen = PENALTIES[pen_name][0]()
    if lam is None:
        value = dbpaper.penalty(model, x, pen, y, algorithm=algorithm, reduction=reduction)
    else:
        value = dbpaper.objective(model, x, pen, y, lam, algorithm=algorithm, reduction=reduction)
    (value * w).sum().backward()
    gs, gx = _grads(model, x)
    return value.detach(), gs, gx


def _close(a, b, rtol=1e-10):
    scale = max(float(b.abs().max()), 1e-300)
    assert float((a - b).abs().max()) <= rtol * scale + 1e-14, (float((a - b).abs().max()), scale)


def _assert_same(got, want):
    _close(got[0], want[0])
    for g, h in zip(got[1], want[1], strict=True):
        _close(g, h)
    _close(got[2], want[2])


def _case(arch, act, softmax, seed, pen_name, batch=5):
    model, in_shape = random_model(arch, act, softmax, seed=seed, classes=4, dtype=DT)
    x = torch.randn((batch, *in_shape), generator=torch.Generator().manual_seed(seed), dtype=DT)
    y = penalty_targets(pen_name, x, seed=seed)
    w = torch.randn(batch, generator=torch.Generator().manual_seed(50 + seed), dtype=DT)
    return model, x, y, w


@pytest.mark.parametrize("pen_name", sorted(PENALTIES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_none_matches_autograd_per_example(case, pen_name):
    model, x, y, w = _case(*case, pen_name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dbpaper.FallbackWarning)  # the explicit path, not the fallback
        got = _run(model, x, pen_name, y, w, "none")
    assert got[0].shape == (x.shape[0],)
    _assert_same(got, _run(model, x, pen_name, y, w, "none", algorithm="autograd"))


@pytest.mark.parametrize("pen_name", ["jacobian", "cdb-nll", "gradient-norm", "sobolev", "r1-index"])
def test_none_against_one_example_batches(pen_name):
    """``R_n`` and ``∇ Σ_n w_n R_n`` from ``N`` one-example calls of the mean penalty (an oracle outside ``"none"``)."""
    model, x, y, w = _case("dense", "tanh", False, 2, pen_name, batch=4)
    got = _run(model, x, pen_name, y, w, "none")
    values, gs, gx = [], [torch.zeros_like(p) for p in model.parameters()], torch.zeros_like(x)
    for n in range(x.shape[0]):
        yn = None if y is None else y[n : n + 1]
        v, g, gxn = _run(model, x[n : n + 1], pen_name, yn, w[n], "mean", algorithm="autograd")
        values.append(v)
        gs = [a + b for a, b in zip(gs, g, strict=True)]
        gx[n] = gxn[0]
    _assert_same(got, (torch.stack(values), gs, gx))


@pytest.mark.parametrize("pen_name", ["jacobian", "cdb-mse", "opnorm", "general-v-with-vjp"])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_objective_reductions_match_autograd(pen_name, reduction):
    model, x, y, w = _case("dense", "softplus", True, 3, pen_name)
    if y is None:
        y = torch.randint(0, 4, (x.shape[0],), generator=torch.Generator().manual_seed(3))
    w = w if reduction == "none" else torch.tensor(0.7, dtype=DT)
    got = _run(model, x, pen_name, y, w, reduction, lam=0.3)
    _assert_same(got, _run(model, x, pen_name, y, w, reduction, algorithm="autograd", lam=0.3))


@pytest.mark.parametrize("pen_name", ["jacobian", "cdb-nll", "node", "general-callable-p"])
def test_sum_is_batch_size_times_mean(pen_name):
    model, x, y, _ = _case("conv2d", "tanh", True, 1, pen_name)
    one = torch.tensor(1.0, dtype=DT)
    mean = _run(model, x, pen_name, y, one, "mean")
    total = _run(model, x, pen_name, y, one, "sum")
    n = x.shape[0]
    _assert_same(total, (mean[0] * n, [g * n for g in mean[1]], mean[2] * n))
    per = _run(model, x, pen_name, y, torch.ones(n, dtype=DT), "none")  # w = 1: the gradients of the sum
    _assert_same((per[0].sum(), per[1], per[2]), total)


@pytest.mark.parametrize("seed", range(4))
def test_none_on_residual_networks(seed):
    model, in_shape = random_residual_model(seed, classes=4, dtype=DT)
    x = torch.randn((4, *in_shape), generator=torch.Generator().manual_seed(seed), dtype=DT)
    w = torch.randn(4, generator=torch.Generator().manual_seed(9), dtype=DT)
    for pen_name in ("jacobian", "cdb-nll"):
        y = penalty_targets(pen_name, x, seed=seed)
        _assert_same(_run(model, x, pen_name, y, w, "none"), _run(model, x, pen_name, y, w, "none", algorithm="autograd"))


def test_none_named_algorithm_and_value_only():
    model, x, y, w = _case("dense", "tanh", False, 0, "jacobian")
    for alg in ("general", "minimal", "optimized-shortcuts"):
        _assert_same(_run(model, x, "jacobian", None, w, "none", algorithm=alg), _run(model, x, "jacobian", None, w, "none", algorithm="autograd"))
    with torch.no_grad():
        v = dbpaper.penalty(model, x, P.JacobianFrobenius(), reduction="none")
    assert not v.requires_grad and v.shape == (x.shape[0],)
    _close(v, _run(model, x, "jacobian", None, w, "none", algorithm="autograd")[0])


def test_none_on_a_model_outside_the_framework_falls_back_with_one_warning():
    class Cube(nn.Module):
        def forward(self, t):
            return t**3

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Cube(), nn.Linear(4, 2)).to(DT)
    x = torch.randn(5, 3, dtype=DT)
    with pytest.warns(dbpaper.FallbackWarning):
        v = dbpaper.penalty(model, x, P.JacobianFrobenius(), reduction="none")
    assert v.shape == (5,)
    ref = torch.stack([dbpaper.penalty(model, x[n : n + 1], P.JacobianFrobenius(), algorithm="autograd") for n in range(5)])
    _close(v.detach(), ref.detach())


def test_a_weighted_backward_does_not_reuse_a_plain_squared_norm_plan():
    """The Jacobian penalty runs Algorithm 4 with the Gram shortcut (``p = ‖·‖²``); its weighted backward must not."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).to(DT)
    x = torch.randn(64, 64, dtype=DT)
    w = torch.randn(64, dtype=DT)
    assert dbpaper.plan(model, x, P.JacobianFrobenius()).gram  # the shortcut that reads c of p = c‖·‖²
    for _ in range(2):  # the mean call first caches its plan
        model.zero_grad()
        dbpaper.penalty(model, x, P.JacobianFrobenius()).backward()
        model.zero_grad()
        (dbpaper.penalty(model, x, P.JacobianFrobenius(), reduction="none") * w).sum().backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        (dbpaper.penalty(model, x, P.JacobianFrobenius(), reduction="none", algorithm="autograd") * w).sum().backward()
        for g, p in zip(got, model.parameters(), strict=True):
            _close(g, torch.zeros_like(g) if p.grad is None else p.grad)


@pytest.mark.parametrize("bad", ["avg", None, 1, "NONE"])
def test_an_unknown_reduction_is_refused(bad):
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="reduction must be one of"):
        dbpaper.penalty(model, torch.zeros(2, 3), P.JacobianFrobenius(), reduction=bad)
    with pytest.raises(ValueError, match="reduction must be one of"):
        dbpaper.objective(model, torch.zeros(2, 3), P.JacobianFrobenius(), torch.zeros(2, dtype=torch.long), 0.1, reduction=bad)


def test_none_is_differentiable_once_and_checks_versions():
    model, x, _, w = _case("dense", "tanh", False, 0, "jacobian")
    v = dbpaper.penalty(model, x, P.JacobianFrobenius(), reduction="none")
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (v * w).sum().backward()
    v = dbpaper.penalty(model, x, P.JacobianFrobenius(), reduction="none")
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad((v * w).sum(), list(model.parameters()), create_graph=True)
