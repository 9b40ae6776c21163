"""dbpaper.penalty inside real training loops: optimizers, torch.compile, first-order backward only."""

from __future__ import annotations

import pytest
import torch

import dbpaper
from dbpaper import penalties as P

from .helpers import unsupported_activation


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def test_penalty_trains_with_an_optimizer_and_matches_create_graph_training():
    """Ten SGD steps on ce + λR with dbpaper.penalty equal ten steps with autograd's create_graph penalty."""
    x, y = _data()
    lam = 0.3
    runs = {}
    for how in ("dbpaper", "autograd"):
        model = _model().double()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(10):
            opt.zero_grad()
            xd = x.double()
            ce = torch.nn.functional.cross_entropy(model(xd), y)
            if how == "dbpaper":
                r = dbpaper.penalty(model, xd, P.JacobianFrobenius())
            else:
                r = sum(dbpaper.oracles.autograd_penalty(model, xd, P.JacobianFrobenius()))
            (ce + lam * r).backward()
            opt.step()
        runs[how] = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(runs["dbpaper"], runs["autograd"], rtol=1e-10, atol=1e-12)


def test_penalty_reduces_the_jacobian_norm():
    x, y = _data()
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = dbpaper.penalty(model, x, P.JacobianFrobenius()).item()
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + 1.0 * dbpaper.penalty(model, x, P.JacobianFrobenius())
        loss.backward()
        opt.step()
    after = dbpaper.penalty(model, x, P.JacobianFrobenius()).item()
    assert after < 0.5 * before


def test_objective_section_4_5_matches_loss_plus_penalty():
    x, y = _data(16)
    model = _model().double()
    xd = x.double()
    pen = P.ClassicalDoubleBackprop("nll")
    obj = dbpaper.objective(model, xd, pen, y, lam=0.5)
    g1 = torch.autograd.grad(obj, list(model.parameters()))
    ce = torch.nn.functional.cross_entropy(model(xd), y)
    ref = ce + 0.5 * dbpaper.penalty(model, xd, pen, y)
    g2 = torch.autograd.grad(ref, list(model.parameters()))
    assert abs(float(obj - ref)) <= 1e-12
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_torch_compile_train_step():
    """A compiled training step with dbpaper.penalty runs and agrees with the eager step."""
    x, y = _data(32)

    def step(model, opt):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + 0.1 * dbpaper.penalty(model, x, P.JacobianFrobenius())
        loss.backward()
        opt.step()
        return loss.detach()

    eager, compiled = _model(1), _model(1)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.05)
    opt_c = torch.optim.SGD(compiled.parameters(), lr=0.05)
    cstep = torch.compile(step, backend="aot_eager")
    for _ in range(3):
        le = step(eager, opt_e)
        lc = cstep(compiled, opt_c)
        torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-6)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compiled_model_with_create_graph_double_backward_is_rejected():
    """What the custom Function buys: AOT-compiled models do not support create_graph double backward."""
    x, _ = _data(8)
    model = torch.compile(_model(2), backend="aot_eager")
    xr = x.clone().requires_grad_(True)
    out = model(xr)
    (gx,) = torch.autograd.grad(out.sum(), xr, create_graph=True)
    with pytest.raises(RuntimeError, match="(?i)double backward|does not currently support"):
        torch.autograd.grad(gx.pow(2).sum(), list(model.parameters()))


def test_unsupported_module_is_named():
    """An explicit algorithm names the module it cannot read; the default falls back to autograd with a warning."""
    unknown = unsupported_activation()
    name = type(unknown).__name__
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), unknown, torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match=rf"{name}.*not supported.*Linear, Conv1d"):
        dbpaper.penalty(model, torch.randn(2, 3), P.JacobianFrobenius(), algorithm="general")
    with pytest.warns(dbpaper.FallbackWarning, match=name):
        dbpaper.penalty(model, torch.randn(2, 3), P.JacobianFrobenius())


def test_bad_inputs_are_reported():
    model = _model()
    with pytest.raises(ValueError, match=r"x has shape \(2, 5\), expected \(N, 6\)|does not match in_features"):
        dbpaper.penalty(model, torch.randn(2, 5), P.JacobianFrobenius())
    with pytest.raises(ValueError, match="dtype"):
        dbpaper.penalty(model, torch.randn(2, 6, dtype=torch.float64), P.JacobianFrobenius())
    with pytest.raises(ValueError, match="needs y"):
        dbpaper.penalty(model, torch.randn(2, 6), P.ClassicalDoubleBackprop("nll"))
    with pytest.raises(ValueError, match="out of range"):
        dbpaper.penalty(model, torch.randn(2, 6), P.OutputNodeGradient(7))
    with pytest.raises(ValueError, match="class indices"):
        dbpaper.penalty(model, torch.randn(2, 6), P.ClassicalDoubleBackprop("nll"), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="unknown algorithm"):
        dbpaper.penalty(model, torch.randn(2, 6), P.JacobianFrobenius(), algorithm="fast")
