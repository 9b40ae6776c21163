"""Algorithm 4 (Appendix C) and its variants against autograd on random networks.

Every coordinate-wise hidden activation (locally linear or smooth, and mixed
within one network), softmax and identity outputs, every variant
(``chunk_size``, ``gram``, ``onehot``) and every registered name, in float64
with relative tolerance 1e-10 (``helpers.RTOL``).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dbpaper
from dbpaper import penalties as P
from dbpaper.algorithms import REGISTRY as ALGORITHMS
from dbpaper.algorithms import jacobian as J
from dbpaper.paper.bench import measure_peak_memory

from .helpers import (
    ARCHITECTURES,
    assert_matches,
    assert_matches_oracle,
    flat_gradients,
    oracle,
    random_input,
    random_model,
    random_network,
)

REGISTERED = ("optimized", "optimized-shortcuts", "optimized-chunked")
# (chunk_size, gram, onehot); explicit True only where the network allows it (dense first/last layers)
VARIANTS = [(1, False, False), (2, "auto", "auto"), (3, False, "auto"), (None, "auto", False), ("auto", "auto", "auto")]
DENSE_VARIANTS = [(1, True, False), (1, False, True), (2, True, True), (None, True, True), (4, True, True)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(net, x, **kw):
    with torch.no_grad():
        value, grads = J.jacobian_penalty_gradients(net, net.forward(x), P.JacobianFrobenius(), **kw)
    return value, flat_gradients(net, grads)


ACTS = ("relu", "leaky-relu", "tanh", "sigmoid", "softplus", "elu")
GRID = list(itertools.product(ARCHITECTURES, ACTS, [True, False]))


def _check_all_variants(model, shape, x, what, names=REGISTERED):
    """Every variant that the network allows and every registered name in ``names`` against autograd (the penalties summed)."""
    net = dbpaper.Network.from_sequential(model, shape)
    want = oracle(model, x, P.JacobianFrobenius())
    dense = isinstance(net.layers[0].op, dbpaper.Dense) and isinstance(net.layers[-1].op, dbpaper.Dense) and net.depth >= 2
    for chunk, gram, onehot in VARIANTS + (DENSE_VARIANTS if dense else []):
        assert_matches(_run(net, x, chunk_size=chunk, gram=gram, onehot=onehot), want, what=(*what, chunk, gram, onehot))
    for name in names:
        res = dbpaper.double_backprop(net, x, P.JacobianFrobenius(), algorithm=name)
        assert res.algorithm == name
        assert_matches((res.value, flat_gradients(net, res.gradients)), want, what=(*what, name))


@pytest.mark.parametrize("arch,act,softmax", GRID, ids=["-".join(map(str, c)) for c in GRID])
def test_float64_against_autograd(arch, act, softmax):
    """Every variant on dense, convolutional, locally connected and pooling networks (every registered
    name runs on these networks in the grid of ``test_algorithms.py``)."""
    seeds = (0, 1) if arch == "dense" else (0,)  # dense networks vary most (depth 1-4, widths, biases)
    for seed in seeds:
        model, shape = random_model(arch, act, softmax, seed=seed, classes=5)
        x = random_input(shape, batch=3, seed=seed)
        _check_all_variants(model, shape, x, (arch, act, softmax, seed), names=())


def _mixed_models():
    """ReLU and tanh (and the other smooth activations) in one network: the source terms of some layers only."""
    nn = torch.nn
    torch.manual_seed(11)
    yield "dense relu-tanh-relu", nn.Sequential(
        nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 4)), (5,)  # fmt: skip
    yield "dense tanh-relu-sigmoid", nn.Sequential(
        nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 5, bias=False), nn.LeakyReLU(0.3), nn.Linear(5, 6), nn.Sigmoid(), nn.Linear(6, 5)), (6,)  # fmt: skip
    yield "dense tanh, identity, elu", nn.Sequential(
        nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Linear(5, 6), nn.ELU(0.5), nn.Linear(6, 3)), (4,)  # fmt: skip
    yield "conv tanh, pool, relu, softplus", nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(3, 4, 2), nn.ReLU(), nn.Flatten(),
        nn.Linear(36, 6), nn.Softplus(beta=1.5), nn.Linear(6, 5)), (1, 8, 8)  # fmt: skip


@pytest.mark.parametrize("softmax", [True, False])
@pytest.mark.parametrize("index", range(4))
def test_mixed_activations_against_autograd(index, softmax):
    label, model, shape = list(_mixed_models())[index]
    if softmax:
        model.append(torch.nn.Softmax(dim=-1))
    model = model.double()
    x = random_input(shape, batch=4, seed=index)
    _check_all_variants(model, shape, x, (label, softmax))


@st.composite
def dense_networks(draw):
    """Random dense networks: depth, widths, biases, any mix of hidden activations, output map."""
    depth = draw(st.integers(1, 4))
    widths = [draw(st.integers(1, 6)) for _ in range(depth)]
    classes = draw(st.integers(1, 6))
    nn = torch.nn
    mods, prev = [], widths[0]
    for k, w in enumerate(widths[1:] + [classes]):
        mods.append(nn.Linear(prev, w, bias=draw(st.booleans())))
        prev = w
        if k < depth - 1:  # a hidden layer
            kind = draw(st.sampled_from(["relu", "leaky", "identity", "tanh", "sigmoid", "softplus", "elu"]))
            if kind == "relu":
                mods.append(nn.ReLU())
            elif kind == "leaky":
                mods.append(nn.LeakyReLU(draw(st.floats(-2.0, 2.0, allow_nan=False))))
            elif kind == "tanh":
                mods.append(nn.Tanh())
            elif kind == "sigmoid":
                mods.append(nn.Sigmoid())
            elif kind == "softplus":
                mods.append(nn.Softplus(beta=draw(st.floats(0.5, 3.0))))
            elif kind == "elu":
                mods.append(nn.ELU(draw(st.floats(0.1, 2.0))))
            # identity: consecutive Linear modules (an identity activation, eq. (8))
    softmax = draw(st.booleans())
    if softmax:
        mods.append(nn.Softmax(dim=-1))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(*mods).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 1.2 / max(1, p.shape[-1]) ** 0.5)
    batch = draw(st.integers(1, 4))
    x = torch.randn((batch, widths[0]), generator=g, dtype=torch.float64)
    options = (
        draw(st.sampled_from([1, 2, 3, None, "auto"])),
        draw(st.sampled_from([False, "auto"] + ([True] if depth >= 1 else []))),
        draw(st.sampled_from([False, "auto"] + ([True] if depth >= 2 else []))),
    )
    return model, x, options


@settings(max_examples=60, deadline=None)
@given(dense_networks())
def test_random_dense_networks_against_autograd(case):
    model, x, (chunk, gram, onehot) = case
    net = dbpaper.Network.from_sequential(model, x.shape[1:])
    assert_matches_oracle(_run(net, x, chunk_size=chunk, gram=gram, onehot=onehot), model, x, P.JacobianFrobenius(), what=(net, chunk, gram, onehot))


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_float32_against_float64_autograd(act):
    model, x, net = random_network("conv2d", act, True, seed=3, classes=5, dtype=torch.float32)
    want = oracle(model, x, P.JacobianFrobenius())
    for name in REGISTERED:
        res = dbpaper.double_backprop(net, x, P.JacobianFrobenius(), algorithm=name)
        assert res.value.dtype == torch.float32
        assert_matches((res.value, flat_gradients(net, res.gradients)), want, rtol=2e-4, what=name)


@pytest.mark.parametrize("act", ["leaky-relu", "tanh", "softplus"])
def test_differentiable_penalty_and_input_gradient(act):
    """``dbpaper.penalty(..., algorithm=...)`` delivers ∇_θ R and ∇_{x_0} R = K_1ᵀ(θ_1, η̂_1) through backward
    (with a smooth activation η̂_1 contains the source term S_1)."""
    model, shape = random_model("dense", act, True, seed=4, classes=4)
    x = random_input(shape, seed=4)
    params = list(model.parameters())
    xa = x.clone().requires_grad_(True)
    out = model(xa)
    r = 0
    for i in range(4):
        v = torch.zeros_like(out)
        v[:, i] = 1
        (xi,) = torch.autograd.grad(out, xa, v, create_graph=True)
        r = r + xi.pow(2).sum() / x.shape[0]
    ref = torch.autograd.grad(r, params + [xa])
    for name in REGISTERED:
        xb = x.clone().requires_grad_(True)
        value = dbpaper.penalty(model, xb, P.JacobianFrobenius(), algorithm=name)
        got = torch.autograd.grad(value, params + [xb])
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_registration_and_auto():
    """The names are registered in this order; ``"auto"`` runs Algorithm 4 (in some variant) for the Jacobian
    penalty whatever the activations, and never for a penalty it does not compute."""
    names = [name for name in ALGORITHMS if name in REGISTERED]
    assert names == list(REGISTERED)
    x = None
    for act in ("relu", "tanh"):
        model, x, net = random_network("dense", act, True, seed=5)
        assert dbpaper.double_backprop(net, x, P.JacobianFrobenius(), algorithm="auto").algorithm in REGISTERED
        assert dbpaper.double_backprop(net, x, P.OutputNodeGradient(0), algorithm="auto").algorithm not in REGISTERED


@pytest.mark.parametrize("act", ACTS + ("identity",))
def test_applies_to_every_coordinate_wise_activation(act):
    if act == "identity":  # consecutive linear modules: an identity activation
        model, shape = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 3)).double(), (3,)
    else:
        model, shape = random_model("dense", act, True, seed=6)
    net = dbpaper.Network.from_sequential(model, shape)
    assert J.why_not(net, P.JacobianFrobenius()) is None and J.applies(net, P.JacobianFrobenius())
    for penalty in (P.OutputNodeGradient(0), P.ClassicalDoubleBackprop()):
        assert "JacobianFrobenius" in J.why_not(net, penalty) and not J.applies(net, penalty)


def test_where_it_does_not_apply():
    tanh, x, net = random_network("dense", "tanh", True, seed=6)
    for name in REGISTERED:
        with pytest.raises(ValueError, match="does not apply"):
            dbpaper.double_backprop(net, x, P.OutputNodeGradient(0), algorithm=name)
    with torch.no_grad():
        with pytest.raises(ValueError, match="JacobianFrobenius"):
            J.jacobian_penalty_gradients(net, net.forward(x), P.ClassicalDoubleBackprop())
    assert "dbpaper.Network" in J.why_not(tanh, P.JacobianFrobenius())


def test_invalid_options():
    model, x, net = random_network("dense", "relu", True, seed=7)
    conv, cshape = random_model("conv2d", "relu", True, seed=7)
    cnet = dbpaper.Network.from_sequential(conv, cshape)
    one_layer = dbpaper.Network.from_sequential(torch.nn.Sequential(torch.nn.Linear(3, 4)).double(), (3,))
    for bad in (0, -1, 1.5, "all", True):
        with pytest.raises(ValueError, match="chunk_size"):
            _run(net, x, chunk_size=bad)
        with pytest.raises(ValueError, match="chunk_size"):
            J.optimized_algorithm(chunk_size=bad)
    with pytest.raises(ValueError, match="gram must be"):
        _run(net, x, gram="yes")
    with pytest.raises(ValueError, match="onehot must be"):
        J.optimized_algorithm(onehot=1)
    with pytest.raises(ValueError, match="dense first layer"):
        _run(cnet, random_input(cshape, seed=7), gram=True)
    with pytest.raises(ValueError, match="L ≥ 2"):
        _run(one_layer, torch.randn(2, 3, dtype=torch.float64), onehot=True)
    with pytest.raises(ValueError, match="batch"):
        J.shortcut_costs(net, 0)


@pytest.mark.parametrize("d1", [128, 257, 300])
def test_blocked_symmetric_products_of_the_gram_trick(d1):
    """A first layer wide enough for G = W_1 W_1ᵀ and A = Σ ζ_1 ζ_1ᵀ to be formed by symmetric blocks (odd
    widths split unevenly), with a smooth first activation: exact against autograd for every chunking."""
    torch.manual_seed(d1)
    act = {128: torch.nn.Sigmoid, 257: torch.nn.ReLU, 300: torch.nn.Tanh}[d1]
    model = torch.nn.Sequential(
        torch.nn.Linear(12, d1), act(), torch.nn.Linear(d1, 7), torch.nn.Tanh(), torch.nn.Linear(7, 5), torch.nn.Softmax(-1),
    ).double()  # fmt: skip
    x = torch.randn(3, 12, dtype=torch.float64)
    net = dbpaper.Network.from_sequential(model, (12,))
    want = oracle(model, x, P.JacobianFrobenius())
    for chunk in (1, 2, None):
        assert_matches(_run(net, x, chunk_size=chunk, gram=True, onehot=chunk == 2), want, what=(d1, chunk))


def test_plan_follows_the_cost_model():
    mlp = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    net = dbpaper.Network.from_sequential(mlp, (784,))
    plan = J.choose_variant(net, P.JacobianFrobenius(), 128, chunk_size="auto", gram="auto", onehot="auto")
    assert plan == J.Variant(chunk_size=J.TARGET_CHUNK_BYTES // (128 * 784 * 4), gram=True, onehot=False)  # d_0 = 784 > d_1: Gram pays
    wide_first = dbpaper.Network.from_sequential(torch.nn.Sequential(torch.nn.Linear(4, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1000)), (4,))
    plan = J.choose_variant(wide_first, P.JacobianFrobenius(), 8, chunk_size=None, gram="auto", onehot="auto")
    assert plan == J.Variant(chunk_size=1000, gram=False, onehot=True)  # d_1 ≫ d_0: no Gram; many classes: one-hot
    costs = J.shortcut_costs(net, 128)
    assert set(costs) == {"gram", "onehot"} and costs["gram"]["with"] < costs["gram"]["without"]


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_variants_agree_with_each_other(act):
    model, x, net = random_network("dense", act, True, seed=8, classes=9, batch=5)
    base = _run(net, x)
    for chunk, gram, onehot in DENSE_VARIANTS + VARIANTS:
        if net.depth < 2 and onehot is True:
            continue
        assert_matches(_run(net, x, chunk_size=chunk, gram=gram, onehot=onehot), base, rtol=1e-12)


def _peak(net, x, **kw):
    def call():
        with torch.no_grad():
            return J.jacobian_penalty_gradients(net, net.forward(x), P.JacobianFrobenius(), **kw)

    return measure_peak_memory(call)


@pytest.mark.parametrize("act", [torch.nn.ReLU, torch.nn.Tanh])
def test_memory_is_constant_in_the_number_of_classes(act):
    """No per-class tensor outlives its class pass: from C = 4 to C = 64 the peak grows only by
    a few tensors of the output layer's size, never by C per-class hidden tensors (with a smooth
    activation the source terms are accumulated, not kept per class)."""
    torch.manual_seed(0)
    n, hidden = 8, 64
    peaks = {}
    for c in (4, 64):
        model = torch.nn.Sequential(
            torch.nn.Linear(32, hidden), act(), torch.nn.Linear(hidden, hidden), act(),
            torch.nn.Linear(hidden, c), torch.nn.Softmax(dim=-1),
        ).double()  # fmt: skip
        net = dbpaper.Network.from_sequential(model, (32,))
        x = torch.randn(n, 32, dtype=torch.float64)
        peaks[c] = {kw: _peak(net, x, chunk_size=kw[0], gram=kw[1], onehot=kw[1]) for kw in ((1, False), (1, "auto"), (None, False))}
    output_layer = 8 * (hidden * 64 + n * 64)  # bytes of W_L and of one (N, C) tensor at C = 64
    per_class_hidden = 8 * n * hidden * 4  # ζ and q of two hidden layers, per class
    for kw in ((1, False), (1, "auto")):
        assert peaks[64][kw] - peaks[4][kw] <= 4 * output_layer, (kw, peaks)
    # the test can see the growth: all classes at once keeps 64 classes' tensors alive
    assert peaks[64][(None, False)] - peaks[4][(None, False)] > 60 * per_class_hidden / 2
