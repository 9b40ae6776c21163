"""Penalties and losses as objects: one loss rule everywhere, binding never mutates, nothing asks a penalty's class."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import dbpaper
from dbpaper import losses
from dbpaper import penalties as P

ROOT = Path(__file__).resolve().parent.parent


def _logits_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def test_one_loss_rule_for_objective_and_count_operations():
    """Integer labels on a logits model: NLL for objective, double_backprop(with_loss) and count_operations alike."""
    model, x = _logits_model(), torch.randn(6, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert losses.loss_for(labels) == "nll" and losses.loss_for(labels.double()) == "mse"
    counts = dbpaper.count_operations(model, x, P.OutputNodeGradient(1), labels, with_loss=True)
    assert counts["apply"] + counts["transpose"] > 0
    net = dbpaper.Network.from_sequential(model, (4,))
    res = dbpaper.double_backprop(net, x, P.OutputNodeGradient(1), labels, with_loss=True)
    ce = nn.functional.cross_entropy(model(x), labels)
    assert abs(float(res.loss - ce)) <= 1e-12
    value = dbpaper.objective(model, x, P.OutputNodeGradient(1), labels, 0.0)
    assert abs(float(value.detach() - ce)) <= 1e-12


def test_loss_for_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="loss must be one of"):
        losses.loss_for(torch.zeros(2), "hinge")
    with pytest.raises(TypeError, match="dtype"):
        losses.loss_for(torch.zeros(2, dtype=torch.bool))


def test_binding_a_penalty_to_a_batch_returns_a_copy():
    x = torch.randn(5, 4, dtype=torch.float64)
    targets = torch.randn(5, 4, dtype=torch.float64)
    pen = P.Sobolev(targets)
    before = dict(vars(pen))
    bound = pen.bind(x, None)
    assert bound is not pen and isinstance(bound.p, P.SquaredDistance) and isinstance(pen.p, P.SquaredNorm)
    dbpaper.penalty(_logits_model(), x, pen)
    assert vars(pen).keys() == before.keys() and all(vars(pen)[k] is before[k] for k in before)
    plain = P.JacobianFrobenius()
    assert plain.bind(x, None) is plain


def test_a_sobolev_penalty_matches_autograd_with_its_targets():
    model, x = _logits_model(), torch.randn(5, 4, dtype=torch.float64)
    t = torch.randn(5, 4, dtype=torch.float64)
    ours = dbpaper.penalty(model, x, P.Sobolev(t, index=2), algorithm="general")
    ref = dbpaper.penalty(model, x, P.Sobolev(t, index=2), algorithm="autograd")
    assert abs(float(ours - ref)) <= 1e-12 * abs(float(ref))
    (xin,) = [x.clone().requires_grad_(True)]
    out = model(xin)
    (g,) = torch.autograd.grad(out[:, 2].sum(), xin)
    assert abs(float(ref) - float(((g - t) ** 2).sum() / 5)) <= 1e-12 * abs(float(ref))


_LIBRARY = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "dbpaper").rglob("*.py") if "paper" not in f.relative_to(ROOT / "dbpaper").parts[:1]
                  and f.name != "penalties.py")  # fmt: skip


@pytest.mark.parametrize("path", _LIBRARY)
def test_no_library_module_asks_a_penalty_class(path):
    """Every module of the library but the penalties' own reads a penalty's (and its ``p``'s) declared properties, never its class."""
    tree = ast.parse((ROOT / path).read_text())
    kinds = (P.Penalty, P.SquaredNorm, P.Norm, P.GradientNorm, P.SquaredDistance, P.PFunction)
    classes = {n for n in P.__all__ if isinstance(getattr(P, n), type) and issubclass(getattr(P, n), kinds)} - {"Penalty"}  # the base: a type check
    asked = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass", "type")
        and any(isinstance(n, ast.Name | ast.Attribute) and (getattr(n, "id", None) or getattr(n, "attr", None)) in classes
                for a in node.args for n in ast.walk(a))
    ]  # fmt: skip
    assert not asked, f"{path} asks a penalty's class: {asked}"


@pytest.mark.parametrize("penalty", [P.JacobianFrobenius(), P.OutputNodeGradient(0), P.OperatorNorm(3), P.ClassicalDoubleBackprop()], ids=repr)
def test_every_penalty_declares_what_the_planner_reads(penalty):
    assert isinstance(penalty.constant_v, bool) and isinstance(penalty.sums_unit_outputs, bool)
    assert isinstance(penalty.extra_passes, int) and penalty.extra_passes >= 0
    assert (penalty.extra_passes == 2) == isinstance(penalty, P.OperatorNorm)
