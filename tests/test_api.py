"""The drop-in API: the default algorithm, any model, no silent wrong answers.

Every expected value here is computed by plain autograd code written in this
file (``create_graph=True``), independent of the package's own reference module.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import dbpaper
from dbpaper import penalties as P
from dbpaper.planning import FallbackWarning, estimate

from .helpers import ARCHITECTURES, assert_same_gradients, random_input, random_model, unsupported_activation

# -- an independent autograd oracle --------------------------------------------------------------


def _jacobian_terms(model, x, classes=None):
    """Σ_i mean_n ‖∇_x out_i‖² with create_graph (per-example inputs: rows of the batch are independent)."""
    out = model(x)
    flat = out.reshape(out.shape[0], -1)
    idx = range(flat.shape[1]) if classes is None else classes
    total = 0
    for i in idx:
        (g,) = torch.autograd.grad(flat[:, i].sum(), x, create_graph=True, retain_graph=True)
        total = total + g.pow(2).sum() / x.shape[0]
    return total, out


def oracle(model, x, pen, y=None, lam=None, loss=None, softmax_out=False):
    """``R`` (or ``ℓ + λR``) as a differentiable autograd tensor; ``x`` must require grad."""
    if isinstance(pen, P.JacobianFrobenius):
        r, out = _jacobian_terms(model, x)
    elif isinstance(pen, P.OutputNodeGradient):
        r, out = _jacobian_terms(model, x, [pen.index])
    elif isinstance(pen, P.ClassicalDoubleBackprop):
        out = model(x)
        ell = _loss(out, y, pen.loss, softmax_out) * x.shape[0]
        (g,) = torch.autograd.grad(ell, x, create_graph=True)
        r = g.pow(2).sum() / x.shape[0]
    else:
        raise TypeError(pen)
    if lam is None:
        return r
    return _loss(out, y, loss, softmax_out) + lam * r


def _loss(out, y, kind, softmax_out):
    if kind == "nll":
        logp = torch.log(out) if softmax_out else torch.log_softmax(out, dim=-1)
        return -logp.gather(1, y[:, None]).mean()
    return (out - y).pow(2).sum() / out.shape[0]


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _mlp(act=nn.ReLU, softmax=True, widths=(6, 7, 5, 4), seed=0):
    torch.manual_seed(seed)
    mods = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        mods += [nn.Linear(a, b), act()]
    mods.append(nn.Linear(widths[-2], widths[-1]))
    if softmax:
        mods.append(nn.Softmax(dim=-1))
    return nn.Sequential(*mods).double()


def _x(n=5, d=6, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_(grad)


# -- 1. the default is the fastest exact path ---------------------------------------------------


def test_default_is_auto_everywhere():
    import inspect

    for fn in (dbpaper.penalty, dbpaper.objective, dbpaper.double_backprop, dbpaper.count_operations):
        assert inspect.signature(fn).parameters["algorithm"].default == "auto", fn.__name__


def test_auto_picks_algorithm_4_for_the_jacobian_penalty_and_records_it():
    model = _mlp()
    x = _x()
    plan = dbpaper.plan(model, x, P.JacobianFrobenius())
    assert plan.algorithm == "optimized-chunked"
    text = str(plan)
    for word in ("optimized-chunked", "chunk size", "gram=", "autograd (summed)"):
        assert word in text
    net = dbpaper.Network.from_sequential(model, (6,))
    assert dbpaper.double_backprop(net, x, P.JacobianFrobenius()).algorithm == "optimized-chunked"
    assert dbpaper.double_backprop(net, x, P.OutputNodeGradient(1)).algorithm == "minimal"


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_auto_never_predicts_slower_than_general(arch, act):
    model, shape = random_model(arch, act, True, seed=3)
    x = random_input(shape, batch=4)
    net = dbpaper.Network.from_sequential(model, shape)
    for pen in (P.JacobianFrobenius(), P.OutputNodeGradient(0), P.OperatorNorm(2)):
        plan = dbpaper.plan(model, x, pen)
        assert estimate(net, pen, 4, plan.algorithm).seconds <= estimate(net, pen, 4, "general").seconds


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("softmax", [True, False])
def test_default_call_equals_autograd(arch, softmax):
    model, shape = random_model(arch, "relu", softmax, seed=5)
    x = random_input(shape, batch=3).requires_grad_(True)
    for pen in (P.JacobianFrobenius(), P.OutputNodeGradient(2)):
        assert_same_gradients(model, x, dbpaper.penalty(model, x, pen), oracle(model, x, pen), with_x=True)


# -- 2. any model works -------------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        return x + torch.tanh(self.lin(x))


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return 2.0 * super().forward(x)


class MySequential(nn.Sequential):
    def forward(self, x):
        return super().forward(x) * 0.5


def _outside_models():
    torch.manual_seed(1)
    hooked = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    hooked[1].register_forward_hook(lambda m, i, o: o * 3.0)
    pre = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    pre[2].register_forward_pre_hook(lambda m, i: (i[0] + 1.0,))
    conv = nn.Sequential(nn.Unflatten(1, (1, 6)), nn.Conv1d(1, 2, 3), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(4, 3))
    return {
        "residual": (nn.Sequential(nn.Linear(6, 5), Residual(5), nn.Linear(5, 3)), "Residual"),
        "maxpool": (conv, "Unflatten"),
        "unsupported-activation": (nn.Sequential(nn.Linear(6, 5), unsupported_activation(), nn.Linear(5, 3)), type(unsupported_activation()).__name__),
        "custom-module": (Residual(6), "Residual"),
        "forward-hook": (hooked, "forward hook"),
        "pre-hook": (pre, "forward pre-hook"),
        "overridden-linear": (nn.Sequential(ScaledLinear(6, 5), nn.ReLU(), nn.Linear(5, 3)), "ScaledLinear"),
        "overridden-sequential": (MySequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), "MySequential"),
        "dropout": (nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.0), nn.Linear(5, 3)), "Dropout"),
    }


@pytest.mark.parametrize("name", list(_outside_models()))
def test_models_outside_the_framework_run_by_autograd_with_one_warning(name):
    model, culprit = _outside_models()[name]
    model = model.double()
    x = _x(grad=True)
    for pen in (P.JacobianFrobenius(), P.OutputNodeGradient(1)):
        with pytest.warns(FallbackWarning, match=culprit) if pen.__class__ is P.JacobianFrobenius else warnings.catch_warnings():
            if pen.__class__ is not P.JacobianFrobenius:
                warnings.simplefilter("error", FallbackWarning)  # one warning per model: the second call is silent
            r = dbpaper.penalty(model, x, pen)
        assert_same_gradients(model, x, r, oracle(model, x, pen), with_x=True)
    with pytest.raises(ValueError, match=culprit):
        dbpaper.penalty(model, x, P.JacobianFrobenius(), algorithm="general")
    with pytest.raises(ValueError, match=culprit):
        dbpaper.plan(model, x, P.JacobianFrobenius(), algorithm="optimized")
    assert dbpaper.plan(model, x, P.JacobianFrobenius()).algorithm == "autograd"


def test_fallback_objective_and_classical_penalty():
    model, _ = _outside_models()["residual"]
    model = model.double()
    x = _x(grad=True)
    y = torch.tensor([0, 2, 1, 1, 0])
    with pytest.warns(FallbackWarning):
        r = dbpaper.objective(model, x, P.ClassicalDoubleBackprop("nll"), y, 0.7)
    assert_same_gradients(model, x, r, oracle(model, x, P.ClassicalDoubleBackprop("nll"), y, lam=0.7, loss="nll"), with_x=True)


def test_explicit_autograd_is_differentiable_twice():
    model = _mlp(nn.Tanh)
    x = _x()
    r = dbpaper.penalty(model, x, P.JacobianFrobenius(), algorithm="autograd")
    g = torch.autograd.grad(r, _params(model), create_graph=True)
    hv = torch.autograd.grad(sum((t * t).sum() for t in g), _params(model))  # a second derivative exists
    assert all(torch.isfinite(h).all() for h in hv)


def test_reused_instances_are_read_at_every_position():
    torch.manual_seed(2)
    relu = nn.Tanh()
    shared = nn.Linear(5, 5)
    model = nn.Sequential(nn.Linear(6, 5), relu, shared, relu, shared, relu, nn.Linear(5, 3), nn.Softmax(-1)).double()
    net = dbpaper.Network.from_sequential(model, (6,))
    assert net.depth == 4
    x = _x(grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        for pen in (P.JacobianFrobenius(), P.OutputNodeGradient(0)):
            assert_same_gradients(model, x, dbpaper.penalty(model, x, pen), oracle(model, x, pen), with_x=True)


def test_global_observer_hooks_do_not_change_how_a_model_is_read():
    """Tools such as FlopCounterMode install global module hooks; the explicit algorithms still run."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _mlp()
    x = _x()
    with warnings.catch_warnings(), FlopCounterMode(display=False) as counter:
        warnings.simplefilter("error", FallbackWarning)
        dbpaper.penalty(model, x, P.JacobianFrobenius())
    assert counter.get_total_flops() > 0


# -- 3. no silent wrong answers -----------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.25, 1.0, 3.0])
@pytest.mark.parametrize("softmax", [True, False])
@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh])
def test_objective_gradients_in_x_and_parameters_equal_autograd(lam, softmax, act):
    model = _mlp(act, softmax)
    x = _x(grad=True)
    y = torch.tensor([0, 3, 1, 2, 3])
    for pen in (P.JacobianFrobenius(), P.ClassicalDoubleBackprop("nll"), P.OutputNodeGradient(2)):
        ours = dbpaper.objective(model, x, pen, y, lam)
        ref = oracle(model, x, pen, y, lam=lam, loss="nll", softmax_out=softmax)
        assert_same_gradients(model, x, ours, ref, with_x=True)
        x.grad = None
        dbpaper.objective(model, x, pen, y, lam).backward()  # through .grad as a user would
        gx = x.grad.clone()
        x.grad = None
        (gref,) = torch.autograd.grad(oracle(model, x, pen, y, lam=lam, loss="nll", softmax_out=softmax), x)
        torch.testing.assert_close(gx, gref, rtol=1e-10, atol=1e-13)
        for p in model.parameters():
            p.grad = None


def test_objective_with_mse_targets():
    model = _mlp(nn.Tanh, softmax=False)
    x = _x(grad=True)
    t = torch.randn(5, 4, dtype=torch.float64)
    for pen in (P.JacobianFrobenius(), P.ClassicalDoubleBackprop("mse")):
        assert_same_gradients(model, x, dbpaper.objective(model, x, pen, t, 0.4), oracle(model, x, pen, t, 0.4, "mse"), with_x=True)


def test_objective_loss_is_named_or_derived_by_one_rule():
    model = _mlp(softmax=False)
    x = _x()
    labels = torch.tensor([0, 3, 1, 2, 3])
    ce = torch.nn.functional.cross_entropy(model(x), labels)
    r = dbpaper.penalty(model, x, P.JacobianFrobenius())
    torch.testing.assert_close(dbpaper.objective(model, x, P.JacobianFrobenius(), labels, 0.5), ce + 0.5 * r)
    torch.testing.assert_close(dbpaper.objective(model, x, P.JacobianFrobenius(), labels, 0.5, loss="nll"), ce + 0.5 * r)
    assert dbpaper.api.loss_for(labels) == "nll"
    assert dbpaper.api.loss_for(labels.float()) == "mse"
    with pytest.raises(ValueError, match="loss must be one of"):
        dbpaper.objective(model, x, P.JacobianFrobenius(), labels, 0.5, loss="hinge")
    with pytest.raises(ValueError, match="mse loss needs float targets"):
        dbpaper.objective(model, x, P.JacobianFrobenius(), labels, 0.5, loss="mse")
    with pytest.raises(ValueError, match="needs y"):
        dbpaper.objective(model, x, P.JacobianFrobenius(), None, 0.5)


def test_second_order_use_raises():
    model = _mlp()
    x = _x()
    y = torch.tensor([0, 3, 1, 2, 3])
    ce = torch.nn.functional.nll_loss(torch.log(model(x)), y)
    total = ce + dbpaper.penalty(model, x, P.JacobianFrobenius())
    with pytest.raises(RuntimeError, match="differentiable once"):
        g = torch.autograd.grad(total, _params(model), create_graph=True)  # the first step of a Hessian-vector product
        torch.autograd.grad(sum((t * t).sum() for t in g), _params(model))


def test_in_place_parameter_change_before_backward_raises():
    model = _mlp()
    x = _x()
    r = dbpaper.penalty(model, x, P.JacobianFrobenius())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        r.backward()


def test_misuse_raises_clear_errors():
    model = _mlp()
    x = _x()
    with pytest.raises(ValueError, match="empty batch"):
        dbpaper.penalty(model, x[:0], P.JacobianFrobenius())
    with pytest.raises(ValueError, match="does not use y"):
        dbpaper.penalty(model, x, P.JacobianFrobenius(), torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        dbpaper.penalty(model, x, P.ClassicalDoubleBackprop(), [0, 1, 2, 3, 0])
    with pytest.raises(ValueError, match="bool"):
        P.OutputNodeGradient(True)
    with pytest.raises(ValueError, match="batch of 5"):
        dbpaper.penalty(model, x, P.ClassicalDoubleBackprop(), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="Penalty"):
        dbpaper.penalty(model, x, "jacobian")
    with pytest.raises(ValueError, match="unknown algorithm"):
        dbpaper.penalty(model, x, P.JacobianFrobenius(), algorithm="fastest")
    with pytest.raises(ValueError, match="does not apply"):
        dbpaper.penalty(model, x, P.OutputNodeGradient(0), algorithm="optimized")
    assert P.OutputNodeGradient(np.int64(2)).index == 2
    assert P.OutputNodeGradient(np.uint8(1)).index == 1
    r1 = dbpaper.penalty(model, x, P.OutputNodeGradient(np.int32(2)))
    r2 = dbpaper.penalty(model, x, P.OutputNodeGradient(2))
    # the same penalty (to rounding: a loaded machine may run the products on other thread partitions)
    torch.testing.assert_close(r1, r2, rtol=1e-12, atol=0.0)


# -- 5. CUDA readiness: no tensor is created without an explicit device ---------------------------


def test_no_device_leaks_under_a_meta_default_device():
    """Every algorithm with CPU inputs while tensors created without a device would land on ``meta``."""
    model = _mlp(nn.Tanh)
    relu = _mlp(nn.ReLU, softmax=False)
    x = _x(grad=True)
    y = torch.tensor([0, 3, 1, 2, 3])
    cases = []
    for m in (model, relu):
        for alg in ("general", "auto"):
            for pen in (P.JacobianFrobenius(), P.OutputNodeGradient(1), P.ClassicalDoubleBackprop(), P.OperatorNorm(2, torch.Generator().manual_seed(0))):
                cases.append((m, alg, pen))
        for alg in ("optimized", "optimized-shortcuts", "optimized-chunked"):
            if alg == "optimized" or m is relu:
                cases.append((m, alg, P.JacobianFrobenius()))
    expected = []
    for m, alg, pen in cases:
        if isinstance(pen, P.OperatorNorm):
            pen.generator.manual_seed(0)
        yy = y if pen.needs_y else None
        expected.append((float(dbpaper.penalty(m, x, pen, yy, algorithm=alg)), float(dbpaper.objective(m, x, pen, y, 0.3, algorithm=alg))))
    torch.set_default_device("meta")
    try:
        for (m, alg, pen), (e1, e2) in zip(cases, expected):
            if isinstance(pen, P.OperatorNorm):
                pen.generator.manual_seed(0)
            yy = y if pen.needs_y else None
            r = dbpaper.penalty(m, x, pen, yy, algorithm=alg)
            assert r.device.type == "cpu" and abs(float(r) - e1) <= 1e-12 * abs(e1) + 1e-15, (alg, pen)
            o = dbpaper.objective(m, x, pen, y, 0.3, algorithm=alg)
            assert abs(float(o) - e2) <= 1e-12 * abs(e2) + 1e-15, (alg, pen)
            (o + r).backward()
            net = dbpaper.Network.from_sequential(m, (6,))
            dbpaper.count_operations(net, x.detach(), pen, y if pen.needs_y else None)
    finally:
        torch.set_default_device("cpu")


def test_readme_model_runs_algorithm_4_chunked_with_the_gram_shortcut():
    """What the README says its default call runs."""
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    plan = dbpaper.plan(model, torch.zeros(128, 784), P.JacobianFrobenius())
    assert (plan.algorithm, plan.gram) == ("optimized-chunked", True)
    assert plan.predicted_flops < plan.autograd_flops
