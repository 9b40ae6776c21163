"""Locally-connected 2-D layer: a convolution whose filters are not shared (Section 2.1).

Every output position ``(i, j)`` has its own filter bank. With the patches
``P(x)[n, k, l]`` of ``x`` (``torch.nn.functional.unfold``, ``k`` running over
``C_in * kh * kw`` and ``l`` over the ``H_out * W_out`` output positions)

    K(theta, x)[n, o, l] = sum_k theta[o, l, k] P(x)[n, k, l],

so ``K^T(theta, y) = P^T(sum_o theta[o, l, k] y[n, o, l])`` (``P^T`` is
``fold``) and ``K^box(x, y)[o, l, k] = sum_n y[n, o, l] P(x)[n, k, l]``.

``theta`` has shape ``(C_out, H_out, W_out, C_in, kh, kw)``, the layout of
:class:`dbpaper.nn.LocallyConnected2d`'s ``weight``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import BilinearOperator
from .conv import _spatial_out, _tuple

__all__ = ["LocallyConnected2d"]


class LocallyConnected2d(BilinearOperator):
    """Unshared 2-D convolution; ``in_shape = (C_in, H, W)``."""

    def __init__(
        self,
        in_shape: Sequence[int],
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
    ):
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != 3:
            raise ValueError(f"LocallyConnected2d: in_shape must be (C_in, H, W), got {in_shape}")
        self.kernel_size: tuple[int, ...] = _tuple(kernel_size, 2, "kernel_size")
        self.stride: tuple[int, ...] = _tuple(stride, 2, "stride")
        self.padding: tuple[int, ...] = _tuple(padding, 2, "padding")
        self.dilation: tuple[int, ...] = _tuple(dilation, 2, "dilation")
        spatial = _spatial_out(self, in_shape)
        c_in = in_shape[0]
        super().__init__(in_shape, (out_channels, *spatial), (out_channels, *spatial, c_in, *self.kernel_size))

    def _kw(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding, dilation=self.dilation)

    def _flat_theta(self, theta):
        c_out, h, w = self.out_shape
        return theta.reshape(c_out, h * w, -1)

    def _apply(self, theta, x):
        patches = F.unfold(x, **self._kw())  # (N, K, L)
        y = torch.einsum("olk,nkl->nol", self._flat_theta(theta), patches)
        return y.reshape(x.shape[0], *self.out_shape)

    def _transpose(self, theta, y):
        flat_y = y.reshape(y.shape[0], self.out_shape[0], -1)
        patches = torch.einsum("olk,nol->nkl", self._flat_theta(theta), flat_y)
        return F.fold(patches, output_size=self.in_shape[1:], **self._kw())

    def _weight_adjoint(self, x, y):
        patches = F.unfold(x, **self._kw())
        flat_y = y.reshape(y.shape[0], self.out_shape[0], -1)
        return torch.einsum("nol,nkl->olk", flat_y, patches).reshape(self.param_shape)

    def _macs_per_output(self) -> int:
        return math.prod(self.param_shape[3:])  # (C_out, H_out, W_out | C_in, kh, kw): one unshared filter per output

    def _hyper(self) -> str:
        return (
            f"out_channels={self.out_shape[0]}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}"
        )
