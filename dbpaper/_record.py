"""What one forward pass of a :class:`~dbpaper.Network` leaves for the algorithms (:class:`ForwardRecord`)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .activations import Activation
    from .normalisation import NormState
    from .operators import BilinearOperator

__all__ = ["ForwardRecord", "relu_slope"]


def relu_slope(t: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``M(g'(z), t)`` for the ReLU from its output ``x``: ``t`` where ``x > 0``, else 0 (``x`` broadcast over ``t``).

    The kernel of autograd's own ReLU backward (``threshold_backward``): no
    mask is stored or formed. ``out`` (which may be ``t`` itself) receives the
    result in place.
    """
    if out is None:
        return torch.ops.aten.threshold_backward(t, x, 0)
    return torch.ops.aten.threshold_backward.grad_input(t, x, 0, grad_input=out)


@dataclasses.dataclass(eq=False)
class ForwardRecord:
    """What one forward pass leaves for the algorithms.

    ``xs[j]`` is ``x_j`` (``j = 0..L``). For the hidden layers ``j = 1..L-1``:
    ``acts[j]`` is ``g_j`` and ``slope_in[j]`` the tensor its fused derivative
    product :meth:`dbpaper.Activation.slope` reads (``x_j`` itself, or ``z_j``
    for an activation whose ``g'`` is not a function of its output: GELU,
    SiLU, softplus), so that ``M(g'_j(z_j), t)`` is one pass of autograd's own
    backward kernel and ``g'_j`` is never stored; ``d2g[j]`` is ``g''_j(z_j)``
    (``None`` where it is identically zero). ``unit[j]`` is ``True`` where
    ``g_j`` is the identity: :meth:`slope` then returns its argument (pooling
    layers between convolutions). Index 0 and ``L`` hold ``None``.

    Where ``g_j`` is a normalisation (an activation that is not coordinate-wise,
    :class:`dbpaper.normalisation.Normalisation`, ``acts[j].coupled``),
    ``slope_in[j]`` is its :class:`~dbpaper.normalisation.NormState`,
    ``d2g[j]`` is ``None``, and its ``g''`` enters through :meth:`source`, one
    bilinear evaluation per seed (:meth:`curved` says where a source term exists).
    """

    xs: list[torch.Tensor | None]
    d2g: list[torch.Tensor | None]
    acts: list[Activation | None] | None = None
    slope_in: list[torch.Tensor | NormState | None] | None = None
    unit: list[bool] | None = None
    #: ``z_L`` where the output map is the softmax (for a stable ``log_softmax`` in the loss), else ``None``
    logits: torch.Tensor | None = None
    #: layer ``j`` -> the linear map its operator selected on this pass (max-pooling), else ``None``
    selections: dict[int, BilinearOperator] | None = None

    def slope(self, j: int, t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``M(g'_j(z_j), t) = g'_j(z_j) ⊙ t`` in one pass (``t`` itself where ``g_j`` is the identity).

        ``out`` (which may be ``t``) receives it; ``slope_in[j]`` broadcasts over
        a ``t`` of several classes stacked along a leading dimension.
        """
        if self.unit is not None and self.unit[j]:
            return t if out is None or out is t else out.copy_(t)
        return self.acts[j].slope(t, self.slope_in[j], out)

    def is_coupled(self, j: int) -> bool:
        """Whether ``g_j`` is a normalisation, whose ``g'`` and ``g''`` act on groups of coordinates."""
        return self.acts is not None and self.acts[j] is not None and self.acts[j].coupled

    def curved(self, j: int) -> bool:
        """Whether layer ``j`` has a source term ``M(G''_j(z_j) h_j, ξ_j)`` in eq. (28) (``g''_j`` not identically zero)."""
        return self.d2g[j] is not None or self.is_coupled(j)

    def source(self, j: int, h: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """``M(G''_j(z_j) h_j, ξ_j)`` of eq. (28), shaped like ``ξ_j`` (``k`` classes may be stacked along the batch).

        ``g''_j ⊙ h_j ⊙ ξ_j`` for a coordinate-wise ``g_j``, the bilinear
        ``g''_j(z_j)[h_j, ξ_j]`` of a normalisation (per seed: it is no diagonal
        that the seeds could share).
        """
        if self.is_coupled(j):
            state = self.slope_in[j]
            return self.acts[j].curvature(state, h.reshape(-1, *state.shape), xi.reshape(-1, *state.shape)).reshape(xi.shape)
        d2g = self.d2g[j]
        return (d2g * h.reshape(-1, *d2g.shape) * xi.reshape(-1, *d2g.shape)).reshape(xi.shape)

    @property
    def output(self) -> torch.Tensor:
        """``x_L``."""
        return self.xs[-1]
