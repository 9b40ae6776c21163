"""Convolutions ``K(w, x) = w * x`` in one and two dimensions (Section 2.1).

``theta`` is laid out like ``nn.Conv1d.weight`` / ``nn.Conv2d.weight``:
``(C_out, C_in / groups, *kernel_size)``. Only zero padding is bilinear in
this sense (it is what ``padding_mode="zeros"`` does). The transposed
operator is the "transposed convolution" (Remark 2.2), evaluated by
``conv_transpose1d/2d`` with the ``output_padding`` that restores the input
size (``torch.nn.grad.conv2d_input`` computes the same through a
convolution backward on a stride-0 placeholder input, which the oneDNN
kernels run 1.5–3.5x slower); the weight-adjoint is what frameworks call the
filter gradient, evaluated by ``torch.nn.grad``'s convolution-backward
kernel. No autograd graph is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.nn import grad as nn_grad

from .base import BilinearOperator

__all__ = ["Conv1d", "Conv2d", "SLICE_BYTES"]


def _tuple(v: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    t = tuple(int(a) for a in v)
    if len(t) != n:
        raise ValueError(f"{name} must be an int or a sequence of {n} ints, got {v!r}")
    return t


def _spatial_out(op, in_shape: tuple[int, ...]) -> list[int]:
    """Output sizes of a (possibly unshared) convolution over the spatial dims of ``in_shape``."""
    spatial = []
    for size, k, s, p, d in zip(in_shape[1:], op.kernel_size, op.stride, op.padding, op.dilation):
        out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        if out <= 0:
            raise ValueError(f"{type(op).__name__}: input {in_shape} is too small for kernel {op.kernel_size}")
        spatial.append(out)
    return spatial


class _ConvNd(BilinearOperator):
    _dim: int

    def __init__(
        self,
        in_shape: Sequence[int],
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
    ):
        n = self._dim
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != n + 1:
            raise ValueError(f"{type(self).__name__}: in_shape must be (C_in, {'L' if n == 1 else 'H, W'}), got {in_shape}")
        self.kernel_size: tuple[int, ...] = _tuple(kernel_size, n, "kernel_size")
        self.stride: tuple[int, ...] = _tuple(stride, n, "stride")
        self.padding: tuple[int, ...] = _tuple(padding, n, "padding")
        self.dilation: tuple[int, ...] = _tuple(dilation, n, "dilation")
        self.groups: int = int(groups)
        c_in = in_shape[0]
        if c_in % self.groups or out_channels % self.groups:
            raise ValueError(
                f"{type(self).__name__}: groups={groups} must divide in_channels={c_in} and out_channels={out_channels}"
            )
        spatial = _spatial_out(self, in_shape)
        super().__init__(in_shape, (out_channels, *spatial), (out_channels, c_in // self.groups, *self.kernel_size))
        self._tkw = self._transpose_kw()
        # Few input channels, stride 1, no groups: the transpose is a plain convolution with the
        # kernel flipped and its channel axes swapped (oneDNN's transposed convolution into one or
        # two channels runs about 9x slower than this on CPUs).
        flip_pad = tuple(d * (k - 1) - p for k, p, d in zip(self.kernel_size, self.padding, self.dilation))
        self._flip_pad = (
            flip_pad
            if c_in <= 2 and self.groups == 1 and all(s == 1 for s in self.stride) and min(flip_pad) >= 0
            else None
        )

    def _kw(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    # On the CPU the three maps run on slices of the batch (every map acts example by example; K□ sums
    # over the examples): oneDNN's kernels copy their operands into blocked layouts, and on slices of
    # about SLICE_BYTES these copies stay in cache and small. On large batches this is 1-3x faster than
    # one call and bounds the kernels' working memory; on a GPU one call is made.
    def _apply(self, theta, x):
        return self._by_slices(lambda t: self._conv(theta, t), x, self.out_shape)

    def _transpose(self, theta, y):
        return self._by_slices(lambda t: self._conv_t(theta, t), y, self.in_shape)

    def _weight_adjoint(self, x, y):
        rows = _slice_rows(x, self.in_numel + self.out_numel)
        if rows is None:
            return self._filter_grad(x, y)
        acc = None
        for a in range(0, x.shape[0], rows):
            g = self._filter_grad(x[a : a + rows], y[a : a + rows])
            acc = g if acc is None else acc.add_(g)
        return acc

    def _by_slices(self, fn, t, out_shape):
        per_row = self.in_numel + self.out_numel
        rows = _slice_rows(t, per_row) if t.shape[0] * per_row * t.element_size() > MAP_SLICE_MIN_BYTES else None
        if rows is None:
            return fn(t)
        out = t.new_empty((t.shape[0], *out_shape))
        for a in range(0, t.shape[0], rows):
            out[a : a + rows] = fn(t[a : a + rows])
        return out

    def _transpose_kw(self):
        """Keywords of ``conv_transposeNd`` that give back exactly ``in_shape`` (the ``output_padding``)."""
        out_pad = tuple(
            size - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
            for size, o, k, s, p, d in zip(
                self.in_shape[1:], self.out_shape[1:], self.kernel_size, self.stride, self.padding, self.dilation
            )
        )
        return dict(stride=self.stride, padding=self.padding, output_padding=out_pad, groups=self.groups, dilation=self.dilation)

    def _hyper(self) -> str:
        return (
            f"out_channels={self.out_shape[0]}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}"
        )


class Conv1d(_ConvNd):
    """1-D convolution; ``in_shape = (C_in, L)``; hyperparameters as in ``nn.Conv1d``."""

    _dim = 1

    def _conv(self, theta, x):
        return F.conv1d(x, theta, **self._kw())

    def _conv_t(self, theta, y):
        return F.conv_transpose1d(y, theta, **self._tkw)

    def _filter_grad(self, x, y):
        return nn_grad.conv1d_weight(x, self.param_shape, y, **self._kw())


class Conv2d(_ConvNd):
    """2-D convolution; ``in_shape = (C_in, H, W)``; hyperparameters as in ``nn.Conv2d``."""

    _dim = 2

    def _conv(self, theta, x):
        return F.conv2d(x, theta, **self._kw())

    def _conv_t(self, theta, y):
        if self._flip_pad is not None:
            return F.conv2d(y, theta.flip((2, 3)).transpose(0, 1), padding=self._flip_pad, dilation=self.dilation)
        return F.conv_transpose2d(y, theta, **self._tkw)

    def _filter_grad(self, x, y):
        return nn_grad.conv2d_weight(x, self.param_shape, y, **self._kw())


#: Bytes of one slice of the batch (input plus output of the slice) on which the CPU runs a convolution.
SLICE_BYTES = 1 << 20
#: ``K`` and ``Kᵀ`` are sliced only on batches larger than this (Algorithm 4's stacked classes): on a plain batch
#: the copy of the slices into one output costs more than the slices save.
MAP_SLICE_MIN_BYTES = 8 << 20


def _slice_rows(t, per_row: int) -> int | None:
    """Examples per slice on the CPU (``None``: one call; on a GPU, under ``torch.compile``, or a small batch)."""
    if t.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    rows = max(1, SLICE_BYTES // (per_row * t.element_size()))
    return rows if rows < t.shape[0] else None
