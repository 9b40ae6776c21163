"""Parameter-free linear layers in the bilinear framework (Section 2.1).

Average pooling and invertible down-sampling are *linear* maps ``A`` of the
input with no trainable weight. They fit the bilinear framework with the
one-dimensional parameter space ``P = R``:

    K(theta, x) = theta * A x,   K^T(theta, y) = theta * A^T y,
    K^box(x, y) = <A x, y>  (a scalar, summed over the batch).

In a network ``theta`` is the fixed scalar 1 (see
:meth:`BilinearOperator.unit_parameter`) and is never trained, so
``K^box`` is never needed there; the three identities of Theorem 2.3 still
hold and are tested like those of every other operator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import BilinearOperator
from .conv import _tuple

__all__ = ["AvgPool2d", "IdentityMap", "InvertibleDownsampling"]


class _ParameterFree(BilinearOperator):
    trainable = False

    def _linear(self, x):
        raise NotImplementedError

    def _linear_transpose(self, y):
        raise NotImplementedError

    def _apply(self, theta, x):
        return theta * self._linear(x)

    def _transpose(self, theta, y):
        return theta * self._linear_transpose(y)

    def _weight_adjoint(self, x, y):
        return torch.sum(self._linear(x) * y)


def _pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """The output length of average pooling along one axis, as ATen computes it (no probe run)."""
    if kernel < 1 or stride < 1 or pad < 0:
        raise ValueError(f"AvgPool2d: kernel_size and stride must be positive and padding non-negative, got {kernel}, {stride}, {pad}")
    if pad > kernel // 2:
        raise ValueError(f"AvgPool2d: padding {pad} should be at most half of the kernel size {kernel}")
    span = size + 2 * pad - kernel + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    if out < 1:
        raise ValueError(f"AvgPool2d: input size {size} is too small for kernel {kernel} with padding {pad}")
    return out


class AvgPool2d(_ParameterFree):
    """Average pooling as in ``nn.AvgPool2d`` (any kernel, stride, padding, ``ceil_mode``, ``count_include_pad``).

    ``A^T`` is evaluated by the pooling-backward kernel, which is exactly the
    adjoint of the (linear) pooling map. Non-overlapping windows without
    padding (``stride = kernel_size``, the usual ``AvgPool2d(k)``) take a
    faster exact path for windows of up to 4 x 4: ``A`` adds the ``k`` strided
    slices of each axis (of the part of the input the windows cover) and
    divides by the window size, ``A^T`` repeats each value over its window
    (divided by the window size) and leaves the uncovered border zero.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ):
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != 3:
            raise ValueError(f"AvgPool2d: in_shape must be (C, H, W), got {in_shape}")
        self.kernel_size: tuple[int, ...] = _tuple(kernel_size, 2, "kernel_size")
        self.stride: tuple[int, ...] = _tuple(stride if stride is not None else kernel_size, 2, "stride")
        self.padding: tuple[int, ...] = _tuple(padding, 2, "padding")
        self.ceil_mode: bool = bool(ceil_mode)
        self.count_include_pad: bool = bool(count_include_pad)
        out_hw = tuple(
            _pooled_size(size, k, s, pad, self.ceil_mode)
            for size, k, s, pad in zip(in_shape[1:], self.kernel_size, self.stride, self.padding)
        )
        super().__init__(in_shape, (in_shape[0], *out_hw), ())
        _, oh, ow = self.out_shape
        kh, kw = self.kernel_size
        # windows that tile (part of) the input: no overlap, no padding, none past the border, small
        # enough for strided slices (larger windows: the pooling kernel)
        self._tiles = (
            max(kh, kw) <= 4
            and self.stride == self.kernel_size
            and self.padding == (0, 0)
            and oh * kh <= in_shape[1]
            and ow * kw <= in_shape[2]
        )

    def _kw(self):
        return dict(
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            ceil_mode=self.ceil_mode,
            count_include_pad=self.count_include_pad,
        )

    def _linear(self, x):
        if self._tiles:
            return self._window_mean(x)
        return F.avg_pool2d(x, **self._kw())

    def _window_mean(self, x):
        """The mean over each window as ``k`` strided slices added per axis (no reduction over a strided view)."""
        (_, oh, ow), (kh, kw) = self.out_shape, self.kernel_size
        t = x[..., : oh * kh, : ow * kw]
        if kw > 1:
            t = t[..., 0::kw] + t[..., 1::kw]
            for j in range(2, kw):
                t.add_(x[..., : oh * kh, j : ow * kw : kw])
        if kh > 1:
            s = t[..., 0::kh, :] + t[..., 1::kh, :]
            for j in range(2, kh):
                s.add_(t[..., j : oh * kh : kh, :])
            t = s
        return t * (1.0 / (kh * kw)) if kh * kw > 1 else t.clone()

    def _linear_transpose(self, y):
        if self._tiles:
            _, h, w = self.in_shape
            (_, oh, ow), (kh, kw) = self.out_shape, self.kernel_size
            spread = (y * (1.0 / (kh * kw))).repeat_interleave(kw, dim=-1).repeat_interleave(kh, dim=-2)
            if oh * kh != h or ow * kw != w:
                spread = F.pad(spread, (0, w - ow * kw, 0, h - oh * kh))
            return spread
        shape_only = y.new_empty((y.shape[0], *self.in_shape))
        return torch.ops.aten.avg_pool2d_backward(
            y, shape_only, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad, None
        )

    def _hyper(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class InvertibleDownsampling(_ParameterFree):
    """Invertible down-sampling ("squeeze", ``nn.PixelUnshuffle``): ``(C, H, W) -> (C r^2, H/r, W/r)``.

    ``A`` is a permutation of the coordinates, so ``A^T = A^{-1}`` is
    ``pixel_shuffle``.
    """

    def __init__(self, in_shape: Sequence[int], factor: int = 2):
        in_shape = tuple(int(s) for s in in_shape)
        self.factor: int = int(factor)
        if len(in_shape) != 3 or in_shape[1] % self.factor or in_shape[2] % self.factor:
            raise ValueError(
                f"InvertibleDownsampling: in_shape must be (C, H, W) with H and W divisible by {self.factor}, got {in_shape}"
            )
        c, h, w = in_shape
        super().__init__(in_shape, (c * self.factor**2, h // self.factor, w // self.factor), ())

    def _linear(self, x):
        return F.pixel_unshuffle(x, self.factor)

    def _linear_transpose(self, y):
        return F.pixel_shuffle(y, self.factor)

    def _hyper(self) -> str:
        return f"factor={self.factor}"


class IdentityMap(_ParameterFree):
    """The identity ``A x = x`` on one shape: the layer ``z = x + x_s`` that holds a residual sum after an activation.

    ``A`` and ``Aᵀ`` return copies (the algorithms may write into what an
    operator returns). It counts no multiply-adds.
    """

    def __init__(self, in_shape: Sequence[int]):
        in_shape = tuple(int(s) for s in in_shape)
        super().__init__(in_shape, in_shape, ())

    def _linear(self, x):
        return x.clone()

    def _linear_transpose(self, y):
        return y.clone()

    def _macs_per_output(self) -> int:
        return 0
