"""Initial values of Appendix B: ``ζ_L`` and ``η_L = (dζ_L/dz_L)* h_L`` for each output map and kind of ``v``.

A *seed* bundles one ``v`` of eq. (10) with the output map ``g_L``. It
provides ``ζ_L = (dx_L/dz_L)* v`` (the start of Algorithm 1) and the linear
map ``h_L ↦ η_L`` (the start of Algorithm 3). Writing ``S = diag(x_L) -
x_L x_Lᵀ`` for the symmetric softmax Jacobian (Appendix B.1):

=================================  ==================  =========================================================
case                               ``ζ_L``              ``η_L``
=================================  ==================  =========================================================
softmax, ``v`` constant (B.1)      ``S v``              ``S (v⊙h − ⟨x,v⟩ h − ⟨x,h⟩ v)``  (corrected, erratum E5)
softmax + NLL (B.2)                ``x_L − y``          ``S h``  (eq. (44))
identity, ``v`` constant (B.3)     ``v``                ``0``
identity + squared error           ``2 (x_L − y)``      ``2 h``  (not in the paper)
identity + cross-entropy on logits ``softmax(z_L) − y`` ``S(softmax(z_L)) h``  (not in the paper)
softmax + squared error            ``S v``, ``v = 2 (x_L − y)``  ``S (v⊙h − ⟨x,v⟩ h − ⟨x,h⟩ v + 2 S h)``  (not in the paper)
=================================  ==================  =========================================================

``⟨·,·⟩`` acts per example (over the last dimension). ``y`` holds class
indices for the NLL cases and targets shaped like ``x_L`` for squared error.

Coordinate-wise output maps and ``v``'s that depend on ``x_L`` (an extension)
------------------------------------------------------------------------------
For any output map with symmetric ``A(z_L) = dx_L/dz_L`` and any ``v = v(x_L)``,
``ζ_L = A v`` and differentiating it in ``z_L`` gives

    η_L = (d/dz_L [A(z_L) v])* h_L |_{v fixed}  +  A (dv/dx_L)* A h_L.

The first term is :meth:`dbpaper.activations.OutputMap.curvature` (the B.1
formula for the softmax, ``0`` for the identity, and eq. (28) at ``j = L``,
``g''(z_L) ⊙ h_L ⊙ v``, for a coordinate-wise ``g_L``); the second is the
dependence of ``v`` on the network, present for loss-gradient seeds and for
user-defined ``v(x_L)`` (:class:`FunctionSeed`). For a coordinate-wise
``g_L`` (:class:`~dbpaper.activations.CoordinatewiseOutput`) and constant
``v``: ``ζ_L = g'(z_L) ⊙ v``, ``η_L = g''(z_L) ⊙ h_L ⊙ v``; with squared
error (``v = 2(x_L − y)``) add ``2 g'(z_L)² ⊙ h_L``; with cross-entropy on
``x_L`` read as logits (``v = softmax(x_L) − y``) add
``g' ⊙ S(softmax(x_L)) (g' ⊙ h_L)``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch

from .activations import CoordinatewiseOutput, IdentityOutput, OutputMap, Softmax
from .losses import loss_target

__all__ = ["ConstantSeed", "FunctionSeed", "LossGradientSeed", "Seed", "softmax_jacobian_apply"]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example inner product, kept broadcastable."""
    return torch.sum(a * b, dim=tuple(range(1, a.ndim)), keepdim=True)


def softmax_jacobian_apply(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``S(x) u = x ⊙ u − ⟨x, u⟩ x`` (Appendix B.1, eq. (41))."""
    return x * (u - _dot(x, u))


class Seed(abc.ABC):
    """One ``v`` of eq. (10) together with the output map (Appendix B)."""

    #: True when ``η_L`` vanishes identically (then ``eta_L`` returns ``None``).
    eta_is_zero: bool = False

    @abc.abstractmethod
    def zeta_L(self) -> torch.Tensor:
        """``ζ_L = (dx_L/dz_L)* v``."""

    @abc.abstractmethod
    def eta_L(self, h_L: torch.Tensor) -> torch.Tensor | None:
        """``η_L = (dζ_L/dz_L)* h_L``, or ``None`` when it is identically zero."""


class ConstantSeed(Seed):
    """A ``v`` that does not depend on the network (Appendix B.1 and B.3)."""

    output_map: OutputMap
    x: torch.Tensor
    v: torch.Tensor

    def __init__(self, output_map: OutputMap, x_L: torch.Tensor, v: torch.Tensor):
        if v.shape != x_L.shape:
            raise ValueError(f"ConstantSeed: v has shape {tuple(v.shape)}, x_L has shape {tuple(x_L.shape)}")
        self.output_map, self.x, self.v = output_map, x_L, v
        self.eta_is_zero: bool = isinstance(output_map, IdentityOutput) or (
            isinstance(output_map, CoordinatewiseOutput) and (output_map.linear or output_map.activation.locally_linear)
        )

    def zeta_L(self) -> torch.Tensor:
        return self.output_map.jvp(self.x, self.v)

    def eta_L(self, h_L: torch.Tensor) -> torch.Tensor | None:
        if self.eta_is_zero:
            return None
        x, v, h = self.x, self.v, h_L
        if isinstance(self.output_map, Softmax):
            return softmax_jacobian_apply(x, v * h - _dot(x, v) * h - _dot(x, h) * v)
        return self.output_map.curvature(x, v, h)  # coordinate-wise g_L: g''(z_L) ⊙ h_L ⊙ v


class FunctionSeed(Seed):
    """A ``v = v(x_L)`` that depends on the network through its output (an extension of Appendix B).

    ``ζ_L = A v`` with ``A = dx_L/dz_L``; ``η_L = curvature(x_L, v, h_L) + A (dv/dx_L)* A h_L``.
    ``v_vjp(u)`` must return ``(dv/dx_L)* u``; without it, the vector-Jacobian
    product is taken by first-order autograd of ``v_fn`` at ``x_L`` (one
    backward through ``v_fn`` alone, never through the network).
    """

    output_map: OutputMap
    x: torch.Tensor
    v: torch.Tensor

    def __init__(
        self,
        output_map: OutputMap,
        x_L: torch.Tensor,
        v_fn: Callable[[torch.Tensor], torch.Tensor],
        v_vjp: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.output_map, self.x = output_map, x_L
        if v_vjp is None:
            with torch.enable_grad():
                self._xl = x_L.detach().requires_grad_(True)
                self._v_graph = v_fn(self._xl)
            self.v = self._v_graph.detach()
        if v_vjp is not None or (x_L.requires_grad and torch.is_grad_enabled()):
            self.v = v_fn(x_L)  # recorded through x_L when x_L is (for the traced quantities of the tests)
        if not isinstance(self.v, torch.Tensor) or self.v.shape != x_L.shape:
            raise ValueError(f"FunctionSeed: v(x_L) must be a tensor shaped like x_L {tuple(x_L.shape)}, got "
                             f"{tuple(self.v.shape) if isinstance(self.v, torch.Tensor) else type(self.v).__name__}")
        self._v_vjp = v_vjp

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """``(dv/dx_L)* u``."""
        if self._v_vjp is not None:
            return self._v_vjp(u)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self._v_graph, self._xl, u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(u) if g is None else g

    def zeta_L(self) -> torch.Tensor:
        return self.output_map.jvp(self.x, self.v)

    def eta_L(self, h_L: torch.Tensor) -> torch.Tensor | None:
        x = self.x
        eta = self.output_map.jvp(x, self.vjp(self.output_map.jvp(x, h_L)))
        curv = ConstantSeed(self.output_map, x, self.v).eta_L(h_L)
        return eta if curv is None else eta + curv


class LossGradientSeed(Seed):
    """``v = ∇_{x_L} ℓ(x_L, y)`` (classical double backpropagation, Section 4.1.1 and Appendix B.2).

    ``loss="nll"``: with a softmax output, ``ℓ = −log x_L[y]``; with an
    identity output, the cross-entropy of the logits ``x_L``.
    ``loss="mse"``: ``ℓ = ‖x_L − y‖²``. With a coordinate-wise output map,
    NLL is the cross-entropy of ``x_L`` read as logits, as for the identity.
    """

    output_map: OutputMap
    x: torch.Tensor
    loss: str
    target: torch.Tensor
    p: torch.Tensor
    coordinatewise: bool

    def __init__(self, output_map: OutputMap, x_L: torch.Tensor, y: torch.Tensor, loss: str):
        self.output_map, self.x, self.loss = output_map, x_L, loss
        self.target = loss_target(x_L, y, loss)
        if loss == "nll":
            self.p = x_L if isinstance(output_map, Softmax) else torch.softmax(x_L, dim=-1)
        self.coordinatewise = isinstance(output_map, CoordinatewiseOutput)

    def v(self) -> torch.Tensor:
        """``v = ∇_{x_L} ℓ`` (for a coordinate-wise output map; NLL reads ``x_L`` as logits)."""
        return self.p - self.target if self.loss == "nll" else 2 * (self.x - self.target)

    def zeta_L(self) -> torch.Tensor:
        if self.coordinatewise:
            return self.output_map.jvp(self.x, self.v())
        if self.loss == "nll":
            return self.p - self.target  # eq. (43); for logits: softmax(z_L) − y
        v = 2 * (self.x - self.target)
        return self.output_map.jvp(self.x, v)

    def eta_L(self, h_L: torch.Tensor) -> torch.Tensor | None:
        if self.coordinatewise:
            # η_L = g''⊙h⊙v + g' ⊙ (dv/dx_L)(g' ⊙ h), with dv/dx_L = S(softmax(x_L)) (NLL) or 2I (squared error)
            x, v = self.x, self.v()
            a_h = self.output_map.jvp(x, h_L)
            hv = softmax_jacobian_apply(self.p, a_h) if self.loss == "nll" else 2 * a_h
            eta = self.output_map.jvp(x, hv)
            curv = self.output_map.curvature(x, v, h_L)
            return eta if curv is None else eta + curv
        if self.loss == "nll":
            return softmax_jacobian_apply(self.p, h_L)  # eq. (44)
        if isinstance(self.output_map, IdentityOutput):
            return 2 * h_L
        x, h = self.x, h_L
        v = 2 * (x - self.target)
        inner = v * h - _dot(x, v) * h - _dot(x, h) * v + 2 * softmax_jacobian_apply(x, h)
        return softmax_jacobian_apply(x, inner)
