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

import torch
from torch import nn

from ..counting import CASES, MINIMAL, paper_count, weight_adjoint_count
from ..penalties import ClassicalDoubleBackprop, JacobianFrobenius, OutputNodeGradient

__all__ = ["autograd_evaluations", "scenario_table"]

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

    from ..reference import _autograd_value, output_map_of
    from ..seeds import loss_value

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
            value = value + _autograd_value(model, xin, out, pen, y if pen.needs_y else None)
        if c.with_loss:
            value = value + loss_value(output_map_of(model), out, y, "nll" if c.softmax else "mse")
        torch.autograd.grad(value, params, allow_unused=True)
    return counter.get_total_flops() / (2 * batch * d * d)


def scenario_table(L: int = 4, C: int = 8) -> list[dict]:
    """One row per scenario of Section 5: paper's count, minimal count, ``K□`` counts and autograd's total.

    ``C`` is the number of outputs (the width of the square network used for
    autograd's FLOPs; the measured counts do not depend on the width).
    """
    from ..counting import measure_case

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
