"""Residual networks (``dbpaper.nn.Residual``), max-pooling and BatchNorm folding against autograd.

Section 3.1 of the paper says its results "naturally extend" beyond the chains of eq. (8). Here every
registered algorithm that applies runs on hundreds of randomly drawn residual networks
(``helpers.random_residual_model``: dense and convolutional, nested blocks, linear shortcuts, sums after
an activation, blocks at the input, BatchNorm in eval mode, max- and average pooling, every activation),
for every penalty and for the objective ``ℓ + λR`` with its input gradient, in float64 against the
autograd oracle (relative error ≤ 1e-10).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import dbpaper
from dbpaper.counting import paper_count
from dbpaper.nn import Residual

from .helpers import (
    CLASSES,
    PENALTIES,
    applicable_algorithms,
    assert_matches,
    assert_same_gradients,
    flat_gradients,
    oracle,
    penalty_targets,
    random_input,
    random_residual_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")

#: how many random residual networks every penalty and algorithm runs on
RESIDUAL_NETWORKS = 240


def _network(seed):
    model, in_shape = random_residual_model(seed)
    x = random_input(in_shape, batch=3, seed=seed)
    return model, x, dbpaper.Network.from_sequential(model, in_shape)


@pytest.mark.parametrize("seed", range(RESIDUAL_NETWORKS))
def test_random_residual_networks_match_autograd(seed):
    """Every penalty, every applicable registered algorithm, float64, against the autograd oracle."""
    model, x, net = _network(seed)
    assert not net.is_chain or all(not isinstance(m, Residual) for m in model.modules())
    for pen_name, (make, _) in PENALTIES.items():
        y = penalty_targets(pen_name, x, seed)
        want = oracle(model, x, make(), y)
        algorithms = applicable_algorithms(net, make())
        assert {"general", "minimal"} <= set(algorithms)
        if pen_name == "jacobian":
            assert {"optimized", "optimized-shortcuts", "optimized-chunked"} <= set(algorithms)
        for alg in algorithms:
            res = dbpaper.double_backprop(net, x, make(), y, algorithm=alg)
            assert_matches((res.value, flat_gradients(net, res.gradients)), want, what=(seed, pen_name, alg))


def _labels(x, seed):
    return torch.randint(0, CLASSES, (x.shape[0],), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", range(0, RESIDUAL_NETWORKS, 6))
@pytest.mark.parametrize("pen_name", list(PENALTIES))
def test_objective_and_input_gradient_on_residual_networks(seed, pen_name):
    """``dbpaper.objective`` (default path) equals the autograd path for every penalty: value, parameter and input
    gradients (the loss on the penalty's own targets, else on labels)."""
    model, x, _ = _network(seed)
    y = penalty_targets(pen_name, x, seed)
    y = _labels(x, seed) if y is None else y
    out = []
    for algorithm in ("auto", "autograd"):
        xx = x.clone().requires_grad_(True)
        value = dbpaper.objective(model, xx, PENALTIES[pen_name][0](), y, lam=0.3, algorithm=algorithm)
        targets = [*model.parameters(), xx]
        out.append((value.detach(), torch.autograd.grad(value, targets, allow_unused=True, materialize_grads=True)))
    assert_matches(out[0], out[1], what=(seed, pen_name))


@pytest.mark.parametrize("seed", range(0, RESIDUAL_NETWORKS, 8))
def test_counts_on_residual_networks_are_the_chain_s_closed_forms(seed):
    """A skip connection costs no operator evaluation: the counts of Section 5 hold with ``L`` the number of layers read."""
    model, x, net = _network(seed)
    L, C = net.depth, CLASSES
    P = dbpaper.penalties
    naive = dbpaper.count_operations(model, x, P.JacobianFrobenius(), algorithm="general")
    alg4 = dbpaper.count_operations(model, x, P.JacobianFrobenius(), algorithm="optimized")
    softmax = isinstance(net.output_map, dbpaper.Softmax)
    reads_input_twice = len(net.consumers[0]) > 1
    k = lambda c: c["apply"] + c["transpose"]  # noqa: E731
    if softmax and not reads_input_twice:
        assert k(naive) == paper_count("jacobian-naive", L, C)
        assert k(alg4) == paper_count("jacobian-optimized", L, C)
    node = dbpaper.count_operations(model, x, P.OutputNodeGradient(0), algorithm="general")
    if softmax:
        assert k(node) == paper_count("general", L)


def test_a_residual_block_computes_its_sum():
    torch.manual_seed(0)
    body = [nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)]
    shortcut = nn.Linear(3, 3, bias=False)
    x = torch.randn(4, 3)
    block = Residual(*body, shortcut=shortcut)
    torch.testing.assert_close(block(x), shortcut(x) + nn.Sequential(*body)(x))
    torch.testing.assert_close(Residual(*body)(x), x + nn.Sequential(*body)(x))
    with pytest.raises(TypeError, match="shortcut"):
        Residual(nn.Linear(3, 3), shortcut=lambda t: t)


def test_reading_wires_the_skip_connections():
    """Identity shortcut: the branch's last layer adds the block's input; a sum after an activation is a layer."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), Residual(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)), nn.ReLU(),
                          Residual(nn.Linear(4, 4), nn.GELU()), nn.Linear(4, 2))  # fmt: skip
    net = dbpaper.Network.from_sequential(model, (3,))
    assert [net.sources[j] for j in range(1, net.depth + 1)] == [0, 1, 2, 3, 4, 5]
    assert [net.adds[j] for j in range(1, net.depth + 1)] == [(), (), (1,), (), (3,), ()]
    assert isinstance(net.layers[4].op, dbpaper.IdentityMap)  # x + GELU(W x): the sum after the activation
    assert not net.is_chain and "+ x_1" in repr(net)


def test_mismatched_shortcut_raises_naming_the_block():
    model = nn.Sequential(nn.Linear(3, 4), Residual(nn.Linear(4, 5)), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"Residual.*shape"):
        dbpaper.Network.from_sequential(model, (3,))


def test_residual_subclass_that_overrides_forward_falls_back():
    class Gated(Residual):
        def forward(self, x):
            return 0.5 * x + self.body(x)

    model = nn.Sequential(nn.Linear(3, 4), Gated(nn.Linear(4, 4)), nn.Linear(4, 2)).double()
    with pytest.raises(dbpaper.UnsupportedModelError, match="overrides forward"):
        dbpaper.Network.from_sequential(model, (3,))
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.warns(dbpaper.FallbackWarning):
        value = dbpaper.penalty(model, x, dbpaper.penalties.JacobianFrobenius())
    assert torch.isfinite(value)


def test_batchnorm_after_a_convolution_is_folded_and_exact():
    """Conv + BatchNorm (eval) is one layer with derived θ, b; the gradients reach the conv and the BatchNorm."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 25, 4)).double()
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    model.eval()
    net = dbpaper.Network.from_sequential(model, (2, 5, 5))
    assert net.depth == 2 and net.layers[0].module_names[:2] == ("0", "1")
    assert len(net.parameters()) == len(list(model.parameters()))
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    pen = dbpaper.penalties.JacobianFrobenius()
    res = dbpaper.double_backprop(net, x, pen, algorithm="minimal")
    assert_matches((res.value, flat_gradients(net, res.gradients)), oracle(model, x, pen))
    assert not any(g.requires_grad for g in flat_gradients(net, res.gradients))  # no graph through the modules' tensors
    with torch.no_grad():
        bn.weight.mul_(2.0)  # a changed γ is read on the next call (derived afresh)
    res = dbpaper.double_backprop(net, x, pen, algorithm="minimal")
    assert_matches((res.value, flat_gradients(net, res.gradients)), oracle(model, x, pen))


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d(2, dilation=2, ceil_mode=True)])
def test_max_pooling_is_a_selection_fixed_by_the_forward_pass(pool):
    """``S_x`` and its transpose satisfy ``<S y, u> = <y, Sᵀ u>``; a network with max-pooling matches autograd."""
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    op = dbpaper.MaxPool2d((2, 7, 7), pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
    value, sel = op.select(x)
    torch.testing.assert_close(value, pool(x))
    y, u = torch.randn_like(x), torch.randn_like(value)
    assert abs(float((sel.apply(sel.unit_parameter(), y) * u).sum() - (y * sel.transpose(sel.unit_parameter(), u)).sum())) < 1e-12
    with pytest.raises(RuntimeError, match="forward pass"):
        op.apply(op.unit_parameter(), x)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), pool, nn.Flatten()).double()
    flat = model(x).shape[1]
    model.append(nn.Linear(flat, 3).double())
    net = dbpaper.Network.from_sequential(model, (2, 7, 7))
    for name in applicable_algorithms(net, dbpaper.penalties.JacobianFrobenius()):
        res = dbpaper.double_backprop(net, x, dbpaper.penalties.JacobianFrobenius(), algorithm=name)
        assert_matches((res.value, flat_gradients(net, res.gradients)), oracle(model, x, dbpaper.penalties.JacobianFrobenius()), what=name)


def test_max_pooling_options_outside_the_framework():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, return_indices=True))
    with pytest.raises(dbpaper.UnsupportedModelError, match="return_indices"):
        dbpaper.Network.from_sequential(model, (1, 6, 6))
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(18, 2))
    with pytest.raises(dbpaper.UnsupportedModelError, match="divide"):
        dbpaper.Network.from_sequential(model, (1, 6, 6))  # 4 x 4 into 3 x 3: windows of two sizes


def test_paper_wing_refuses_residual_networks():
    """The chapters' tools written for the chains of eq. (8) say so instead of answering for another network."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), Residual(nn.Linear(4, 4)), nn.Linear(4, 2)).double()
    net = dbpaper.Network.from_sequential(model, (3,))
    with pytest.raises(ValueError, match="chains"):
        dbpaper.oracles.traced_quantities(net, torch.randn(2, 3, dtype=torch.float64), dbpaper.penalties.JacobianFrobenius())


@pytest.mark.parametrize("seed", range(0, RESIDUAL_NETWORKS, 24))
def test_float32_residual_networks_against_the_float64_oracle(seed):
    """float32 runs of every applicable algorithm stay within a float32 tolerance of the float64 oracle."""
    model, in_shape = random_residual_model(seed, dtype=torch.float32)
    x = random_input(in_shape, batch=3, seed=seed, dtype=torch.float32)
    net = dbpaper.Network.from_sequential(model, in_shape)
    for pen_name in ("jacobian", "cdb-nll", "node"):
        make = PENALTIES[pen_name][0]
        y = penalty_targets(pen_name, x, seed)
        want = oracle(model, x, make(), y)
        for alg in applicable_algorithms(net, make()):
            res = dbpaper.double_backprop(net, x, make(), y, algorithm=alg)
            assert res.value.dtype == torch.float32
            assert_matches((res.value, flat_gradients(net, res.gradients)), want, rtol=2e-4, what=(seed, pen_name, alg))


def test_degenerate_blocks():
    """An empty branch (2x with the identity shortcut), a branch of one activation (outside eq. (8): the fallback)."""
    x = torch.randn(3, 4, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), Residual(), nn.Linear(4, 2)).double()
    net = dbpaper.Network.from_sequential(model, (4,))
    torch.testing.assert_close(net(x), model(x))
    pen = dbpaper.penalties.JacobianFrobenius()
    res = dbpaper.double_backprop(net, x, pen)
    assert_matches((res.value, flat_gradients(net, res.gradients)), oracle(model, x, pen))
    odd = nn.Sequential(nn.Linear(4, 4), Residual(nn.ReLU()), nn.Linear(4, 2)).double()
    with pytest.raises(dbpaper.UnsupportedModelError, match="activation must follow a linear module"):
        dbpaper.Network.from_sequential(odd, (4,))
    with pytest.warns(dbpaper.FallbackWarning):
        assert torch.isfinite(dbpaper.penalty(odd, x, pen))


def test_batchnorm_in_training_mode_inside_a_block_is_read_with_its_warning():
    """The batch function's penalty by the explicit algorithms (the warning is information, no fallback)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Residual(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)),
                          nn.Flatten(), nn.Linear(2 * 16, 3)).double()  # fmt: skip
    model.train()
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dbpaper.FallbackWarning)
        with pytest.warns(dbpaper.BatchMixingWarning):
            value = dbpaper.penalty(model, x, dbpaper.penalties.JacobianFrobenius())
    with pytest.warns(dbpaper.BatchMixingWarning):
        assert_same_gradients(model, x, value, dbpaper.penalty(model, x, dbpaper.penalties.JacobianFrobenius(), algorithm="autograd"), with_x=False)
