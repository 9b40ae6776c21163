"""Max-pooling as a locally linear operator: a selection fixed by the forward pass.

``maxpool(x) = S_x x``, where ``S_x`` picks in every window the position of the
maximum. ``S_x`` is constant where the maximum of each window is unique (almost
everywhere), so the derivative of max-pooling at ``x`` is ``S_x`` itself and its
second derivative vanishes: max-pooling behaves like a parameter-free linear
operator (Section 2.1, ``θ`` the fixed 1) once the forward pass has chosen
``S_x``, and like a locally linear activation (Section 5.2) in the counts.

:class:`MaxPool1d` and :class:`MaxPool2d` are the operators a network holds;
:meth:`MaxPool.select` runs the forward pass and returns ``S_x`` as a
:class:`Selection`: ``A y`` gathers the selected entries, ``Aᵀ u`` scatters
(adds) them back. The indices are those of ``torch``'s max-pooling kernel, so
ties are broken as autograd breaks them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .conv import _tuple
from .parameter_free import _ParameterFree

__all__ = ["MaxPool", "MaxPool1d", "MaxPool2d", "Selection"]


class Selection(_ParameterFree):
    """``S_x``: the entries max-pooling selected for a batch of ``N`` inputs (flat indices per channel).

    A stacked batch of ``k N`` rows (Algorithm 4's chunks of classes) uses the
    same selection for each of its ``k`` blocks.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], indices: torch.Tensor):
        super().__init__(in_shape, out_shape, ())
        self.indices: torch.Tensor = indices.reshape(indices.shape[0], indices.shape[1], -1)

    def _index(self, rows: int) -> torch.Tensor:
        n = self.indices.shape[0]
        if rows == n:
            return self.indices
        if rows % n:
            raise ValueError(f"Selection: made for a batch of {n}, got {rows} rows")
        return self.indices.repeat(rows // n, 1, 1)

    def _linear(self, x):
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return flat.gather(2, self._index(x.shape[0])).reshape(x.shape[0], *self.out_shape)

    def _linear_transpose(self, y):
        idx = self._index(y.shape[0])
        out = y.new_zeros((y.shape[0], self.in_shape[0], math.prod(self.in_shape[1:])))
        return out.scatter_add_(2, idx, y.reshape(idx.shape)).reshape(y.shape[0], *self.in_shape)


class MaxPool(_ParameterFree):
    """Max-pooling over ``d`` spatial axes, as in ``nn.MaxPool1d`` / ``nn.MaxPool2d`` (any kernel, stride, padding,
    dilation, ``ceil_mode``). Applied through :meth:`select`; ``A`` and ``Aᵀ`` need the selection of a forward pass."""

    dims = 2
    selects = True

    def __init__(
        self,
        in_shape: Sequence[int],
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        ceil_mode: bool = False,
    ):
        in_shape = tuple(int(s) for s in in_shape)
        name = type(self).__name__
        if len(in_shape) != self.dims + 1:
            raise ValueError(f"{name}: in_shape must be (C, {'L' if self.dims == 1 else 'H, W'}), got {in_shape}")
        self.kernel_size: tuple[int, ...] = _tuple(kernel_size, self.dims, "kernel_size")
        self.stride: tuple[int, ...] = _tuple(stride if stride is not None else kernel_size, self.dims, "stride")
        self.padding: tuple[int, ...] = _tuple(padding, self.dims, "padding")
        self.dilation: tuple[int, ...] = _tuple(dilation, self.dims, "dilation")
        self.ceil_mode: bool = bool(ceil_mode)
        probe = self._pool(torch.zeros((1, *in_shape)))[0]  # the output shape as torch computes it (and its checks)
        super().__init__(in_shape, tuple(probe.shape[1:]), ())

    def _pool(self, x: torch.Tensor):
        fn = F.max_pool1d if self.dims == 1 else F.max_pool2d
        return fn(x, self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode, return_indices=True)

    def select(self, x: torch.Tensor) -> tuple[torch.Tensor, Selection]:
        """``(maxpool(x), S_x)`` for a batch ``x``."""
        value, indices = self._pool(x.reshape(x.shape[0], *self.in_shape))
        return value, Selection(self.in_shape, self.out_shape, indices)

    def _linear(self, x):
        raise RuntimeError(
            f"{type(self).__name__}: max-pooling is linear only once a forward pass has selected the maxima; "
            "use the network at its forward record (net.at(rec)), or op.select(x)"
        )

    _linear_transpose = _linear

    def _hyper(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, dilation={self.dilation}"


class MaxPool1d(MaxPool):
    """``nn.MaxPool1d`` on inputs of shape ``(C, L)``."""

    dims = 1


class MaxPool2d(MaxPool):
    """``nn.MaxPool2d`` on inputs of shape ``(C, H, W)``."""

    dims = 2
