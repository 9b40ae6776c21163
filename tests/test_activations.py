"""g', g'' of every activation: against autograd, and by Taylor tests (remainders shrink like h², h³)."""

from __future__ import annotations

import pytest
import torch

import dbpaper as dbp

from .helpers import ACTIVATIONS, TORCH_ACTIVATIONS

NAMES = sorted(ACTIVATIONS)


def _points(act, dtype=torch.float64):
    """Random points away from the activation's declared kinks (:attr:`dbpaper.Activation.kinks`), for the Taylor test."""
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(200, generator=g, dtype=dtype)
    for k in act.kinks:
        z = z[(z - k).abs() > 2e-2]
    return z


@pytest.mark.parametrize("name", NAMES)
def test_f_matches_torch_module(name):
    z = torch.linspace(-30, 30, 1001, dtype=torch.float64)
    torch.testing.assert_close(ACTIVATIONS[name].f(z), TORCH_ACTIVATIONS[name](z), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_autograd_everywhere_including_kinks(name):
    act, mod = ACTIVATIONS[name], TORCH_ACTIVATIONS[name]
    z = torch.cat([torch.linspace(-30, 30, 1001, dtype=torch.float64), torch.tensor([0.0, *act.kinks], dtype=torch.float64)])
    z = z.requires_grad_(True)
    (d1,) = torch.autograd.grad(mod(z).sum(), z, create_graph=True)
    torch.testing.assert_close(act.df(z.detach()), d1.detach(), rtol=1e-13, atol=1e-13)
    if d1.requires_grad:
        (d2,) = torch.autograd.grad(d1.sum(), z)
    else:
        d2 = torch.zeros_like(z)
    torch.testing.assert_close(act.d2f(z.detach()), d2, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("order", [1, 2])
def test_taylor(name, order):
    """|g(z+h) - g(z) - h g'(z)| = O(h²) and |g'(z+h) - g'(z) - h g''(z)| = O(h²)."""
    act = ACTIVATIONS[name]
    f, df = (act.f, act.df) if order == 1 else (act.df, act.d2f)
    z = _points(act)
    rems = []
    for h in (1e-2, 5e-3, 2.5e-3):
        rems.append(float(torch.max(torch.abs(f(z + h) - f(z) - h * df(z)))))
    if rems[0] < 1e-14:  # exactly linear there
        return
    assert rems[1] <= rems[0] / 4 * 1.2 + 1e-15
    assert rems[2] <= rems[1] / 4 * 1.2 + 1e-15


@pytest.mark.parametrize("name", NAMES)
def test_locally_linear_flag_means_zero_second_derivative(name):
    act = ACTIVATIONS[name]
    z = _points(act)
    assert act.locally_linear == bool(torch.all(act.d2f(z) == 0))


def test_softmax_jvp_is_the_symmetric_jacobian():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, dtype=torch.float64, generator=g)
    x = dbp.Softmax().f(z)
    jac = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, -1), z)
    torch.testing.assert_close(jac, torch.diag(x) - torch.outer(x, x))
    u = torch.randn(5, dtype=torch.float64, generator=g)
    torch.testing.assert_close(dbp.Softmax().jvp(x, u), jac @ u)
    torch.testing.assert_close(dbp.IdentityOutput().jvp(x, u), u)
