"""General penalties R = mean_n p((dx_L/dx_0)* v): user-supplied p and v, the gradient penalties, Sobolev training.

Every expected value is computed here by plain autograd (``create_graph=True``) on the torch model.
Float64, relative tolerance 1e-10, through ``dbpaper.penalty`` with the default ``"auto"``, with
``"general"`` and through the autograd fallback ``dbpaper.fallback.penalty_by_autograd``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import dbpaper
from dbpaper import penalties as P
from dbpaper.fallback import penalty_by_autograd
from dbpaper.planning import FallbackWarning

from .helpers import (
    ARCHITECTURES,
    assert_same_gradients,
    log_p,
    log_p_grad,
    random_input,
    random_model,
    v_tanh,
    v_tanh_vjp,
)


def xi_of(model, x, v_of_out):
    """ξ_0 = (dx_L/dx_0)* v, with v = v_of_out(x_L) kept in the graph."""
    out = model(x)
    (xi,) = torch.autograd.grad(out, x, grad_outputs=v_of_out(out), create_graph=True)
    return xi


def unit(out, i):
    v = torch.zeros_like(out).reshape(out.shape[0], -1)
    v[:, i] = 1
    return v.reshape(out.shape)


def cases(out_like, y_cls):
    """(penalty, y, oracle(model, x) -> R) for every kind of p and v."""
    n = out_like.shape[0]
    const = torch.linspace(-1, 1, out_like[0].numel(), dtype=torch.float64).reshape(out_like.shape[1:])
    return [
        (P.GradientNormPenalty(index=0), None, lambda m, x: (xi_of(m, x, lambda o: unit(o, 0)).reshape(n, -1).norm(dim=1) - 1).pow(2).mean()),
        (P.GradientNormPenalty(0.2, one_sided=True, index=2), None,
         lambda m, x: torch.relu(xi_of(m, x, lambda o: unit(o, 2)).reshape(n, -1).norm(dim=1) - 0.2).pow(2).mean()),
        (P.GeneralPenalty(log_p, v=1), None, lambda m, x: log_p(xi_of(m, x, lambda o: unit(o, 1))).mean()),
        (P.GeneralPenalty(P.PFunction(log_p, log_p_grad), v=const), None, lambda m, x: log_p(xi_of(m, x, lambda o: const.expand_as(o))).mean()),
        (P.GeneralPenalty(P.SquaredNorm(), v="labels"), y_cls,
         lambda m, x: xi_of(m, x, lambda o: nn.functional.one_hot(y_cls, o.shape[1]).to(o.dtype)).pow(2).sum() / n),
        (P.GeneralPenalty(P.Norm(), v=v_tanh), None, lambda m, x: xi_of(m, x, lambda o: v_tanh(o, None)).reshape(n, -1).norm(dim=1).mean()),
        (P.GeneralPenalty(log_p, v=v_tanh, v_vjp=v_tanh_vjp), None, lambda m, x: log_p(xi_of(m, x, lambda o: v_tanh(o, None))).mean()),
        (P.Sobolev(lambda z: torch.sin(z), index=1), None,
         lambda m, x: (xi_of(m, x, lambda o: unit(o, 1)) - torch.sin(x.detach())).pow(2).sum() / n),
    ]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize(("act", "softmax"), [("relu", True), ("tanh", False), ("softplus", True)])
def test_general_penalties_are_exact(arch, act, softmax):
    model, shape = random_model(arch, act, softmax, seed=9)
    x = random_input(shape, batch=4).requires_grad_(True)
    y_cls = torch.tensor([0, 3, 1, 3])
    with torch.no_grad():
        out = model(x)
    for pen, y, ref_fn in cases(out, y_cls):
        ref = ref_fn(model, x)
        assert dbpaper.plan(model, x.detach(), pen, y).algorithm == "minimal"  # one v: Algorithms 1-3 without unused work
        for algorithm in ("auto", "general", "minimal"):
            assert_same_gradients(model, x, dbpaper.penalty(model, x, pen, y, algorithm=algorithm), ref)
        assert_same_gradients(model, x, penalty_by_autograd(model, x, pen, y), ref)


def test_sobolev_targets_from_y_callable_or_tensor_agree():
    model, shape = random_model("dense", "tanh", False, seed=1, classes=3)
    x = random_input(shape, batch=5).requires_grad_(True)
    t = torch.cos(x.detach())
    ref = (xi_of(model, x, lambda o: unit(o, 2)) - t).pow(2).sum() / 5
    for pen, y in ((P.Sobolev(index=2), t), (P.Sobolev(torch.cos, index=2), None), (P.Sobolev(t, index=2), None)):
        assert pen.needs_y == (y is not None)
        assert_same_gradients(model, x, dbpaper.penalty(model, x, pen, y), ref)
        assert_same_gradients(model, x, penalty_by_autograd(model, x, pen, y), ref)


def test_sobolev_training_objective():
    model, shape = random_model("dense", "softplus", False, seed=2, classes=1)
    x = random_input(shape, batch=6).requires_grad_(True)
    f = lambda z: torch.sin(z).sum(1, keepdim=True)  # noqa: E731
    ours = dbpaper.objective(model, x, P.Sobolev(torch.cos), f(x.detach()), 0.5)
    ref = (model(x) - f(x.detach())).pow(2).sum() / 6 + 0.5 * (xi_of(model, x, lambda o: unit(o, 0)) - torch.cos(x.detach())).pow(2).sum() / 6
    assert_same_gradients(model, x, ours, ref)


def test_models_outside_the_framework_use_the_autograd_fallback():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(x + torch.tanh(self.a(x)))

    torch.manual_seed(0)
    model = Residual().double()
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        out = model(x)
    for pen, y, ref_fn in cases(out, torch.tensor([0, 1, 1, 0, 1])):
        if isinstance(pen, P.GradientNormPenalty) and pen.index >= 2:
            continue
        if isinstance(pen, P.Sobolev):
            pen = P.Sobolev(torch.sin, index=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FallbackWarning)
            ours = dbpaper.penalty(model, x, pen, y)
        assert_same_gradients(model, x, ours, ref_fn(model, x))


# -- kinks: the norm at zero and the one-sided penalty at its target ---------------------------------


def test_norm_subgradient_at_zero_is_torchs():
    xi = torch.zeros(3, 4, dtype=torch.float64)
    xi[1] = torch.tensor([3.0, 0.0, 4.0, 0.0])
    u = xi.clone().requires_grad_(True)
    for p, f in (
        (P.GradientNorm(1.0), lambda w: (torch.linalg.vector_norm(w, dim=1) - 1) ** 2),
        (P.GradientNorm(0.0, one_sided=True), lambda w: torch.relu(torch.linalg.vector_norm(w, dim=1)) ** 2),
        (P.Norm(), lambda w: torch.linalg.vector_norm(w, dim=1)),
    ):
        (g,) = torch.autograd.grad(f(u).sum(), u)
        assert torch.equal(p.grad(xi)[0], torch.zeros(4, dtype=torch.float64))  # subgradient 0 at ξ = 0 ...
        assert torch.allclose(p.grad(xi), g, rtol=1e-15, atol=0)  # ... which is torch autograd's
        assert torch.allclose(p.value(xi), f(xi), rtol=1e-15, atol=0)


def test_one_sided_penalty_at_its_target_has_zero_gradient():
    xi = torch.tensor([[0.6, 0.8], [1.2, 1.6], [0.3, 0.4]], dtype=torch.float64)  # norms 1, 2, 0.5
    p = P.GradientNorm(1.0, one_sided=True)
    assert p.value(xi).tolist() == [0.0, 1.0, 0.0]
    g = p.grad(xi)
    assert torch.equal(g[0], torch.zeros(2, dtype=torch.float64)) and torch.equal(g[2], torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(g[1], 2 * 1.0 * xi[1] / 2.0)


def test_gradient_penalty_where_the_input_gradient_vanishes():
    """ξ_0 = 0 for dead examples of a ReLU network: the explicit algorithms agree with autograd's convention."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.ones(4, 3))
        model[0].bias.fill_(0.0)
    x = torch.tensor([[1.0, 0.5, 0.2], [-1.0, -2.0, -0.5], [0.3, -0.1, 0.4]], dtype=torch.float64, requires_grad=True)
    pen = P.GradientNormPenalty(target=0.5, index=0)
    xi = xi_of(model, x, lambda o: unit(o, 0))
    assert float(xi[1].detach().abs().max()) == 0.0 and float(xi[0].detach().abs().max()) > 0  # example 1 is dead
    ref = (xi.reshape(3, -1).norm(dim=1) - 0.5).pow(2).mean()
    for algorithm in ("auto", "general"):
        assert_same_gradients(model, x, dbpaper.penalty(model, x, pen, algorithm=algorithm), ref)
    assert_same_gradients(model, x, penalty_by_autograd(model, x, pen), ref)


# -- the existing penalties are unchanged and the general form reproduces them ---------------------


def test_general_form_reproduces_the_output_node_gradient():
    model, shape = random_model("conv1d", "elu", True, seed=4)
    x = random_input(shape, batch=3)
    a = dbpaper.penalty(model, x, P.OutputNodeGradient(2))
    b = dbpaper.penalty(model, x, P.GeneralPenalty(P.SquaredNorm(), v=2))
    assert torch.equal(a.detach(), b.detach())


def test_user_p_with_and_without_its_gradient_agree():
    model, shape = random_model("dense", "sigmoid", False, seed=6)
    x = random_input(shape, batch=4).requires_grad_(True)
    a = dbpaper.penalty(model, x, P.GeneralPenalty(log_p, v=0))
    b = dbpaper.penalty(model, x, P.GeneralPenalty(P.PFunction(log_p, log_p_grad), v=0))
    assert_same_gradients(model, x, a, b + 0.0 * sum(p.sum() for p in model.parameters()))


def test_clear_errors():
    model, shape = random_model("dense", "relu", False, seed=0, classes=3)
    x = random_input(shape, batch=2)
    with pytest.raises(ValueError, match="out of range"):
        dbpaper.penalty(model, x, P.GradientNormPenalty(index=3))
    with pytest.raises(ValueError, match="needs y"):
        dbpaper.penalty(model, x, P.GeneralPenalty(P.SquaredNorm(), v="labels"))
    with pytest.raises(ValueError, match="needs y"):
        dbpaper.penalty(model, x, P.Sobolev())
    with pytest.raises(ValueError, match="shaped like x"):
        dbpaper.penalty(model, x, P.Sobolev(), torch.zeros(2, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="one value per example"):
        dbpaper.penalty(model, x, P.GeneralPenalty(lambda u: u, v=0))
    with pytest.raises(ValueError, match="constant v has shape"):
        dbpaper.penalty(model, x, P.GeneralPenalty(P.SquaredNorm(), v=torch.ones(5, dtype=torch.float64)))
    with pytest.raises(ValueError, match="only string"):
        P.GeneralPenalty(P.SquaredNorm(), v="all")
    with pytest.raises(ValueError, match="non-negative"):
        P.GradientNormPenalty(index=-1)
    assert repr(P.GradientNormPenalty(0.5, True, 1)) == "GradientNormPenalty(target=0.5, one_sided=True, index=1)"
