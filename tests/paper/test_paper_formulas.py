"""Every printed formula of Sections 3–4 and Appendix B, checked numerically (errata included)."""

from __future__ import annotations

import itertools

import pytest
import torch

import dbpaper
from dbpaper import penalties as P
from dbpaper.paper import printed
from dbpaper.paper.checks import section_4_checks
from dbpaper.seeds import softmax_jacobian_apply

from ..helpers import ARCHITECTURES, TORCH_ACT_FACTORIES, random_input, random_model

SINGLE = {
    "cdb-nll": (lambda: P.ClassicalDoubleBackprop("nll"), "nll"),
    "cdb-mse": (lambda: P.ClassicalDoubleBackprop("mse"), "mse"),
    "node": (lambda: P.OutputNodeGradient(2), None),
    "opnorm": (lambda: P.OperatorNorm(1, torch.Generator().manual_seed(3)), None),
}
GRID = list(itertools.product(ARCHITECTURES, ["relu", "tanh", "softplus"], [True, False], sorted(SINGLE)))


def _y(kind, x):
    if kind == "nll":
        return torch.arange(x.shape[0]) % 4
    if kind == "mse":
        return torch.linspace(-1, 1, x.shape[0] * 4, dtype=x.dtype).reshape(x.shape[0], 4)
    return None


@pytest.mark.parametrize("arch,act,softmax,pen", GRID, ids=["-".join(map(str, c)) for c in GRID])
def test_section_4_rules_equal_their_definitions(arch, act, softmax, pen):
    model, in_shape = random_model(arch, act, softmax, seed=11)
    x = random_input(in_shape, seed=11)
    factory, kind = SINGLE[pen]
    rows = section_4_checks(dbpaper.Network.from_sequential(model, in_shape), x, factory(), _y(kind, x))
    for row in rows:
        if "printed" in row.equation:
            assert row.error > 1e-3, row  # erratum E5: the printed η_L of Appendix B.1 is wrong
        else:
            assert row.error <= 1e-10, row


def _random_simplex(c, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(c, generator=g, dtype=torch.float64), -1)


def test_eq_41_42_softmax_zeta():
    x = _random_simplex(5, 0)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(5, generator=g, dtype=torch.float64)
    jac = torch.diag(x) - torch.outer(x, x)  # B.1: dx_L/dz_L, symmetric
    z = torch.log(x).requires_grad_(True)
    auto = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, -1), z)
    torch.testing.assert_close(auto, jac)
    torch.testing.assert_close(x * v - torch.dot(x, v) * x, jac @ v)  # (41)
    for i in range(5):
        e = torch.zeros(5, dtype=torch.float64)
        e[i] = 1
        torch.testing.assert_close(jac @ e, x[i] * (e - x))  # (42)


def test_appendix_B1_printed_jacobian_is_transposed():
    """Erratum E5: dζ_L/dx_L = diag(v) − ⟨x,v⟩I − x vᵀ; the paper prints − v xᵀ."""
    x = _random_simplex(4, 2)
    v = torch.linspace(-1, 2, 4, dtype=torch.float64)
    auto = torch.autograd.functional.jacobian(lambda t: t * v - torch.dot(t, v) * t, x)
    corrected = torch.diag(v) - torch.dot(x, v) * torch.eye(4, dtype=torch.float64) - torch.outer(x, v)
    torch.testing.assert_close(auto, corrected)
    assert torch.linalg.norm(printed.dzeta_dx_softmax_B1(x, v) - auto) > 1e-2


def test_appendix_B1_eta_corrected_vs_printed():
    x = _random_simplex(6, 3)[None]
    g = torch.Generator().manual_seed(4)
    v, h = torch.randn(2, 1, 6, generator=g, dtype=torch.float64)
    z = torch.log(x).clone().requires_grad_(True)
    xs = torch.softmax(z, -1)
    zeta = xs * v - torch.sum(xs * v) * xs
    (eta_auto,) = torch.autograd.grad(zeta, z, h)
    seed = dbpaper.algorithms.ConstantSeed(dbpaper.Softmax(), x, v)
    torch.testing.assert_close(seed.eta_L(h), eta_auto)
    assert torch.linalg.norm(printed.eta_L_softmax_B1(x, v, h) - eta_auto) > 1e-2 * torch.linalg.norm(eta_auto)


def test_appendix_B2_eq_43_44_and_printed_v():
    """(43) ζ_L = x_L − y and (44) η_L = x⊙h − x⟨x,h⟩ hold; v = −y ⊘ x_L (division), not the printed −y ⊙ x_L."""
    z = torch.tensor([0.3, -1.2, 0.8, 0.1], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    x = torch.softmax(z, -1)
    xl = x.detach().requires_grad_(True)
    (v,) = torch.autograd.grad(-(y * torch.log(xl)).sum(), xl)
    torch.testing.assert_close(v, -y / x.detach())
    assert torch.linalg.norm(printed.v_nll_appendix_B(x.detach(), y) - v) > 0.1
    (zeta,) = torch.autograd.grad(-(y * torch.log(x)).sum(), z, create_graph=True)
    torch.testing.assert_close(zeta, x - y)  # (43)
    h = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    (eta,) = torch.autograd.grad(zeta, z, h)
    xd = x.detach()
    torch.testing.assert_close(eta, xd * h - xd * torch.dot(xd, h))  # (44)


def test_eq_12_squared_error_v():
    xl = torch.tensor([0.2, -0.4, 1.5], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    (v,) = torch.autograd.grad(((xl - y) ** 2).sum(), xl)
    torch.testing.assert_close(v, 2 * (xl.detach() - y))


def test_eq_13_power_iteration_reaches_the_operator_norm():
    """Eq. (13): sup over unit v of ‖Jᵀ v‖ is the spectral norm; power iterations approach it from below."""
    model, in_shape = random_model("dense", "tanh", False, seed=12)
    x = random_input(in_shape, batch=1, seed=12)
    jac = torch.autograd.functional.jacobian(lambda t: model(t), x).reshape(4, -1)
    sigma = float(torch.linalg.matrix_norm(jac, 2))
    assert abs(sigma - float(torch.linalg.matrix_norm(jac.T, 2))) <= 1e-12 * sigma  # primal and adjoint norms coincide
    net = dbpaper.Network.from_sequential(model, in_shape)
    vals = [float(dbpaper.double_backprop(net, x, P.OperatorNorm(k, torch.Generator().manual_seed(0))).value) for k in (1, 2, 5, 40)]
    assert all(v <= sigma * (1 + 1e-12) for v in vals)
    assert vals[-1] >= sigma * (1 - 1e-8)
    assert vals[2] >= vals[0]


def test_lemma_3_1_self_adjointness_of_G_prime():
    """Corollary 3.1.1 applied to G'(z) = M(g'(z), ·): the Jacobian of every activation is symmetric."""
    z = torch.linspace(-2, 2, 7, dtype=torch.float64)
    for act in TORCH_ACT_FACTORIES.values():
        jac = torch.autograd.functional.jacobian(act(), z)
        torch.testing.assert_close(jac, jac.T)


def test_eq_32_33_standard_backprop_argument_order():
    """Erratum E3: ∇_θ ℓ = K□(x_{j−1}, ζ_j); the printed order K□(ζ_j, x_{j−1}) is not even defined for a non-square layer."""
    op = dbpaper.Dense(3, 2)
    x, zeta = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError):
        op.weight_adjoint(zeta, x)
    sq = dbpaper.Dense(3, 3)
    zeta3 = torch.randn(4, 3, dtype=torch.float64)
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad((sq.apply(w, x) * zeta3).sum(), w)
    torch.testing.assert_close(sq.weight_adjoint(x, zeta3), auto)
    assert torch.linalg.norm(sq.weight_adjoint(zeta3, x) - auto) > 1e-3  # the printed order gives the transpose


def test_softmax_jacobian_apply_matches_matrix():
    x = _random_simplex(5, 9)[None]
    u = torch.randn(1, 5, dtype=torch.float64)
    torch.testing.assert_close(softmax_jacobian_apply(x, u)[0], (torch.diag(x[0]) - torch.outer(x[0], x[0])) @ u[0])
