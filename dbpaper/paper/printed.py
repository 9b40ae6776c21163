"""Formulas exactly as printed in the paper, for the errata page.

These functions are *not* used by the algorithms. Each reproduces a printed
expression of {cite}`etmann2019closer` literally, so that the book can put it
next to the corrected formula and to autograd. See ``book/errata``.
"""

from __future__ import annotations

import torch

from ..algorithms.initial_values import _dot

__all__ = ["eta_L_softmax_B1", "dzeta_dx_softmax_B1", "r_cdb_section_6_3", "v_nll_appendix_B"]


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
