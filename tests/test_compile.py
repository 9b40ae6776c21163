"""torch.compile both ways: a compiled module is looked through (same parameters, explicit algorithms),
and a compiled training step with the default call runs, matches eager, and logs no dynamo warning
from the package (aot_eager: AOT autograd without code generation, which is where a double backward
used to fail)."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

import dbpaper
from dbpaper.penalties import ClassicalDoubleBackprop, JacobianFrobenius


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.Softmax(dim=-1))


def _grads(model, x, pen, y=None):
    params = [p for p in model.parameters()]
    r = dbpaper.penalty(model, x, pen, y)
    return [r.detach()] + list(torch.autograd.grad(r, params))


def test_a_compiled_module_runs_the_explicit_algorithms():
    model, x = _model(), torch.randn(16, 8)
    compiled = torch.compile(model, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", dbpaper.FallbackWarning)
        assert dbpaper.plan(compiled, x, JacobianFrobenius()).algorithm != "autograd"
        got = _grads(compiled, x, JacobianFrobenius())
    for a, b in zip(got, _grads(model, x, JacobianFrobenius())):
        torch.testing.assert_close(a, b)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.mark.parametrize("penalty", [JacobianFrobenius(), ClassicalDoubleBackprop("nll")], ids=["jacobian", "classical"])
def test_a_compiled_training_step(penalty):
    torch._dynamo.reset()
    model = _model()
    params = list(model.parameters())
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    yp = y if penalty.needs_y else None

    def step(x, y):
        ce = nn.functional.nll_loss(torch.log(model(x)), y)
        r = dbpaper.penalty(model, x, penalty, yp)
        return torch.autograd.grad(ce + 0.1 * r, params)

    eager = step(x, y)
    dbpaper._pipeline.clear_cache()  # the reading and planning run inside the compiled step too
    dbpaper.planning._CHOICES.clear()
    collect = _Collect()
    dynamo_log = logging.getLogger("torch._dynamo")  # torch's loggers do not propagate to the root
    dynamo_log.addHandler(collect)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", dbpaper.FallbackWarning)
            compiled = torch.compile(step, backend="aot_eager")
            for _ in range(2):
                got = compiled(x, y)
    finally:
        dynamo_log.removeHandler(collect)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not collect.records, [r.getMessage()[:200] for r in collect.records]


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3), nn.Softmax(dim=-1)
    )


def _resnet():
    """Residual blocks (identity and 1x1-convolution shortcuts), BatchNorm in eval mode, max-pooling."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
        dbpaper.nn.Residual(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1)), nn.ReLU(),
        dbpaper.nn.Residual(nn.Conv2d(2, 3, 3, padding=1), nn.GELU(), shortcut=nn.Conv2d(2, 3, 1)),
        nn.Flatten(), nn.Linear(3 * 4 * 4, 3), nn.Softmax(dim=-1),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("case", ["jacobian", "classical", "objective"])
@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_the_default_call_traces_without_a_graph_break(kind, case, cache, request):
    """torch._dynamo.explain of a step that returns ℓ + λR: one graph, no break (the reading and the
    plan are traced on a cold cache, looked up on a warm one)."""
    model, x = {"mlp": (_model, (16, 8)), "cnn": (_cnn, (4, 1, 8, 8)), "resnet": (_resnet, (4, 1, 8, 8))}[kind]
    model, x = model(), torch.randn(*x)
    y = torch.randint(0, 3, (x.shape[0],))

    def step(x, y):
        if case == "objective":
            return dbpaper.objective(model, x, JacobianFrobenius(), y, 0.1)
        ce = nn.functional.nll_loss(torch.log(model(x)), y)
        pen = dbpaper.penalty(model, x, JacobianFrobenius()) if case == "jacobian" else dbpaper.penalty(model, x, ClassicalDoubleBackprop(), y)
        return ce + 0.1 * pen

    torch._dynamo.reset()
    dbpaper._pipeline.clear_cache()
    dbpaper.planning._CHOICES.clear()
    if kind == "resnet" and cache == "cold":
        # derived parameters (folded BatchNorm) and max-pooling's selection make a network per call, which
        # dynamo cannot rebuild in a cold trace: it breaks the graph, and the step still runs and matches
        # eager (test_a_compiled_training_step_on_a_residual_network). Strict: a fix makes this test fail.
        request.applymarker(pytest.mark.xfail(strict=True, reason="a cold trace with folded BatchNorm or max-pooling breaks the graph"))
    if cache == "warm":
        step(x, y)
    explanation = torch._dynamo.explain(step)(x, y)
    assert explanation.graph_break_count == 0, [str(b.reason)[:300] for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_a_compiled_training_step_on_a_residual_network():
    """The compiled step on a network with residual blocks, BatchNorm (eval) and max-pooling matches eager."""
    torch._dynamo.reset()
    model = _resnet()
    params = list(model.parameters())
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))

    def step(x, y):
        return torch.autograd.grad(dbpaper.objective(model, x, JacobianFrobenius(), y, 0.1), params)

    eager = step(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dbpaper.FallbackWarning)
        got = torch.compile(step, backend="aot_eager")(x, y)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
