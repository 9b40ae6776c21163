"""The counts of Section 5 side by side: the paper's, the minimal ones reached here, and autograd's.

For every scenario of Sections 5.1–5.4 (:data:`dbpaper.counting.MINIMAL`)
:func:`scenario_table` measures, on one dense network whose layers all have
the same width ``d`` (so that every evaluation of ``K``, ``Kᵀ`` or ``K□``
costs the same ``N d²`` multiply-adds):

* the paper's count ``#K + #Kᵀ`` (algorithm ``"general"``, the paper's path)
  and its ``#K□``;
* the minimal count reached by the default path (the case named in
  :data:`~dbpaper.counting.MINIMAL`, algorithm ``"auto"``'s choice unstacked);
* what autograd does, with the ``C`` penalties summed before one backward:
  its FLOPs (``torch.utils.flop_counter``) divided by ``2 N d²`` give its total
  number of operator evaluations, ``#K + #Kᵀ + #K□`` (autograd does not say
  which is which, so the comparison is of totals).

Every number is measured; the closed forms are printed beside them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..api import count_operations
from ..counting import CASES, MINIMAL, _check_lc, _get_case, paper_count, weight_adjoint_count
from ..penalties import ClassicalDoubleBackprop, JacobianFrobenius, OutputNodeGradient

__all__ = ["autograd_evaluations", "count_table", "measure_case", "scenario_table"]

_ACT = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _square_mlp(L: int, d: int, activation: str, softmax: bool, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for _ in range(L - 1):
        mods += [nn.Linear(d, d), _ACT[activation]()]
    mods.append(nn.Linear(d, d))
    if softmax:
        mods.append(nn.Softmax(dim=-1))
    return nn.Sequential(*mods).double()


def autograd_evaluations(case: str, L: int, d: int = 8, batch: int = 4) -> float:
    """Operator evaluations (``#K + #Kᵀ + #K□``) of autograd for a case of :data:`dbpaper.counting.CASES`.

    The network has ``L`` dense ``d x d`` layers and ``C = d`` outputs; the
    penalties are summed before one ``create_graph`` backward, the loss (for
    cases ``with_loss``) added to them. FLOPs / ``(2 N d²)``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from ..fallback import penalty_from_output
    from ..losses import loss_value
    from ..network import output_map_of

    c = CASES[case]
    model = _square_mlp(L, d, c.activation, c.softmax)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, d, (batch,), generator=g) if c.softmax else torch.randn(batch, d, generator=g, dtype=torch.float64)
    pen = {"node": OutputNodeGradient(0), "jacobian": JacobianFrobenius(), "classical": ClassicalDoubleBackprop("nll"), None: None}[c.penalty]
    params = list(model.parameters())
    with FlopCounterMode(display=False) as counter:
        xx = x.clone().requires_grad_(True)
        xin = xx.view_as(xx)
        out = model(xin)
        value = out.new_zeros(())
        if pen is not None:
            value = value + penalty_from_output(model, xin, out, pen, y if pen.needs_y else None)
        if c.with_loss:
            value = value + loss_value(output_map_of(model), out, y, "nll" if c.softmax else "mse")
        torch.autograd.grad(value, params, allow_unused=True)
    return counter.get_total_flops() / (2 * batch * d * d)


def scenario_table(L: int = 4, C: int = 8) -> list[dict[str, Any]]:
    """One row per scenario of Section 5: paper's count, minimal count, ``K□`` counts and autograd's total.

    ``C`` is the number of outputs (the width of the square network used for
    autograd's FLOPs; the measured counts do not depend on the width).
    """

    rows = []
    for paper, minimal in MINIMAL.items():
        p, m = CASES[paper], CASES[minimal]
        mp, mm = measure_case(paper, L, C), measure_case(minimal, L, C)
        rows.append(
            {
                "scenario": p.description,
                "printed in": p.source or "—",
                "paper formula": p.formula,
                "paper": mp["apply"] + mp["transpose"],
                "paper closed": paper_count(paper, L, C),
                "minimal formula": m.formula,
                "minimal": mm["apply"] + mm["transpose"],
                "minimal closed": paper_count(minimal, L, C),
                "K□ paper": mp["weight_adjoint"],
                "K□ minimal": mm["weight_adjoint"],
                "K□ minimal closed": weight_adjoint_count(minimal, L, C),
                "total minimal": mm["apply"] + mm["transpose"] + mm["weight_adjoint"],
                "autograd total": autograd_evaluations(minimal, L, d=C),
            }
        )
    return rows


_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _mlp(L: int, C: int, activation: str, softmax: bool, width: int, in_features: int, seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = []
    prev = in_features
    for _ in range(L - 1):
        mods += [nn.Linear(prev, width), _ACTIVATIONS[activation]()]
        prev = width
    mods.append(nn.Linear(prev, C))
    if softmax:
        mods.append(nn.Softmax(dim=-1))
    model = nn.Sequential(*mods).to(torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / max(1, p.shape[-1]) ** 0.5)
    return model


def measure_case(case: str, L: int, C: int = 3, *, batch: int = 2, width: int = 4, in_features: int = 3, seed: int = 0) -> dict[str, int]:
    """Measure a case of :data:`CASES` with :func:`count_operations` on a random dense network.

    The network has ``L`` layers, hidden width ``width`` and ``C`` outputs
    (``C ≥ 2``; the penalty on a single output node uses node 0).
    """
    c = _get_case(case)
    _check_lc(L, C, True)
    if C < 2:
        raise ValueError(f"measure_case needs C >= 2 outputs, got {C}")
    model = _mlp(L, C, c.activation, c.softmax, width, in_features, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((batch, in_features), generator=g, dtype=torch.float64)
    if c.softmax:
        y = torch.randint(0, C, (batch,), generator=g)
    else:
        y = torch.randn((batch, C), generator=g, dtype=torch.float64)
    penalty = {
        None: None,
        "node": OutputNodeGradient(0),
        "jacobian": JacobianFrobenius(),
        "classical": ClassicalDoubleBackprop("nll"),
    }[c.penalty]
    return count_operations(model, x, penalty, y if (c.with_loss or c.penalty == "classical") else None, c.algorithm, c.with_loss)


def count_table(cases: Iterable[str] | None = None, depths: Iterable[int] = (1, 2, 3, 4, 6), classes: Iterable[int] = (2, 10)) -> list[dict[str, Any]]:
    """Measured and closed-form counts for every case, depth and (where it matters) number of classes.

    Each row: ``case``, ``L``, ``C`` (``None`` where the count does not depend
    on it), ``measured`` (``#K + #Kᵀ``), ``closed`` (:func:`paper_count`),
    ``kbox_measured``, ``kbox_closed`` (:func:`weight_adjoint_count`), ``source``.
    """
    rows = []
    for name in CASES if cases is None else cases:
        c = _get_case(name)
        depends = "C" in c.formula or "C" in c.kbox_formula
        for L in depths:
            for C in classes if depends else (3,):
                m = measure_case(name, L, C)
                rows.append(
                    {
                        "case": name,
                        "L": L,
                        "C": C if depends else None,
                        "measured": m["apply"] + m["transpose"],
                        "closed": paper_count(name, L, C if depends else None),
                        "kbox_measured": m["weight_adjoint"],
                        "kbox_closed": weight_adjoint_count(name, L, C if depends else None),
                        "source": c.source,
                    }
                )
    return rows
