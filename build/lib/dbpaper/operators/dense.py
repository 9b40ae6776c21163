"""Dense (fully-connected) layer: ``K(W, x) = W x`` (Section 2.1)."""

from __future__ import annotations

from .base import BilinearOperator

__all__ = ["Dense"]


class Dense(BilinearOperator):
    """``K(W, x) = W x`` with ``W`` laid out like ``nn.Linear.weight``, shape ``(out, in)``.

    ``K^T(W, y) = W^T y`` and ``K^box(x, y) = sum_n y_n x_n^T``.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__((in_features,), (out_features,), (out_features, in_features))

    def _apply(self, theta, x):
        return x @ theta.T

    def _transpose(self, theta, y):
        return y @ theta

    def _weight_adjoint(self, x, y):
        return y.T @ x

    def __repr__(self) -> str:
        return f"Dense({self.in_shape[0]} -> {self.out_shape[0]})"
