"""Models that are not quite an nn.Sequential of eq. (8), and inputs a training script meets: each runs
(the explicit algorithms or the autograd fallback) or raises a clear error, never a wrong answer."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import dbpaper
from dbpaper.fallback import penalty_by_autograd
from dbpaper.penalties import ClassicalDoubleBackprop, GradientNormPenalty, JacobianFrobenius

from .helpers import assert_matches, gradients_by_backward, unsupported_activation


def _grads(model, params, x, pen, y=None, **kw):
    return gradients_by_backward(params, dbpaper.penalty(model, x, pen, y, **kw))


def _oracle(model, params, x, pen, y=None):
    return gradients_by_backward(params, penalty_by_autograd(model, x, pen, y))


def _same(a, b):
    assert_matches(a, b, rtol=1e-10, atol=1e-12, compare="entries")


def test_linear_on_the_last_dimension_of_sequences_falls_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(5, 7, 4, dtype=torch.float64)  # (N, T, F)
    with pytest.warns(dbpaper.FallbackWarning, match="last dimension"):
        got = _grads(model, list(model.parameters()), x, JacobianFrobenius())
    _same(got, _oracle(model, list(model.parameters()), x, JacobianFrobenius()))
    with pytest.raises(dbpaper.UnsupportedModelError):
        dbpaper.penalty(model, x, JacobianFrobenius(), algorithm="optimized")


def test_a_plain_callable_runs_the_fallback():
    torch.manual_seed(0)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def model(x):
        return torch.tanh(x @ w.T)

    x = torch.randn(6, 4, dtype=torch.float64)
    with pytest.warns(dbpaper.FallbackWarning):
        got = _grads(model, [w], x, JacobianFrobenius())
    _same(got, _oracle(model, [w], x, JacobianFrobenius()))
    with pytest.raises(TypeError, match="callable"):
        dbpaper.penalty(42, x, JacobianFrobenius())


def test_batchnorm_in_training_mode_warns_that_examples_mix():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dbpaper.FallbackWarning)
        with pytest.warns(dbpaper.BatchMixingWarning, match="eval"):
            dbpaper.penalty(model, x, JacobianFrobenius())
        model.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("error", dbpaper.BatchMixingWarning)
            dbpaper.penalty(model, x, JacobianFrobenius())


@pytest.mark.parametrize("kind", ["explicit", "fallback"])
def test_gradient_penalty_on_several_outputs_asks_for_an_index(kind):
    torch.manual_seed(0)
    act = nn.ReLU() if kind == "explicit" else unsupported_activation()
    model = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 3)).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dbpaper.FallbackWarning)
        with pytest.raises(ValueError, match="index"):
            dbpaper.penalty(model, x, GradientNormPenalty(1.0))
        dbpaper.penalty(model, x, GradientNormPenalty(1.0, index=2))  # explicit: fine
    critic = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 1)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dbpaper.FallbackWarning)
        dbpaper.penalty(critic, x, GradientNormPenalty(1.0))  # one output: no index needed


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("penalty", [JacobianFrobenius(), ClassicalDoubleBackprop("nll")], ids=["jacobian", "classical"])
def test_non_finite_inputs_propagate_as_in_autograd(bad, penalty):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    x[3, 1] = bad
    y = torch.randint(0, 3, (8,)) if penalty.needs_y else None
    got = _grads(model, list(model.parameters()), x, penalty, y)
    want = _oracle(model, list(model.parameters()), x, penalty, y)
    assert not all(bool(torch.isfinite(g).all()) for g in want[1]) or not bool(torch.isfinite(want[0]))
    _same(got, want)


@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_nll_after_softmax_is_finite_when_a_probability_underflows(lam):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.Softmax(dim=-1))
    with torch.no_grad():
        model[2].weight.mul_(300.0)  # huge logits: exp underflows for the losing classes (float32)
    x = torch.randn(8, 4)
    y = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(1))
    assert bool((model(x) == 0).any())  # some class probability is exactly 0
    logits = model[:-1](x)
    want = nn.functional.cross_entropy(logits, y) + lam * penalty_by_autograd(model, x, JacobianFrobenius())
    got = dbpaper.objective(model, x, JacobianFrobenius(), y, lam)
    assert bool(torch.isfinite(want))
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)
    got.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_objective_with_a_tiny_lambda_in_half_precision_stays_finite():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.Softmax(dim=-1))
    x = torch.randn(16, 8)
    y = torch.randint(0, 4, (16,))
    half = nn.Sequential(*[m for m in model]).to(torch.float16)
    for p in half.parameters():
        p.grad = None
    r = dbpaper.objective(half, x.half(), JacobianFrobenius(), y, 1e-6)
    r.backward()
    assert bool(torch.isfinite(r)) and all(bool(torch.isfinite(p.grad).all()) for p in half.parameters())
    # and close to the float64 answer at half precision
    ref = nn.Sequential(*[m for m in model]).double()
    ref.load_state_dict({k: v.double() for k, v in half.state_dict().items()})
    for p in ref.parameters():
        p.grad = None
    dbpaper.objective(ref, x.half().double(), JacobianFrobenius(), y, 1e-6).backward()
    for p, q in zip(half.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=2e-2, atol=2e-3)
