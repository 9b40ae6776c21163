"""Per-feature scaling ``K(θ, x) = θ ⊙ x`` over the trailing axes: the linear part of LayerNorm's and RMSNorm's affine map.

For inputs of per-example shape ``in_shape`` and ``θ`` of the trailing shape
``in_shape[-r:]`` (LayerNorm's ``normalized_shape``), every example is
multiplied by ``θ``, broadcast over the leading axes. ``K(θ, ·)`` is
diagonal, so it is its own transpose, ``Kᵀ(θ, y) = θ ⊙ y``, and the
weight-adjoint sums the products over the batch and the leading axes,
``K□(x, y) = Σ_{n, lead} x ⊙ y``. (:class:`~dbpaper.operators.ChannelScale` is the
same map along the leading channel axis: GroupNorm's and BatchNorm's affine part.)
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import BilinearOperator

__all__ = ["FeatureScale"]


class FeatureScale(BilinearOperator):
    """``θ ⊙ x`` on inputs of per-example shape ``in_shape``; ``θ`` has the trailing shape ``param_shape``."""

    def __init__(self, in_shape: Sequence[int], param_shape: Sequence[int] | None = None):
        in_shape = tuple(int(s) for s in in_shape)
        param_shape = in_shape if param_shape is None else tuple(int(s) for s in param_shape)
        if not param_shape or len(param_shape) > len(in_shape) or in_shape[len(in_shape) - len(param_shape):] != param_shape:
            raise ValueError(f"FeatureScale: the parameter shape {param_shape} must be the trailing shape of {in_shape}")
        super().__init__(in_shape, in_shape, param_shape)

    def _macs_per_output(self) -> int:
        return 1

    def _apply(self, theta, x):
        return x * theta

    def _transpose(self, theta, y):
        return y * theta

    def _weight_adjoint(self, x, y):
        return (x * y).sum(dim=tuple(range(x.ndim - len(self.param_shape))))
