"""What one forward pass of a :class:`~dbpaper.Network` leaves for the algorithms (:class:`ForwardRecord`)."""

from __future__ import annotations

import dataclasses

import torch

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

    ``xs[j]`` is ``x_j`` (``j = 0..L``); ``dg[j]`` is ``g'_j(z_j)`` and
    ``d2g[j]`` is ``g''_j(z_j)`` (``None`` where it is identically zero) for the
    hidden layers ``j = 1..L-1``; index 0 and ``L`` hold ``None``. ``z_L`` is
    kept only for the identity output (where it equals ``x_L``). ``unit[j]`` is
    ``True`` where ``g_j`` is the identity (``g'_j ≡ 1``, stored as a broadcast
    view of one ``1``): :meth:`slope` then returns its argument instead of
    multiplying by ones (pooling layers between convolutions).
    """

    xs: list[torch.Tensor]
    dg: list[torch.Tensor | None]
    d2g: list[torch.Tensor | None]
    unit: list[bool] | None = None
    #: ``relu[j]``: ``g_j`` is the ReLU, whose ``g'_j(z_j)`` is ``sign(x_j)`` (``0`` or ``1``) and is not stored
    relu: list[bool] | None = None
    #: ``z_L`` where the output map is the softmax (for a stable ``log_softmax`` in the loss), else ``None``
    logits: torch.Tensor | None = None
    #: layer ``j`` -> the linear map its operator selected on this pass (max-pooling), else ``None``
    selections: dict | None = None

    def slope(self, j: int, t: torch.Tensor) -> torch.Tensor:
        """``M(g'_j(z_j), t) = g'_j(z_j) ⊙ t`` (``t`` itself where ``g_j`` is the identity)."""
        if self.unit is not None and self.unit[j]:
            return t
        if self.relu is not None and self.relu[j]:
            return relu_slope(t, self.xs[j])
        return self.dg[j] * t

    @property
    def output(self) -> torch.Tensor:
        """``x_L``."""
        return self.xs[-1]
