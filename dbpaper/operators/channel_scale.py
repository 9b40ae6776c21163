"""Per-channel scaling ``K(θ, x) = θ_c x_c``: the linear part of BatchNorm in eval mode.

For inputs of per-example shape ``(C, ...)`` and ``θ ∈ R^C``, every position of
channel ``c`` is multiplied by ``θ_c``. ``K(θ, ·)`` is diagonal, so it is its
own transpose, ``Kᵀ(θ, y) = θ_c y_c``, and the weight-adjoint sums the
products over the batch and the positions, ``K□(x, y)_c = Σ_{n, p} x_{n,c,p} y_{n,c,p}``.

BatchNorm in eval mode is ``z = γ (x − μ)/√(σ² + ε) + β``: this operator with
``θ = γ/√(σ² + ε)`` and the bias ``b = β − θ μ``, both derived from the module's
parameters and running statistics (:mod:`dbpaper.readers` sends the gradients
with respect to ``θ`` and ``b`` back to ``γ`` and ``β``).
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import BilinearOperator

__all__ = ["ChannelScale"]


class ChannelScale(BilinearOperator):
    """``θ_c x_c`` on inputs of per-example shape ``in_shape = (C, ...)``; ``θ`` has shape ``(C,)``."""

    def __init__(self, in_shape: Sequence[int]):
        in_shape = tuple(int(s) for s in in_shape)
        if not in_shape:
            raise ValueError("ChannelScale: in_shape must name the channels first, got ()")
        super().__init__(in_shape, in_shape, (in_shape[0],))

    def _macs_per_output(self) -> int:
        return 1

    def _view(self, theta):
        return theta.reshape((1, -1) + (1,) * (len(self.in_shape) - 1))

    def _apply(self, theta, x):
        return x * self._view(theta)

    def _transpose(self, theta, y):
        return y * self._view(theta)

    def _weight_adjoint(self, x, y):
        return (x * y).sum(dim=(0, *range(2, x.ndim)))
