"""Coordinate-wise output maps (a final sigmoid, tanh, softplus, ...): Appendix B extended with eq. (28) at j = L.

Every expected value is computed here by plain autograd (``create_graph=True``) on the torch model,
independent of the package's reference module. Float64, relative tolerance 1e-10.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dbpaper
from dbpaper import activations as act
from dbpaper import penalties as P
from dbpaper.algorithms import ConstantSeed, LossGradientSeed
from dbpaper.fallback import penalty_by_autograd
from dbpaper.seeds import FunctionSeed

from .helpers import ARCHITECTURES, assert_same_gradients, random_input, random_model

FINAL = {
    "sigmoid": (nn.Sigmoid, act.Sigmoid()),
    "tanh": (nn.Tanh, act.Tanh()),
    "softplus": (lambda: nn.Softplus(beta=1.5), act.Softplus(beta=1.5)),
    "elu": (lambda: nn.ELU(0.8), act.ELU(0.8)),
    "relu": (nn.ReLU, act.ReLU()),
}
HIDDEN = {"sigmoid": "tanh", "tanh": "softplus", "softplus": "elu", "elu": "sigmoid", "relu": "leaky-relu"}


def model_with_final(arch, final, seed=0, classes=4):
    model, shape = random_model(arch, HIDDEN[final], False, seed=seed, classes=classes)
    model.append(FINAL[final][0]().double())
    return model, shape


# -- an independent oracle -------------------------------------------------------------------------


def _ce_logits(out, y):
    return -torch.log_softmax(out, dim=-1).gather(1, y[:, None]).squeeze(1)


def oracle(model, x, pen, y=None):
    """R by autograd: ξ_0 = (dx_L/dx_0)* v with v in the graph where it depends on x_L, then p."""
    out = model(x)
    n = x.shape[0]
    flat = out.reshape(n, -1)
    if isinstance(pen, P.JacobianFrobenius):
        total = 0
        for i in range(flat.shape[1]):
            (g,) = torch.autograd.grad(flat[:, i].sum(), x, create_graph=True, retain_graph=True)
            total = total + g.pow(2).sum() / n
        return total
    if isinstance(pen, P.OutputNodeGradient):
        (g,) = torch.autograd.grad(flat[:, pen.index].sum(), x, create_graph=True)
        return g.pow(2).sum() / n
    if isinstance(pen, P.ClassicalDoubleBackprop):
        ell = _ce_logits(out, y).sum() if pen.loss == "nll" else (out - y).pow(2).sum()
        (g,) = torch.autograd.grad(ell, x, create_graph=True)
        return g.pow(2).sum() / n
    if isinstance(pen, P.GradientNormPenalty):
        (g,) = torch.autograd.grad(flat[:, pen.index].sum(), x, create_graph=True)
        d = g.reshape(n, -1).norm(dim=1) - pen.target
        return (torch.relu(d) if pen.one_sided else d).pow(2).sum() / n
    if isinstance(pen, P.Sobolev):
        (g,) = torch.autograd.grad(flat[:, pen.index].sum(), x, create_graph=True)
        t = pen.target_gradients(x.detach()) if callable(pen.target_gradients) else y
        return (g - t).pow(2).sum() / n
    raise TypeError(pen)


def _penalties(x, classes, y_cls, y_reg):
    return [
        (P.JacobianFrobenius(), None),
        (P.OutputNodeGradient(1), None),
        (P.ClassicalDoubleBackprop("nll"), y_cls),
        (P.ClassicalDoubleBackprop("mse"), y_reg),
        (P.GradientNormPenalty(target=0.3, index=2), None),
        (P.GradientNormPenalty(target=0.01, one_sided=True, index=0), None),
        (P.Sobolev(lambda z: torch.cos(z), index=3), None),
    ]


# -- the random-network suite ---------------------------------------------------------------------


# every architecture of the suite with two final maps, every final map on two architectures
SUITE = [(arch, final) for k, arch in enumerate(ARCHITECTURES) for final in (list(FINAL)[k % 5], list(FINAL)[(k + 2) % 5])]


@pytest.mark.parametrize(("arch", "final"), SUITE)
def test_every_penalty_is_exact_with_a_coordinatewise_output(arch, final):
    model, shape = model_with_final(arch, final, seed=7)
    net = dbpaper.Network.from_sequential(model, shape)
    assert isinstance(net.output_map, act.CoordinatewiseOutput)
    assert net.output_map.activation == FINAL[final][1]
    x = random_input(shape, batch=4).requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    y_cls = torch.randint(0, 4, (4,), generator=g)
    y_reg = torch.rand(4, 4, generator=g, dtype=torch.float64)
    for pen, y in _penalties(x, 4, y_cls, y_reg):
        ref = oracle(model, x, pen, y)
        for algorithm in ("auto", "general"):
            assert_same_gradients(model, x, dbpaper.penalty(model, x, pen, y, algorithm=algorithm), ref)
        assert_same_gradients(model, x, penalty_by_autograd(model, x, pen, y), ref)


@pytest.mark.parametrize("final", ["sigmoid", "tanh", "softplus"])
def test_operator_norm_with_a_coordinatewise_output(final):
    model, shape = model_with_final("dense", final, seed=2)
    x = random_input(shape, batch=5).requires_grad_(True)
    for it in (1, 3):
        ours = dbpaper.penalty(model, x, P.OperatorNorm(it, torch.Generator().manual_seed(4)))
        ref = penalty_by_autograd(model, x, P.OperatorNorm(it, torch.Generator().manual_seed(4)))
        assert_same_gradients(model, x, ours, ref)


@pytest.mark.parametrize("final", ["sigmoid", "tanh", "softplus", "elu"])
def test_objective_with_a_coordinatewise_output(final):
    model, shape = model_with_final("conv2d", final, seed=4)
    x = random_input(shape, batch=3).requires_grad_(True)
    y = torch.rand(3, 4, dtype=torch.float64)
    ours = dbpaper.objective(model, x, P.JacobianFrobenius(), y, 0.3)
    ref = (model(x) - y).pow(2).sum() / 3 + 0.3 * oracle(model, x, P.JacobianFrobenius())
    assert_same_gradients(model, x, ours, ref)
    ours = dbpaper.objective(model, x, P.ClassicalDoubleBackprop("mse"), y, 0.7)
    ref = (model(x) - y).pow(2).sum() / 3 + 0.7 * oracle(model, x, P.ClassicalDoubleBackprop("mse"), y)
    assert_same_gradients(model, x, ours, ref)


# -- the Jacobian penalty under "auto": Algorithm 4 must not run on these outputs ---------------------


@pytest.mark.parametrize("final", list(FINAL))
def test_jacobian_penalty_auto_is_exact_and_does_not_use_algorithm_4(final):
    from dbpaper.algorithms.jacobian import why_not

    model, shape = model_with_final("dense", final, seed=11, classes=5)
    net = dbpaper.Network.from_sequential(model, shape)
    assert why_not(net, P.JacobianFrobenius()) is not None  # Algorithm 4 assumes softmax or identity outputs
    assert dbpaper.plan(model, random_input(shape, batch=4), P.JacobianFrobenius()).algorithm in ("general", "minimal")
    for algorithm in ("optimized", "optimized-chunked"):
        with pytest.raises(ValueError, match="softmax or identity"):
            dbpaper.penalty(model, random_input(shape, batch=4), P.JacobianFrobenius(), algorithm=algorithm)
    x = random_input(shape, batch=4).requires_grad_(True)
    assert_same_gradients(model, x, dbpaper.penalty(model, x, P.JacobianFrobenius()), oracle(model, x, P.JacobianFrobenius()))


# -- η_L itself against the definition (dζ_L/dz_L)* h_L -----------------------------------------------


@pytest.mark.parametrize("final", list(FINAL))
def test_eta_L_against_autograd(final):
    a = FINAL[final][1]
    m = act.CoordinatewiseOutput(a)
    g = torch.Generator().manual_seed(0)
    z = 2 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    v = torch.randn(6, 5, generator=g, dtype=torch.float64)
    h = torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)
    t = torch.rand(6, 5, generator=g, dtype=torch.float64)
    x = a.f(z)

    def eta_ref(zeta_of_z):
        zz = z.detach().requires_grad_(True)
        (e,) = torch.autograd.grad(zeta_of_z(zz), zz, h)
        return e

    def dg(zz):
        zz2 = zz if zz.requires_grad else zz.requires_grad_(True)
        (d,) = torch.autograd.grad(a.f(zz2).sum(), zz2, create_graph=True)
        return d

    cases = [
        (ConstantSeed(m, x, v), lambda zz: dg(zz) * v),
        (LossGradientSeed(m, x, t, "mse"), lambda zz: dg(zz) * 2 * (a.f(zz) - t)),
        (LossGradientSeed(m, x, y, "nll"), lambda zz: dg(zz) * (torch.softmax(a.f(zz), -1) - torch.nn.functional.one_hot(y, 5))),
        (FunctionSeed(m, x, lambda xl: torch.sin(xl) * xl.sum(-1, keepdim=True)),
         lambda zz: dg(zz) * torch.sin(a.f(zz)) * a.f(zz).sum(-1, keepdim=True)),
    ]
    for seed, zeta_of_z in cases:
        zz = z.detach().requires_grad_(True)
        assert torch.allclose(seed.zeta_L(), zeta_of_z(zz).detach(), rtol=1e-12, atol=1e-14)
        ref = eta_ref(zeta_of_z)
        eta = seed.eta_L(h)
        eta = torch.zeros_like(z) if eta is None else eta
        assert float((eta - ref).norm()) <= 1e-12 * max(float(ref.norm()), 1e-30) + 1e-15


def test_derivatives_from_the_output_match_those_from_the_input():
    from .helpers import ACTIVATIONS

    z = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    for name, a in ACTIVATIONS.items():
        if not a.output_invertible():
            continue
        x = a.f(z)
        assert torch.allclose(a.df_from_output(x), a.df(z), rtol=1e-9, atol=1e-12), name
        assert torch.allclose(a.d2f_from_output(x), a.d2f(z), rtol=1e-9, atol=1e-12), name


def test_final_maps_that_cannot_be_output_maps_are_refused():
    with pytest.raises(ValueError, match="cannot be an output map"):
        dbpaper.Network.from_sequential(nn.Sequential(nn.Linear(3, 2), nn.LeakyReLU(-0.5)).double(), (3,))
    net = dbpaper.Network.from_sequential(nn.Sequential(nn.Linear(3, 2), nn.Sigmoid(), nn.Flatten()).double(), (3,))
    assert isinstance(net.output_map, act.CoordinatewiseOutput)
    assert repr(net.output_map) == "CoordinatewiseOutput(Sigmoid())"
