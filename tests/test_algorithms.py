"""Algorithms 1–3 (and Appendix B) against autograd on randomly generated networks."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dbpaper
from dbpaper import penalties as P
from dbpaper.oracles import reference_gradients

from .helpers import ARCHITECTURES, TORCH_ACT_FACTORIES, random_input, random_model

PENALTIES = {
    "cdb-nll": lambda: P.ClassicalDoubleBackprop("nll"),
    "cdb-mse": lambda: P.ClassicalDoubleBackprop("mse"),
    "node": lambda: P.OutputNodeGradient(1),
    "jacobian": lambda: P.JacobianFrobenius(),
    "opnorm": lambda: P.OperatorNorm(2, torch.Generator().manual_seed(7)),
}
CLASSES = 4


def _targets(pen_name, x, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if pen_name == "cdb-nll":
        return torch.randint(0, CLASSES, (x.shape[0],), generator=g)
    if pen_name == "cdb-mse":
        return torch.randn((x.shape[0], CLASSES), generator=g, dtype=dtype)
    return None


def _flat_grads(net, grads):
    out = []
    for layer, gw, gb in zip(net.layers, grads.weights, grads.biases):
        out += [g for t, g in ((layer.weight, gw), (layer.bias, gb)) if t is not None]
    return out


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300)) if b.norm() > 0 else float(a.norm())


def _check(arch, act, softmax, pen_name, seed=0, dtype=torch.float64, rtol=1e-10):
    model, in_shape = random_model(arch, act, softmax, seed=seed, classes=CLASSES, dtype=dtype)
    x = random_input(in_shape, seed=seed, dtype=dtype)
    y = _targets(pen_name, x, dtype, seed)
    net = dbpaper.Network.from_sequential(model, in_shape)
    res = dbpaper.double_backprop(net, x, PENALTIES[pen_name](), y)
    # oracle in float64 regardless of the dtype under test
    model64 = random_model(arch, act, softmax, seed=seed, classes=CLASSES, dtype=torch.float64)[0]
    value, ref = reference_gradients(model64, x.double(), PENALTIES[pen_name](), y if y is None or not y.is_floating_point() else y.double())
    assert abs(float(res.value) - float(value)) <= rtol * abs(float(value)) + 1e-300
    mine = _flat_grads(net, res.gradients)
    assert len(mine) == len(ref)
    scale = max(float(r.norm()) for r in ref)
    for a, b in zip(mine, ref):
        # relative to the largest gradient block: a block that is (almost) zero is compared absolutely
        assert float((a.double() - b).norm()) <= rtol * max(scale, 1e-300), (arch, act, softmax, pen_name)


GRID = list(itertools.product(ARCHITECTURES, sorted(TORCH_ACT_FACTORIES), [True, False], sorted(PENALTIES)))


@pytest.mark.parametrize("arch,act,softmax,pen", GRID, ids=["-".join(map(str, c)) for c in GRID])
def test_float64_against_autograd(arch, act, softmax, pen):
    _check(arch, act, softmax, pen)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("pen", sorted(PENALTIES))
def test_float32_against_float64_autograd(arch, pen):
    """float32 runs agree with the float64 oracle within a float32 tolerance."""
    _check(arch, "tanh", True, pen, dtype=torch.float32, rtol=2e-4)


@settings(max_examples=40, deadline=None)
@given(
    arch=st.sampled_from(ARCHITECTURES),
    act=st.sampled_from(sorted(TORCH_ACT_FACTORIES)),
    softmax=st.booleans(),
    pen=st.sampled_from(sorted(PENALTIES)),
    seed=st.integers(0, 10_000),
)
def test_random_networks_hypothesis(arch, act, softmax, pen, seed):
    _check(arch, act, softmax, pen, seed=seed)


def test_per_class_and_summed_references_agree_with_algorithm():
    model, in_shape = random_model("dense", "elu", True, seed=3, classes=CLASSES)
    x = random_input(in_shape, seed=3)
    net = dbpaper.Network.from_sequential(model, in_shape)
    res = dbpaper.double_backprop(net, x, P.JacobianFrobenius())
    for mode in ("summed", "per_class", "func"):
        value, ref = reference_gradients(model, x, P.JacobianFrobenius(), mode=mode)
        assert abs(float(value - res.value)) <= 1e-12 * float(value)
        for a, b in zip(_flat_grads(net, res.gradients), ref):
            assert _rel(a, b) <= 1e-10


def test_loss_gradients_section_4_5():
    """with_loss returns the ordinary loss gradient, reused from the backward pass for classical double backprop."""
    for pen in (P.ClassicalDoubleBackprop("nll"), P.JacobianFrobenius()):
        model, in_shape = random_model("dense", "tanh", True, seed=5, classes=CLASSES)
        x = random_input(in_shape, seed=5)
        y = torch.tensor([0, 3, 1])
        net = dbpaper.Network.from_sequential(model, in_shape)
        res = dbpaper.double_backprop(net, x, pen, y, with_loss=True)
        out = model(x)
        ref_loss = torch.nn.functional.nll_loss(torch.log(out), y)
        ref = torch.autograd.grad(ref_loss, net.parameters())
        assert abs(float(res.loss - ref_loss)) <= 1e-12
        for a, b in zip(_flat_grads(net, res.loss_gradients), ref):
            assert _rel(a, b) <= 1e-10


def test_input_gradient_of_penalty():
    model, in_shape = random_model("conv2d", "softplus", True, seed=2, classes=CLASSES)
    x = random_input(in_shape, seed=2).requires_grad_(True)
    r = dbpaper.penalty(model, x, P.OutputNodeGradient(2))
    (gx,) = torch.autograd.grad(r, x)
    x2 = x.detach().requires_grad_(True)
    out = model(x2)
    v = torch.zeros_like(out)
    v[:, 2] = 1
    (xi,) = torch.autograd.grad(out, x2, v, create_graph=True)
    (ref,) = torch.autograd.grad(torch.sum(xi * xi) / x2.shape[0], x2)
    assert _rel(gx, ref) <= 1e-10


def test_identity_output_node_penalty_has_zero_bias_gradient_for_relu():
    """Section 5.3: identity output + locally linear activations ⇒ η_j = 0, ∇_b R = 0."""
    model, in_shape = random_model("dense", "relu", False, seed=4, classes=CLASSES)
    x = random_input(in_shape, seed=4)
    net = dbpaper.Network.from_sequential(model, in_shape)
    res = dbpaper.double_backprop(net, x, P.OutputNodeGradient(0))
    assert res.gradients.eta_1 is None
    assert all(g is None or torch.count_nonzero(g) == 0 for g in res.gradients.biases)


def test_algorithms_run_without_autograd():
    """The algorithm path builds no autograd graph (it runs under no_grad and calls only K, Kᵀ, K□)."""
    model, in_shape = random_model("dense", "tanh", True, seed=1, classes=CLASSES)
    x = random_input(in_shape, seed=1)
    net = dbpaper.Network.from_sequential(model, in_shape)
    res = dbpaper.double_backprop(net, x, P.JacobianFrobenius())
    assert not res.value.requires_grad
    assert all(not g.requires_grad for g in _flat_grads(net, res.gradients))


def test_gradcheck_custom_function_against_finite_differences():
    """An autograd-free check: torch.autograd.gradcheck compares our backward with finite differences of R."""
    model, in_shape = random_model("dense", "tanh", True, seed=6, classes=3)
    x = random_input(in_shape, batch=2, seed=6)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return dbpaper.penalty(self.model, x, P.JacobianFrobenius())

    wrap = Wrap()

    def fn(*ps):
        return torch.func.functional_call(wrap, {f"model.{n}": p for n, p in zip(names, ps)}, (x,))

    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradgradcheck_reference_double_backward():
    """The oracle's double backward itself passes torch's gradgradcheck on a small float64 network."""
    model, in_shape = random_model("dense", "sigmoid", True, seed=8, classes=3)
    x = random_input(in_shape, batch=2, seed=8).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda t: model(t), (x,), eps=1e-6, atol=1e-6)
