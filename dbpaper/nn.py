"""Torch modules the package adds to ``torch.nn``: the locally connected layer and the residual block."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from .operators import LocallyConnected2d as _LCOperator

if TYPE_CHECKING:
    from ._reduction import Reduction
    from .penalties import Penalty
    from .planning import AlgorithmName

__all__ = ["LocallyConnected2d", "PenaltyTerm", "Residual"]


class LocallyConnected2d(nn.Module):
    """A 2-D convolution with unshared filters, usable inside ``nn.Sequential``.

    ``weight`` has shape ``(C_out, H_out, W_out, C_in, kh, kw)`` and ``bias``
    ``(C_out, H_out, W_out)``; the input size must be fixed at construction.
    The bilinear operator is :class:`dbpaper.operators.LocallyConnected2d`.
    """

    operator: _LCOperator
    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(
        self,
        in_shape: Sequence[int],
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.operator = _LCOperator(in_shape, out_channels, kernel_size, stride, padding, dilation)
        fan_in = math.prod(self.operator.param_shape[3:])
        bound = 1.0 / math.sqrt(fan_in)
        kw = dict(dtype=dtype, device=device)
        self.weight = nn.Parameter(torch.empty(self.operator.param_shape, **kw).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(self.operator.out_shape, **kw).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to a batch ``x`` of shape ``(N, C_in, H, W)``."""
        y = self.operator.apply(self.weight, x)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return repr(self.operator)


class Residual(nn.Module):
    """A residual block ``x ↦ s(x) + F(x)``: ``F = nn.Sequential(*modules)``, ``s`` the identity or ``shortcut``.

    Read by the explicit algorithms wherever it appears inside an
    ``nn.Sequential`` (nested blocks included): ``F`` and ``shortcut`` may hold
    any supported modules, e.g. ``Residual(conv, bn, relu, conv, bn)`` with an
    ``nn.ReLU()`` after the block, or a down-sampling block with
    ``shortcut=nn.Sequential(nn.Conv2d(c, 2 * c, 1, stride=2), nn.BatchNorm2d(2 * c))``.
    ``s(x)`` and ``F(x)`` must have the same shape.
    """

    body: nn.Sequential
    shortcut: nn.Module | None

    def __init__(self, *modules: nn.Module, shortcut: nn.Module | None = None):
        super().__init__()
        self.body = nn.Sequential(*modules)
        if shortcut is not None and not isinstance(shortcut, nn.Module):
            raise TypeError(f"Residual: shortcut must be a torch.nn.Module or None, got {type(shortcut).__name__}")
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``s(x) + F(x)``."""
        return (x if self.shortcut is None else self.shortcut(x)) + self.body(x)


class PenaltyTerm(nn.Module):
    """A penalty as a loss module: ``PenaltyTerm(penalty, weight)(model, x, y)`` is ``weight · R``.

    For code that composes its losses as modules. The call is
    :func:`dbpaper.penalty` (same algorithms, same fallback); the module holds
    no parameters and no model, so it can sit beside the model in any container
    without registering the model's parameters twice.

    >>> import torch, dbpaper
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> term = dbpaper.nn.PenaltyTerm(dbpaper.penalties.JacobianFrobenius(), weight=0.1)
    >>> x = torch.randn(16, 3)
    >>> R = term(net, x)
    >>> bool(torch.allclose(R, 0.1 * dbpaper.penalty(net, x, dbpaper.penalties.JacobianFrobenius())))
    True
    """

    penalty: Penalty
    weight: float
    algorithm: AlgorithmName
    reduction: Reduction

    def __init__(self, penalty: Penalty, weight: float = 1.0, *, algorithm: AlgorithmName = "auto", reduction: Reduction = "mean"):
        super().__init__()
        from ._reduction import check_reduction
        from .penalties import Penalty

        if not isinstance(penalty, Penalty):
            raise TypeError(f"PenaltyTerm: penalty must be a dbpaper.penalties.Penalty, got {type(penalty).__name__}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise TypeError(f"PenaltyTerm: weight must be a finite real number, got {weight!r}")
        self.penalty = penalty
        self.weight = float(weight)
        self.algorithm = algorithm
        self.reduction = check_reduction(reduction)

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        from .api import penalty as _penalty

        return self.weight * _penalty(model, x, self.penalty, y, algorithm=self.algorithm, reduction=self.reduction)

    def extra_repr(self) -> str:
        return (
            f"{self.penalty!r}, weight={self.weight}"
            + ("" if self.algorithm == "auto" else f", algorithm={self.algorithm!r}")
            + ("" if self.reduction == "mean" else f", reduction={self.reduction!r}")
        )
