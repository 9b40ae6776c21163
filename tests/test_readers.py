"""The layer readers (dbpaper.readers): one registry from which everything that lists modules is derived.

* the README's table, supported_modules() and the fallback's output maps follow the registry;
* every reader's example module is read into a network and computed exactly;
* a reader registered by a user, with a derived θ (weight normalisation, θ = g v/‖v‖), sends the
  algorithms' gradients back to the module's own parameters, with the current values on every call.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import dbpaper
from dbpaper import readers
from dbpaper.activations import CoordinatewiseOutput, IdentityOutput, Softmax
from dbpaper.operators import Dense
from dbpaper.penalties import ClassicalDoubleBackprop, JacobianFrobenius, OutputNodeGradient

from .helpers import unsupported_activation

ROOT = Path(__file__).resolve().parent.parent
RTOL = 1e-10


def test_readme_table_is_written_from_the_readers():
    out = subprocess.run([sys.executable, "tools/readme_modules.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_supported_modules_name_every_reader():
    text = readers.supported_modules()
    for module in readers.READERS:
        assert module.__name__ in text


def _examples(kind):
    return [pytest.param(r, id=m.__name__) for m, r in readers.READERS.items() if r.kind == kind and r.example is not None]


@pytest.mark.parametrize("reader", _examples("activation"))
def test_output_map_of_a_final_activation_is_coordinatewise(reader):
    """A final invertible activation is a coordinate-wise output map; a final GELU or SiLU reads as logits."""
    model = nn.Sequential(nn.Linear(3, 2), reader.example())
    out = readers.output_map_of(model)
    activation = reader.read(reader.example(), ())
    if activation.output_invertible():
        assert isinstance(out, CoordinatewiseOutput) and type(out.activation) is type(activation)
    else:
        assert isinstance(out, IdentityOutput)
        with pytest.warns(dbpaper.FallbackWarning, match="output map"):  # not the last layer's map of eq. (8)
            dbpaper.penalty(model.double(), torch.randn(2, 3, dtype=torch.float64), JacobianFrobenius())


def test_output_map_of_softmax_identity_and_unknown():
    assert isinstance(readers.output_map_of(nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=-1))), Softmax)
    assert isinstance(readers.output_map_of(nn.Sequential(nn.Linear(3, 2))), IdentityOutput)
    assert isinstance(readers.output_map_of(nn.Sequential(nn.Linear(3, 2), nn.GELU())), IdentityOutput)


def _oracle(model, x, penalty, y=None):
    from dbpaper.oracles import autograd_penalty

    terms = autograd_penalty(model, x, penalty, y)
    value = sum(terms[1:], terms[0])
    params = [p for p in model.parameters() if p.requires_grad]
    return value.detach(), torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True)


def _ours(model, x, penalty, y=None):
    value = dbpaper.penalty(model, x, penalty, y, algorithm="general")
    params = [p for p in model.parameters() if p.requires_grad]
    return value.detach(), torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True)


def _assert_equal(ours, ref):
    (v1, g1), (v2, g2) = ours, ref
    assert abs(float(v1 - v2)) <= RTOL * abs(float(v2))
    scale = max(float(g.norm()) for g in g2)
    for a, b in zip(g1, g2):
        assert float((a - b).norm()) <= RTOL * scale


def _model_with(module: nn.Module, shape: tuple[int, ...], classes: int = 3) -> nn.Sequential:
    """``module`` after a linear module and an activation that fit ``shape``, then a dense output layer (float64)."""
    torch.manual_seed(0)
    c = shape[0]
    head = {1: lambda: nn.Linear(c, c), 2: lambda: nn.Conv1d(c, c, 3, padding=1), 3: lambda: nn.Conv2d(c, c, 3, padding=1)}[len(shape)]()
    body = nn.Sequential(head, module) if isinstance(module, _ACTIVATIONS) else nn.Sequential(head, nn.Tanh(), module)
    with torch.no_grad():
        flat = body(torch.zeros(1, *shape)).numel()
    return nn.Sequential(body, nn.Flatten(), nn.Linear(flat, classes), nn.Softmax(dim=-1)).double()


_ACTIVATIONS = tuple(m for m, r in readers.READERS.items() if r.kind == "activation")


def _shape_for(module: nn.Module) -> tuple[int, ...]:
    if isinstance(module, nn.Linear):
        return (module.in_features,)
    if isinstance(module, nn.Conv1d):
        return (module.in_channels, 7)
    if isinstance(module, nn.Conv2d):
        return (module.in_channels, 6, 6)
    if isinstance(module, nn.AvgPool2d | nn.PixelUnshuffle | nn.MaxPool2d | nn.AdaptiveAvgPool2d):
        return (2, 6, 6)
    if isinstance(module, nn.MaxPool1d):
        return (2, 8)
    if isinstance(module, nn.BatchNorm2d):
        return (module.num_features, 6, 6)
    if isinstance(module, nn.BatchNorm1d):
        return (module.num_features,)
    return (4,)


@pytest.mark.parametrize("reader", _examples("activation") + _examples("linear") + _examples("normalisation"))
def test_every_reader_example_is_read_and_exact(reader):
    module = reader.example()
    shape = _shape_for(module)
    model = _model_with(module, shape)
    dbpaper.Network.from_sequential(model, shape)  # read, no fallback
    x = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _assert_equal(_ours(model, x, JacobianFrobenius()), _oracle(model, x, JacobianFrobenius()))


# -- a user's reader with a derived θ --------------------------------------------------------------


class WeightNormLinear(nn.Module):
    """``y = W x + b`` with ``W_i = g_i v_i / ‖v_i‖`` (weight normalisation, rows)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.v = nn.Parameter(torch.randn(d_out, d_in))
        self.g = nn.Parameter(torch.rand(d_out) + 0.5)
        self.b = nn.Parameter(torch.randn(d_out) * 0.1)

    def weight(self) -> torch.Tensor:
        return self.g[:, None] * self.v / self.v.norm(dim=1, keepdim=True)

    def forward(self, x):
        return x @ self.weight().T + self.b


def _read_weight_norm(m: WeightNormLinear, shape):
    if shape != (m.v.shape[1],):
        raise ValueError(f"input of per-example shape {shape} does not match {m.v.shape[1]} features")

    def param_grads(grad_w, grad_b):
        norm = m.v.norm(dim=1, keepdim=True)
        u = m.v / norm
        inner = (grad_w * u).sum(dim=1, keepdim=True)
        grad_g = inner[:, 0]
        grad_v = m.g[:, None] / norm * (grad_w - inner * u)  # the adjoint of v ↦ g v/‖v‖
        return [grad_v, grad_g, grad_b]

    with torch.no_grad():
        weight = m.weight()
    return readers.LinearPart(
        Dense(m.v.shape[1], m.v.shape[0]), weight, m.b, params=(m.v, m.g, m.b), param_grads=param_grads,
        derive=lambda: (m.weight(), m.b),
    )  # fmt: skip


@pytest.fixture
def weight_norm_reader():
    readers.register_reader(WeightNormLinear, "linear", _read_weight_norm, description="a test's reader")
    try:
        yield
    finally:
        del readers.READERS[WeightNormLinear]


@pytest.mark.parametrize("penalty", [JacobianFrobenius(), OutputNodeGradient(1), ClassicalDoubleBackprop("nll")], ids=repr)
def test_a_registered_reader_with_derived_parameters(weight_norm_reader, penalty):
    torch.manual_seed(3)
    model = nn.Sequential(WeightNormLinear(4, 5), nn.Tanh(), WeightNormLinear(5, 3), nn.Softmax(dim=-1)).double()
    net = dbpaper.Network.from_sequential(model, (4,))
    assert net.parameters() == list(model.parameters())  # the module's own tensors, not the derived θ
    g = torch.Generator().manual_seed(4)
    y = torch.randint(0, 3, (6,), generator=g) if penalty.needs_y else None
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for _ in range(3):  # the reading is cached: every call must see the current parameter values
        x = torch.randn(6, 4, dtype=torch.float64, generator=g)
        _assert_equal(_ours(model, x, penalty, y), _oracle(model, x, penalty, y))
        opt.zero_grad()
        dbpaper.penalty(model, x, penalty, y).backward()
        opt.step()


def test_a_derived_part_needs_its_adjoint():
    with pytest.raises(ValueError, match="derive, params and param_grads"):
        readers.LinearPart(Dense(2, 2), torch.zeros(2, 2), None, derive=lambda: (torch.zeros(2, 2), None))


def test_a_subclass_that_overrides_forward_is_not_read():
    class Shifted(nn.ReLU):
        def forward(self, x):
            return super().forward(x - 1)

    with pytest.warns(dbpaper.FallbackWarning, match="overrides forward"):
        dbpaper.penalty(nn.Sequential(nn.Linear(3, 3), Shifted(), nn.Linear(3, 2)), torch.randn(2, 3), JacobianFrobenius())


def test_register_reader_refuses_bad_input():
    with pytest.raises(ValueError, match="kind"):
        readers.register_reader(type(unsupported_activation()), "nonlinear", lambda m, s: None)
    with pytest.raises(TypeError, match="nn.Module"):
        readers.register_reader(int, "skip", lambda m, s: None)


def test_a_reader_that_returns_the_wrong_kind_is_named():
    class Twice(nn.Module):
        def forward(self, x):
            return 2 * x

    readers.register_reader(Twice, "linear", lambda m, shape: act_twice)
    try:
        act_twice = dbpaper.activations.ReLU()  # an activation where a linear part is due
        with pytest.raises(TypeError, match="Twice.*'linear'.*LinearPart.*ReLU"):
            dbpaper.Network.from_sequential(nn.Sequential(nn.Linear(3, 3), Twice(), nn.Linear(3, 2)), (3,))
        readers.READERS[Twice] = readers.Reader(Twice, "linear", lambda m, shape: readers.LinearPart(Dense(5, 3), torch.zeros(3, 5), None))
        with pytest.raises(TypeError, match=r"inputs of shape \(5,\), not \(3,\)"):
            dbpaper.Network.from_sequential(nn.Sequential(nn.Linear(3, 3), Twice(), nn.Linear(3, 2)), (3,))
    finally:
        del readers.READERS[Twice]
