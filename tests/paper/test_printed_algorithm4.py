"""The transcription of Algorithm 4 as printed (errata E11–E15): it stops where the text deletes a variable still
needed, and with every correction it equals autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dbpaper
from dbpaper import penalties as P
from dbpaper.oracles import reference_gradients
from dbpaper.paper.printed import FIXES, algorithm_4


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 4), nn.Softmax(-1)).double()
    x = torch.randn(1, 5, dtype=torch.float64)
    return model, dbpaper.Network.from_sequential(model, (5,)), x


def test_every_correction_gives_autograd(case):
    model, net, x = case
    R_ref, grads_ref = reference_gradients(model, x, P.JacobianFrobenius())
    R, grads = algorithm_4(net, x, FIXES)
    assert abs(R - float(R_ref)) < 1e-12 * float(R_ref)
    for g, r in zip(grads, grads_ref):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("k", range(len(FIXES) - 2))
def test_the_printed_program_uses_deleted_variables(case, k):
    _, net, x = case
    with pytest.raises(KeyError, match="deleted"):
        algorithm_4(net, x, FIXES[:k])


def test_unknown_correction(case):
    _, net, x = case
    with pytest.raises(ValueError, match="unknown"):
        algorithm_4(net, x, ("nonsense",))
