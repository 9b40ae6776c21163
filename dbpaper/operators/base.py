"""The bilinear-operator interface of Section 2.1.

A bilinear operator ``K : P x X -> Y`` (eq. (2)) comes with two adjoints:

* the *transposed operator* ``K^T : P x Y -> X`` (eq. (5)), the adjoint of
  ``K(theta, .)``, so that ``<K(theta, x), y> = <x, K^T(theta, y)>``;
* the *weight-adjoint* ``K^box : X x Y -> P`` (eq. (6)), the adjoint of
  ``K(., x)``, so that ``<K(theta, x), y> = <theta, K^box(x, y)>``.

Shape conventions, written once:

* ``theta`` has shape :attr:`BilinearOperator.param_shape` (the layout of the
  matching torch module's ``weight``); it is shared by the whole batch;
* ``x`` has shape ``(N, *in_shape)`` and ``y`` has shape ``(N, *out_shape)``
  with a leading batch dimension ``N``;
* ``weight_adjoint(x, y)`` sums over the batch, i.e. it is the adjoint of
  ``theta -> (K(theta, x_n))_n`` on the direct sum ``Y^N``.

Every evaluation through the public methods is counted when an
:func:`dbpaper.counting.count` context is active (Section 5 counts these).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch

from .. import counting

__all__ = ["BilinearOperator"]



def _shape(t: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(s) for s in t)


class BilinearOperator(abc.ABC):
    """Abstract base of every bilinear operator.

    Subclasses fix their hyperparameters and the per-example input shape at
    construction and implement ``_apply``, ``_transpose`` and
    ``_weight_adjoint``; the public methods validate their arguments, count
    the evaluation and dispatch.
    """

    #: ``False`` for parameter-free operators (pooling, down-sampling): their
    #: ``theta`` is a fixed scalar 1 that is never trained.
    trainable: bool = True
    #: ``True`` for locally linear operators whose linear map the forward pass selects (max-pooling):
    #: ``select(x) -> (value, fixed operator)``
    selects: bool = False

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], param_shape: Sequence[int]):
        self.in_shape: tuple[int, ...] = _shape(in_shape)
        self.out_shape: tuple[int, ...] = _shape(out_shape)
        self.param_shape: tuple[int, ...] = _shape(param_shape)
        if any(s <= 0 for s in self.in_shape + self.out_shape + self.param_shape):
            raise ValueError(
                f"{self!r}: every size must be positive, got in_shape={self.in_shape}, "
                f"out_shape={self.out_shape}, param_shape={self.param_shape}"
            )

    # -- public, validated and counted ------------------------------------------------
    def apply(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Evaluate ``K(theta, x)`` for a batch ``x`` of shape ``(N, *in_shape)``."""
        self._check_param(theta, "theta")
        self._check_batch(x, self.in_shape, "x")
        self._check_same(theta, x)
        counting.record("apply")
        return self._apply(theta, x)

    def transpose(self, theta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Evaluate the transposed operator ``K^T(theta, y)`` of eq. (5)."""
        self._check_param(theta, "theta")
        self._check_batch(y, self.out_shape, "y")
        self._check_same(theta, y)
        counting.record("transpose")
        return self._transpose(theta, y)

    def weight_adjoint(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Evaluate the weight-adjoint ``K^box(x, y)`` of eq. (6), summed over the batch."""
        self._check_batch(x, self.in_shape, "x")
        self._check_batch(y, self.out_shape, "y")
        self._check_same(x, y)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{self!r}: x and y have different batch sizes, {tuple(x.shape)} and {tuple(y.shape)}")
        counting.record("weight_adjoint")
        return self._weight_adjoint(x, y)

    def unit_parameter(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
        """Return the fixed parameter ``theta = 1`` of a parameter-free operator."""
        if self.trainable:
            raise TypeError(f"{self!r} has trainable parameters of shape {self.param_shape}; it has no unit parameter")
        return torch.ones((), dtype=dtype, device=device)

    @property
    def in_numel(self) -> int:
        """Dimension of the input space X (per example)."""
        return math.prod(self.in_shape)

    @property
    def out_numel(self) -> int:
        """Dimension of the output space Y (per example)."""
        return math.prod(self.out_shape)

    @property
    def macs(self) -> int:
        """Multiply-adds of one evaluation of ``K`` on one example (``Kᵀ`` and ``K□`` cost the same).

        Each output coordinate of a layer with weights is an inner product
        with one slice of ``θ``: ``out_numel`` times the slice size
        (``_macs_per_output``). Parameter-free operators (pooling,
        down-sampling) count one multiply-add per output coordinate. The tests
        compare this with :class:`torch.utils.flop_counter.FlopCounterMode`.
        """
        return self.out_numel * self._macs_per_output()

    def _macs_per_output(self) -> int:
        """Multiply-adds per output coordinate: the weight slice one output reads (dense, convolutions)."""
        if not self.trainable:
            return 1
        return math.prod(self.param_shape[1:])

    # -- to implement ----------------------------------------------------------------------
    @abc.abstractmethod
    def _apply(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _transpose(self, theta: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _weight_adjoint(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def _hyper(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self._hyper()
        return f"{type(self).__name__}(in_shape={self.in_shape}{', ' + extra if extra else ''})"

    # -- validation ------------------------------------------------------------------------
    def _check_param(self, theta: torch.Tensor, name: str) -> None:
        if not isinstance(theta, torch.Tensor):
            raise TypeError(f"{self!r}: {name} must be a torch.Tensor, got {type(theta).__name__}")
        if tuple(theta.shape) != self.param_shape:
            raise ValueError(
                f"{self!r}: {name} has shape {tuple(theta.shape)}, expected the layout {self.param_shape}"
            )
        if not theta.is_floating_point():
            raise TypeError(f"{self!r}: {name} must be floating point, got {theta.dtype}")

    def _check_batch(self, t: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{self!r}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != len(shape) + 1 or tuple(t.shape[1:]) != shape:
            raise ValueError(
                f"{self!r}: {name} has shape {tuple(t.shape)}, expected (N, {', '.join(map(str, shape))})"
            )
        if not t.is_floating_point():
            raise TypeError(f"{self!r}: {name} must be floating point, got {t.dtype}")

    def _check_same(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if a.dtype != b.dtype:
            raise ValueError(f"{self!r}: dtypes differ ({a.dtype} and {b.dtype}); convert explicitly")
        if a.device != b.device:
            raise ValueError(f"{self!r}: devices differ ({a.device} and {b.device})")
