"""Numerics no worse than autograd's: the default's error against a float64 truth stays within 10x of
autograd's error in the same precision, on random networks and on ill-conditioned first layers
(where the Gram shortcut of Algorithm 4, which squares the condition number, must not be taken)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dbpaper
from dbpaper.algorithms import jacobian as J
from dbpaper.penalties import ClassicalDoubleBackprop, JacobianFrobenius

from .helpers import gradients_by_backward, vector


def _mlp(d0=64, widths=(32, 32), classes=10, seed=0, cond=None, act=nn.ReLU):
    g = torch.Generator().manual_seed(seed)
    mods, d = [], d0
    for w in widths:
        mods += [nn.Linear(d, w), act()]
        d = w
    mods += [nn.Linear(d, classes), nn.Softmax(dim=-1)]
    model = nn.Sequential(*mods).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / p.shape[-1] ** 0.5)
        if cond is not None:  # first layer W_1 = U diag(s) Vᵀ with singular values from 1 down to 1/cond
            w = model[0].weight
            u, _ = torch.linalg.qr(torch.randn(w.shape[0], w.shape[0], generator=g, dtype=torch.float64))
            v, _ = torch.linalg.qr(torch.randn(w.shape[1], w.shape[0], generator=g, dtype=torch.float64))
            s = torch.logspace(0, -torch.log10(torch.tensor(float(cond))).item(), w.shape[0], dtype=torch.float64)
            w.copy_(u @ torch.diag(s) @ v.T)
    return model


def _value_and_grads(model, x, pen=None, y=None, algorithm="auto"):
    """``R`` and its parameter gradient as one float64 vector."""
    r, g = gradients_by_backward(list(model.parameters()), dbpaper.penalty(model, x, pen or JacobianFrobenius(), y, algorithm=algorithm))
    return r.double(), vector(g)


def _grads(model, x, pen, y=None, algorithm="auto"):
    return _value_and_grads(model, x, pen, y, algorithm)[1]


def _error(g, truth):
    return float(torch.linalg.vector_norm(g - truth) / torch.linalg.vector_norm(truth))


@pytest.mark.parametrize(
    "dtype,cond",
    [(torch.float32, None), (torch.float32, 1e2), (torch.float32, 1e4), (torch.bfloat16, None), (torch.bfloat16, 1e2)],
    ids=["f32-random", "f32-cond1e2", "f32-cond1e4", "bf16-random", "bf16-cond1e2"],
)
@pytest.mark.parametrize("penalty", [JacobianFrobenius(), ClassicalDoubleBackprop("nll")], ids=["jacobian", "classical"])
def test_default_error_within_10x_of_autograd(dtype, cond, penalty):
    model64 = _mlp(d0=256, widths=(64, 64), cond=cond)  # d_0 > d_1: the cost model wants the Gram shortcut
    x64 = torch.randn(16, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(2)) if penalty.needs_y else None
    truth = _grads(model64, x64, penalty, y, algorithm="autograd")
    low = _mlp(d0=256, widths=(64, 64), cond=cond).to(dtype)
    x = x64.to(dtype)
    err_default = _error(_grads(low, x, penalty, y), truth)
    err_autograd = _error(_grads(low, x, penalty, y, algorithm="autograd"), truth)
    assert err_default <= 10 * err_autograd, (err_default, err_autograd)


def test_gram_shortcut_is_refused_for_an_ill_conditioned_first_layer():
    G_good = torch.eye(8) * 3.0
    assert J.gram_is_stable(G_good)
    w = torch.diag(torch.logspace(0, -4, 8))  # cond(W_1) = 1e4: cond(G) = 1e8
    assert not J.gram_is_stable(w @ w.T)
    assert not J.gram_is_stable(G_good.to(torch.bfloat16))  # bfloat16: never
    wide = torch.randn(8, 4)  # d_1 > d_0: G singular
    assert not J.gram_is_stable(wide @ wide.T)


def _adversarial(cond, dtype):
    """W_1 with singular values 1 and 1/cond, and an output layer that reads only the small ones: the
    Jacobian lives where W_1 is smallest, so ⟨ζ, W_1 W_1ᵀ ζ⟩ loses eps·cond² and ‖W_1ᵀ ζ‖² eps·cond."""
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Linear(256, 64), nn.Identity(), nn.Linear(64, 10)).double()
    with torch.no_grad():
        u, _ = torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(256, 64, generator=g, dtype=torch.float64))
        s = torch.ones(64, dtype=torch.float64)
        s[32:] = 1 / cond
        m[0].weight.copy_(u @ torch.diag(s) @ v.T)
        m[2].weight.copy_(torch.randn(10, 32, generator=g, dtype=torch.float64) @ u[:, 32:].T)
    return m.to(dtype)


@pytest.mark.parametrize("dtype,cond", [(torch.float32, 1e2), (torch.float32, 1e4), (torch.bfloat16, 1e2)], ids=["f32-1e2", "f32-1e4", "bf16-1e2"])
def test_ill_conditioned_first_layer_aligned_with_the_jacobian(dtype, cond):
    x64 = torch.randn(16, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r_true, g_true = _value_and_grads(_adversarial(cond, torch.float64), x64, algorithm="autograd")
    model, x = _adversarial(cond, dtype), x64.to(dtype)
    assert dbpaper.plan(model, x, JacobianFrobenius()).gram  # planned, but refused at run time
    errors = {}
    for algorithm in ("auto", "autograd"):
        r, g = _value_and_grads(model, x, algorithm=algorithm)
        errors[algorithm] = (abs(float(r - r_true)) / abs(float(r_true)), _error(g, g_true))
    assert errors["auto"][0] <= 10 * errors["autograd"][0], errors
    assert errors["auto"][1] <= 10 * errors["autograd"][1], errors
