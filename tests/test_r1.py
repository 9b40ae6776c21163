"""R1 (γ/2 · E‖∇ₓD(x)‖²): a scaled squared norm gets every algorithm and shortcut its mathematics allows, by declared properties."""

import pytest
import torch
from torch import nn

import dbpaper
from dbpaper import penalties as P

from .helpers import applicable_algorithms

F64 = torch.float64


def _critic(seed, act, widths=(12, 9, 7, 1)):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double()


def _stylegan_r1(model, x, gamma):
    """The R1 penalty as StyleGAN2 writes it, by autograd: γ/2 · mean_n ‖∇ₓD(x_n)‖², and its parameter gradients."""
    xin = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xin).sum(), xin, create_graph=True)
    value = gamma / 2 * g.pow(2).sum(1).mean()
    return value.detach(), [t.detach() for t in torch.autograd.grad(value, list(model.parameters()), materialize_grads=True)]


ACTS = {"leaky-relu": lambda: nn.LeakyReLU(0.2), "relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "silu": nn.SiLU}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("act", sorted(ACTS))
def test_every_applicable_algorithm_matches_the_stylegan_formula(act, seed):
    model = _critic(seed, ACTS[act])
    x = torch.randn(6, 12, dtype=F64, generator=torch.Generator().manual_seed(seed))
    gamma = 10.0 * (seed + 1)
    ref_value, ref_grads = _stylegan_r1(model, x, gamma)
    net = dbpaper.Network.from_sequential(model, (12,))
    names = applicable_algorithms(net, P.R1(gamma))
    assert {"optimized", "optimized-shortcuts", "general", "minimal"} <= set(names)  # Algorithm 4 by the declared properties
    for name in [*names, "auto", "autograd"]:
        value = dbpaper.penalty(model, x, P.R1(gamma), algorithm=name)
        grads = torch.autograd.grad(value, list(model.parameters()), materialize_grads=True)
        torch.testing.assert_close(value.detach(), ref_value, rtol=1e-12, atol=0)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-13)


def test_r1_is_half_gamma_times_the_jacobian_penalty_of_a_critic():
    model, x = _critic(0, nn.Tanh), torch.randn(5, 12, dtype=F64)
    r1 = dbpaper.penalty(model, x, P.R1(4.0))
    jac = dbpaper.penalty(model, x, P.JacobianFrobenius())
    torch.testing.assert_close(r1, 2.0 * jac, rtol=1e-14, atol=0)


def test_the_gram_shortcut_is_planned_for_r1_on_a_wide_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 32), nn.LeakyReLU(0.2), nn.Linear(32, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    x = torch.randn(64, 784)
    chosen = dbpaper.plan(model, x, P.R1(10.0))
    assert chosen.settings.get("gram") is True, chosen
    assert "gram=True" in str(chosen)


def test_r1_with_an_index_is_a_single_vector_penalty():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(4, 5, dtype=F64)
    net = dbpaper.Network.from_sequential(model, (5,))
    assert "optimized" not in applicable_algorithms(net, P.R1(2.0, index=1))
    ours = dbpaper.penalty(model, x, P.R1(2.0, index=1))
    node = dbpaper.penalty(model, x, P.OutputNodeGradient(1))
    torch.testing.assert_close(ours, node, rtol=1e-13, atol=0)


def test_misuse_of_r1_raises_clear_errors():
    model = nn.Sequential(nn.Linear(5, 3)).double()
    with pytest.raises(ValueError, match="index=i"):
        dbpaper.penalty(model, torch.randn(2, 5, dtype=F64), P.R1(1.0))
    with pytest.raises(ValueError, match="out of range"):
        dbpaper.penalty(model, torch.randn(2, 5, dtype=F64), P.R1(1.0, index=3))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="gamma"):
            P.R1(bad)
        with pytest.raises(ValueError, match="scale"):
            P.SquaredNorm(bad)


def test_a_scaled_squared_norm_declares_its_scale_and_others_declare_none():
    assert P.SquaredNorm().squared_norm_scale == 1.0 and P.SquaredNorm(2.5).squared_norm_scale == 2.5
    assert P.R1(3.0).squared_norm_scale == 1.5 and P.JacobianFrobenius().squared_norm_scale == 1.0
    for pen in (P.OperatorNorm(1), P.GradientNormPenalty(1.0), P.GeneralPenalty(P.Norm(), v=0)):
        assert pen.squared_norm_scale is None, pen


@pytest.mark.parametrize("gram", [False, True])
@pytest.mark.parametrize("onehot", [False, True])
@pytest.mark.parametrize("chunk_size", [1, None])
def test_algorithm_4_with_every_shortcut_applies_the_scale(gram, onehot, chunk_size):
    from dbpaper.algorithms.jacobian import jacobian_penalty_gradients

    model = _critic(3, nn.Softplus)
    x = torch.randn(7, 12, dtype=F64, generator=torch.Generator().manual_seed(3))
    net = dbpaper.Network.from_sequential(model, (12,))
    ref_value, ref_grads = _stylegan_r1(model, x, 6.0)
    value, grads = jacobian_penalty_gradients(net, net.forward(x), P.R1(6.0), chunk_size=chunk_size, gram=gram, onehot=onehot, scale=0.5)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=0)
    got = [g for layer, gw, gb in zip(net.layers, grads.weights, grads.biases) for g in layer.parameter_gradients(gw, gb)]
    for g, r in zip(got, ref_grads):
        torch.testing.assert_close(g, 0.5 * r, rtol=1e-10, atol=1e-13)
