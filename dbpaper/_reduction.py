"""``reduction=`` of the entry points: the batch mean (default), the sum, or the per-example penalty.

``"mean"`` is ``R`` of eq. (10), ``mean_n R_n`` with ``R_n = Σ_k p(ξ_{0,n}^{(k)})``
the penalty of example ``n``; ``"sum"`` is ``Σ_n R_n = N · R``; ``"none"`` is
the vector ``(R_1, ..., R_N)``.

The explicit algorithms compute gradients of a fixed scalar at call time. For
``"none"`` the scalar is only known at backward time: the backward of the
returned vector receives weights ``w`` (``w = 1`` for ``R.sum().backward()``)
and must deliver ``∇ Σ_n w_n R_n``. Every algorithm's gradient is linear in
the gradient ``q_0 = ∇p(ξ_0)`` it seeds its forward-backward pass with, per
example, so the weights enter exactly as ``p`` replaced by ``(N w_n) p``
(:func:`weighted`): the batch mean of that ``p`` is ``Σ_n w_n R_n``. The
weighted ``p`` is no longer a plain squared norm, so the squared-norm
algorithms (Algorithm 4, the Gram shortcut) do not apply to it and the
backward runs the cheapest algorithm that takes a general ``p`` (for the
Jacobian penalty: Algorithms 1–3 once per output). The forward record of the
call is reused; the values come from one backward pass per ``v``.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch.autograd.function import once_differentiable

from .penalties import Penalty

__all__ = ["REDUCTIONS", "PerExample", "Reduction", "WeightedPenalty", "check_reduction", "per_example_autograd", "weighted"]

#: What ``reduction=`` accepts.
Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def check_reduction(reduction: object) -> str:
    """``reduction`` itself, or a ValueError naming the accepted values."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _rows(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return c.reshape((-1,) + (1,) * (like.ndim - 1))


class _WeightedP:
    """``p`` times a per-example weight ``c_n``: ``value(ξ)_n = c_n p(ξ_n)``, ``∇ = c_n ∇p(ξ_n)``."""

    def __init__(self, p, c: torch.Tensor) -> None:
        self.inner, self.c = p, c

    def value(self, xi: torch.Tensor) -> torch.Tensor:
        return self.inner.value(xi) * self.c.to(xi.dtype)

    def grad(self, xi: torch.Tensor) -> torch.Tensor:
        return self.inner.grad(xi) * _rows(self.c.to(xi.dtype), xi)

    def __repr__(self) -> str:  # no values: a plan is chosen by what p is, not by its weights
        return f"Weighted({self.inner!r})"


class WeightedPenalty(Penalty):
    """A bound penalty with ``p`` replaced by ``c_n p`` and, where given, its ``v``'s fixed (see :func:`weighted`).

    Everything else (the ``v``'s, the loss, the declared properties) is the
    bound penalty's; ``p`` declares no ``squared_norm_scale``, so the
    squared-norm algorithms do not apply to it.
    """

    def __init__(self, bound: Penalty, c: torch.Tensor, seeds: list | None = None) -> None:
        self._inner, self._seeds = bound, seeds
        self.p = _WeightedP(bound.p, c)
        self.needs_y = bound.needs_y
        self.constant_v = bound.constant_v
        self.sums_unit_outputs = bound.sums_unit_outputs
        self.loss = bound.loss

    def seeds(self, net, rec, y, linear=None):
        return iter(self._seeds) if self._seeds is not None else self._inner.seeds(net, rec, y, linear)

    def autograd_terms(self, model, xin, out, y):
        raise NotImplementedError("a weighted penalty is only run by the explicit algorithms")

    def num_seeds(self, net) -> int:
        return self._inner.num_seeds(net)

    @property
    def extra_passes(self) -> int:
        return self._inner.extra_passes

    def check_outputs(self, outputs: int) -> None:
        self._inner.check_outputs(outputs)

    def bind(self, x0, y) -> Penalty:
        return self  # bound once, by weighted()

    def __repr__(self) -> str:  # no weights: a plan is chosen by what the penalty is, not by its weights
        return f"Weighted({self._inner!r})"


def weighted(penalty: Penalty, x0: torch.Tensor, y: torch.Tensor | None, c: torch.Tensor, seeds: list | None = None) -> Penalty:
    """``penalty`` bound to the batch ``x0`` with ``p`` replaced by ``c_n p``.

    ``seeds``: the ``v``'s to use (those the values were computed with), instead of drawing them again.
    """
    return WeightedPenalty(penalty.bind(x0, y), c, seeds)


def per_example_autograd(penalty: Penalty) -> Penalty:
    """A copy of ``penalty`` whose autograd terms are per example, shape ``(N,)``, instead of batch means."""
    out = copy.copy(penalty)
    out._per_example = True
    return out


class PerExample(torch.autograd.Function):
    """The per-example vector ``(R_n)``, whose backward with weights ``w`` runs ``backward_fn(w)``.

    ``PerExample.apply(values, backward_fn, x, *params)``; ``backward_fn(w)``
    returns ``(grad_x or None, [grad of each param])``. The parameters and
    ``x`` are saved, so that an in-place change before ``backward()`` raises.
    """

    @staticmethod
    def forward(ctx, values, backward_fn, x, *params):
        ctx.backward_fn = backward_fn
        ctx.save_for_backward(x, *params)
        return values.detach().clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, w):
        _ = ctx.saved_tensors  # checks the version counters of x and the parameters
        grad_x, grads = ctx.backward_fn(w)
        ctx.backward_fn = None  # the forward record is freed with it
        if grad_x is None and ctx.needs_input_grad[2]:
            grad_x = torch.zeros_like(ctx.saved_tensors[0])
        return (None, None, grad_x, *grads)
