"""The symmetric bilinear operator ``M(a, v) = a ⊙ v`` of Definition 3.1.

``M`` is how a coordinate-wise activation's derivative acts:
``G'(z) v = M(g'(z), v)``. Lemma 3.1 says a symmetric bilinear operator is
its own transposed and weight-adjoint operator; :class:`Hadamard` therefore
uses one implementation for all three maps, and the tests check Lemma 3.1
and Corollary 3.1.1 numerically instead of assuming them.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import BilinearOperator

__all__ = ["Hadamard"]


class Hadamard(BilinearOperator):
    """Coordinate-wise product on a space of per-example shape ``shape``.

    Unlike the layer operators, both arguments are batched: ``a`` and ``v``
    have shape ``(N, *shape)``. In Theorem 2.3's terms ``P = X = Y``.
    """

    def __init__(self, shape: Sequence[int]):
        super().__init__(shape, shape, shape)

    def _check_param(self, theta, name):  # theta is batched like x
        self._check_batch(theta, self.in_shape, name)

    def _macs_per_output(self) -> int:
        return 1

    def _apply(self, theta, x):
        return theta * x

    def _transpose(self, theta, y):
        return theta * y

    def _weight_adjoint(self, x, y):
        return x * y
