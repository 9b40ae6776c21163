"""An autograd-free oracle for the penalty gradients: central differences of R along random directions.

R itself is evaluated by the explicit algorithms (no autograd anywhere), and its
directional derivative by :func:`dbpaper.numdiff.directional_derivative` is
compared with ⟨∇R, d⟩ from Algorithms 1–3.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import dbpaper
from dbpaper import numdiff
from dbpaper import penalties as P

from .helpers import flat_gradients, random_input, random_model, vector

PENALTIES = {
    "cdb-nll": (lambda: P.ClassicalDoubleBackprop("nll"), "nll"),
    "cdb-mse": (lambda: P.ClassicalDoubleBackprop("mse"), "mse"),
    "node": (lambda: P.OutputNodeGradient(0), None),
    "jacobian": (lambda: P.JacobianFrobenius(), None),
}
GRID = list(itertools.product(["dense", "conv2d", "locally-connected"], ["tanh", "softplus", "elu"], [True, False], sorted(PENALTIES)))


@pytest.mark.parametrize("arch,act,softmax,pen", GRID, ids=["-".join(map(str, c)) for c in GRID])
def test_penalty_gradient_against_central_differences(arch, act, softmax, pen):
    model, in_shape = random_model(arch, act, softmax, seed=21)
    x = random_input(in_shape, seed=21)
    make, kind = PENALTIES[pen]
    y = {"nll": torch.tensor([1, 0, 3]), "mse": torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4), None: None}[kind]
    net = dbpaper.Network.from_sequential(model, in_shape)
    params = net.parameters()
    theta0 = parameters_to_vector(params).detach().clone()
    grad = vector(flat_gradients(net, dbpaper.double_backprop(net, x, make(), y).gradients))

    def r_of(theta):
        with torch.no_grad():
            vector_to_parameters(theta, params)
            return dbpaper.double_backprop(net, x, make(), y).value

    g = torch.Generator().manual_seed(3)
    try:
        for _ in range(1):
            d = torch.randn(theta0.shape, generator=g, dtype=torch.float64)
            d = d / d.norm()
            fd = float(numdiff.directional_derivative(r_of, theta0, d, "central", 1e-5))
            exact = float(grad @ d)
            # central differences: truncation O(h²) and rounding O(eps/h), both far below 1e-7 here
            assert abs(fd - exact) <= 1e-7 * (abs(exact) + float(grad.norm()))
    finally:
        with torch.no_grad():
            vector_to_parameters(theta0, params)
