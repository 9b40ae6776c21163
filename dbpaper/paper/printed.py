"""Formulas exactly as printed in the paper, for the errata page.

These functions are *not* used by the algorithms. Each reproduces a printed
expression of {cite}`etmann2019closer` literally, so that the book can put it
next to the corrected formula and to autograd. See ``book/errata``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from ..normalisation import require_coordinatewise
from ..seeds import ConstantSeed, _dot, softmax_jacobian_apply

if TYPE_CHECKING:
    from ..network import Network

__all__ = [
    "FIXES",
    "Memory",
    "algorithm_4",
    "dzeta_dx_softmax_B1",
    "eta_L_softmax_B1",
    "r_cdb_section_6_3",
    "v_nll_appendix_B",
]


def eta_L_softmax_B1(x: torch.Tensor, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Appendix B.1, last line, as printed.

    ``η_L = x⊙v⊙h − ⟨x,v⟩(x⊙v) − ⟨x, v⊙h⟩ + 2⟨x,v⟩⟨x,h⟩ x`` (the scalar
    ``⟨x, v⊙h⟩`` is subtracted from every coordinate, the only reading of the
    printed sum of a vector and a scalar).
    """
    return x * v * h - _dot(x, v) * (x * v) - _dot(x, v * h) + 2 * _dot(x, v) * _dot(x, h) * x


def dzeta_dx_softmax_B1(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Appendix B.1, the printed Jacobian ``dζ_L/dx_L ≃ diag(v) − ⟨x_L, v⟩ I − v x_Lᵀ`` (one example, matrices)."""
    c = x.shape[-1]
    return torch.diag(v) - torch.dot(x, v) * torch.eye(c, dtype=x.dtype) - torch.outer(v, x)


def v_nll_appendix_B(x: torch.Tensor, y_onehot: torch.Tensor) -> torch.Tensor:
    """Appendix B (and B.2) as printed: ``v = −y ⊙ x_L`` (a Hadamard *product*)."""
    return -y_onehot * x


def r_cdb_section_6_3(dx_L_dx0: torch.Tensor, x_L: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Section 6.3 as printed: ``R_cdb = ((∂_{x0}(x_L − y))²)²`` for a scalar network (``y`` does not depend on ``x_0``)."""
    return (dx_L_dx0**2) ** 2


# ---------------------------------------------------------------- Algorithm 4 (Appendix C), transcribed
class Memory(dict[str, torch.Tensor]):
    """The variables of the printed program; using a deleted or undefined one raises a KeyError."""

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self:
            raise KeyError(f"'{name}' is used after it was deleted, or was never defined")
        return super().__getitem__(name)

    def delete(self, *names: str) -> None:
        """The printed ``delete``."""
        for name in names:
            self.pop(name, None)


#: the corrections of errata E11–E15, in the order the book switches them on
FIXES = ("theta_hat", "keep_x_L", "final_loop", "keep_eta_hat", "eta_L", "zeta_L")


def algorithm_4(net: Network, x: torch.Tensor, fixes: Iterable[str] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Appendix C, Algorithm 4, line by line, for one example ``x`` of a dense ReLU network with a softmax output.

    Returns ``(R, gradients)`` (weights and biases, layer by layer); ``fixes`` switches on the corrections
    named in :data:`FIXES` (errata E11–E15). Without them the printed program uses deleted variables.
    """
    net.require_chain("algorithm_4 (the printed program)")
    require_coordinatewise(net, "algorithm_4 (the printed program)")
    unknown = set(fixes) - set(FIXES)
    if unknown:
        raise ValueError(f"algorithm_4: unknown corrections {sorted(unknown)}; known: {FIXES}")
    L, lay, m = net.depth, net.layers, Memory()
    th = [lay[j - 1].theta(x) for j in range(L + 1)]  # th[j] = θ_j (th[0] unused)
    m["x_0"] = x
    for j in range(1, L + 1):  # forward pass
        m[f"z_{j}"] = lay[j - 1].add_bias(lay[j - 1].K(th[j], m[f"x_{j-1}"]))
        m[f"x_{j}"] = lay[j - 1].activation.f(m[f"z_{j}"])
        # a_j = g'_j(z_j); the softmax has no coordinate-wise derivative, the diagonal of its Jacobian is the closest reading
        m[f"a_{j}"] = lay[j - 1].activation.df(m[f"z_{j}"]) if j < L else m[f"x_{L}"] * (1 - m[f"x_{L}"])
        m.delete(f"z_{j}")
    for j in range(1, L + 1):
        m[f"θ̂¹_{j}"], m[f"η̂_{j}"] = 0, 0
    C, R = m[f"x_{L}"].shape[-1], 0.0
    for i in range(C):
        e = torch.zeros_like(m[f"x_{L}"])
        e[:, i] = 1
        m[f"ξ_{L}"] = e  # i-th backward pass
        for j in range(L, 0, -1):
            if j == L and "zeta_L" in fixes:
                m[f"ζ_{j}"] = softmax_jacobian_apply(m[f"x_{L}"], e)
            else:
                m[f"ζ_{j}"] = m[f"a_{j}"] * m[f"ξ_{j}"]
            m.delete(f"ξ_{j}")
            m[f"ξ_{j-1}"] = lay[j - 1].KT(th[j], m[f"ζ_{j}"])
        R = R + float((m["ξ_0"] ** 2).sum().detach())  # the value itself is not computed by the printed algorithm
        m["q_0"] = 2 * m["ξ_0"]  # i-th backward-backward pass
        for j in range(1, L + 1):
            source = f"θ̂¹_{j}" if "theta_hat" in fixes else f"θ̂_{j}"
            m[f"θ̂¹_{j}"] = m[source] + lay[j - 1].Kbox(m[f"q_{j-1}"], m[f"ζ_{j}"])
            m.delete(f"ζ_{j}")
            m[f"h_{j}"] = lay[j - 1].K(th[j], m[f"q_{j-1}"])
            m.delete(f"q_{j-1}")
            m[f"q_{j}"] = m[f"a_{j}"] * m[f"h_{j}"]
            if j != L:
                m.delete(f"h_{j}")
        xL, hL = m[f"x_{L}"], m[f"h_{L}"]
        if "eta_L" in fixes:
            m[f"η̂_{L}"] = m[f"η̂_{L}"] + ConstantSeed(net.output_map, xL, e).eta_L(hL)
        else:
            m[f"η̂_{L}"] = m[f"η̂_{L}"] + eta_L_softmax_B1(xL, e, hL)
        m.delete(f"h_{L}")
        if "keep_x_L" not in fixes:
            m.delete(f"x_{L}")
    grads = {}
    for j in range(L, 0, -1):  # cumulated forward-backward passes
        if "final_loop" in fixes:
            grads[j] = (m[f"θ̂¹_{j}"] + lay[j - 1].Kbox(m[f"x_{j-1}"], m[f"η̂_{j}"]), m[f"η̂_{j}"].sum(0))
        else:
            grads[j] = (lay[j - 1].Kbox(m[f"q_{j-1}"], m[f"ζ_{j}"]) + lay[j - 1].Kbox(m[f"η_{j}"], m[f"x_{j-1}"]), m[f"η_{j}"])
        if j > 1:
            m[f"η̂_{j-1}"] = lay[j - 1].KT(th[j], m[f"η̂_{j}"])
            m.delete(f"η̂_{j}")
            m[f"η̂_{j-1}"] = m[f"a_{j-1}"] * m[f"η̂_{j-1}"]
            m.delete(f"a_{j-1}")
            if "keep_eta_hat" not in fixes:
                m.delete(f"η̂_{j-1}")
    return R, [g for j in range(1, L + 1) for g in grads[j]]
