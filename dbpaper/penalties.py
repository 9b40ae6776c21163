"""Penalty terms of Section 4.1: ``R = p((dx_L/dx_0)* v)``, eq. (10).

A penalty is a choice of ``p`` and of one or more ``v``; its value is the
mean over the batch of the per-example penalty, summed over its ``v``'s:

    R = Σ_k (1/N) Σ_n p(ξ_0^{(k, n)}),   ξ_0^{(k, n)} = (dx_L/dx_0)* v^{(k, n)}.

=====================================  ============================================  =================
penalty                                ``v``                                         ``p``
=====================================  ============================================  =================
:class:`ClassicalDoubleBackprop`       ``∇_{x_L} ℓ(x_L, y)`` (Section 4.1.1)         ``‖·‖²``
:class:`OutputNodeGradient`            ``e^{(i)}`` (Section 4.1.2)                   ``‖·‖²``
:class:`JacobianFrobenius`             ``e^{(1)}, ..., e^{(C)}`` (Section 4.1.2)     ``‖·‖²``
:class:`OperatorNorm`                  random unit ``v`` after power iterations      ``‖·‖``
=====================================  ============================================  =================

The penalties are descriptions; the algorithms in :mod:`dbpaper.algorithms`
evaluate them. Each penalty yields *seeds* (Appendix B) for a recorded
forward pass.
"""

from __future__ import annotations

import abc
import operator
from collections.abc import Iterator

import torch

from .algorithms.initial_values import ConstantSeed, LossGradientSeed, Seed
from .network import ForwardRecord, Network

__all__ = [
    "ClassicalDoubleBackprop",
    "JacobianFrobenius",
    "Norm",
    "OperatorNorm",
    "OutputNodeGradient",
    "Penalty",
    "SquaredNorm",
]


class SquaredNorm:
    """``p(u) = ‖u‖²`` per example, ``∇p(u) = 2u``."""

    def value(self, xi: torch.Tensor) -> torch.Tensor:
        return torch.sum(xi * xi, dim=tuple(range(1, xi.ndim)))

    def grad(self, xi: torch.Tensor) -> torch.Tensor:
        return 2 * xi

    def __repr__(self) -> str:
        return "SquaredNorm()"


class Norm:
    """``p(u) = ‖u‖`` per example, ``∇p(u) = u / ‖u‖`` (0 where ``u = 0``)."""

    def value(self, xi: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(xi.reshape(xi.shape[0], -1), dim=1)

    def grad(self, xi: torch.Tensor) -> torch.Tensor:
        n = self.value(xi).reshape((-1,) + (1,) * (xi.ndim - 1))
        return torch.where(n > 0, xi / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(xi))

    def __repr__(self) -> str:
        return "Norm()"


class Penalty(abc.ABC):
    """A penalty ``R = Σ_k mean_n p(ξ_0^{(k)})`` of the form (10)."""

    p: SquaredNorm | Norm = SquaredNorm()
    #: whether the penalty needs labels / targets ``y``
    needs_y: bool = False

    @abc.abstractmethod
    def seeds(self, net: Network, rec: ForwardRecord, y: torch.Tensor | None) -> Iterator[Seed]:
        """The ``v``'s of eq. (10) with the output map, one seed each."""

    def num_seeds(self, net: Network) -> int:
        """How many ``v``'s (backward passes) the penalty needs."""
        return 1

    def check(self, net: Network, y: torch.Tensor | None) -> None:
        """Raise a clear error if the penalty does not fit the network or ``y``."""
        if self.needs_y and y is None:
            raise ValueError(f"{self!r} needs y (labels or targets)")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class ClassicalDoubleBackprop(Penalty):
    """Drucker & LeCun's ``‖∇_{x_0} ℓ(x_L, y)‖²`` (eqs. (1), (11)).

    ``loss="nll"``: ``y`` holds class indices; with a softmax output
    ``ℓ = −log x_L[y]``, with an identity output the cross-entropy of the logits.
    ``loss="mse"``: ``ℓ = ‖x_L − y‖²`` with targets ``y`` shaped like ``x_L``.
    """

    needs_y = True

    def __init__(self, loss: str = "nll"):
        if loss not in ("nll", "mse"):
            raise ValueError(f"ClassicalDoubleBackprop: loss must be 'nll' or 'mse', got {loss!r}")
        self.loss = loss

    def seeds(self, net, rec, y):
        yield LossGradientSeed(net.output_map, rec.output, y, self.loss)


class OutputNodeGradient(Penalty):
    """``‖∇_{x_0} x_L^i‖²`` for one output node ``i`` (Section 4.1.2); ``v = e^{(i)}``.

    With an identity output (no final softmax) this penalises the gradient of
    the logit ``z_L^i``.
    """

    def __init__(self, index: int):
        self.index = _index(index, "OutputNodeGradient")

    def check(self, net, y):
        c = net.layers[-1].op.out_numel
        if self.index >= c:
            raise ValueError(f"OutputNodeGradient: index {self.index} is out of range for {c} outputs")

    def seeds(self, net, rec, y):
        yield ConstantSeed(net.output_map, rec.output, _unit(rec.output, self.index))


class JacobianFrobenius(Penalty):
    """``‖J‖_F² = Σ_i ‖∇_{x_0} x_L^i‖²``: ``C`` penalties of the form (10) (Section 4.1.2)."""

    def num_seeds(self, net):
        return net.layers[-1].op.out_numel

    def seeds(self, net, rec, y):
        for i in range(self.num_seeds(net)):
            yield ConstantSeed(net.output_map, rec.output, _unit(rec.output, i))


class OperatorNorm(Penalty):
    """The randomised lower bound ``‖(dx_L/dx_0)* v‖`` of the operator norm (Section 4.1.3).

    ``v`` is drawn uniformly from the unit sphere (a normalised Gaussian) per
    example; ``iterations - 1`` power iterations ``v ← J Jᵀ v / ‖J Jᵀ v‖``
    then improve it, so ``iterations=1`` is the single random projection of
    eq. (13). ``v`` is treated as a constant (no gradient flows through the
    power iteration), which makes the penalty exactly of the form (10) with a
    network-independent ``v``. Draws come from ``generator`` (a CPU
    ``torch.Generator``) when given.
    """

    p = Norm()

    def __init__(self, iterations: int = 1, generator: torch.Generator | None = None):
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"OperatorNorm: iterations must be an int >= 1, got {iterations!r}")
        self.iterations = iterations
        self.generator = generator

    def __repr__(self) -> str:
        return f"OperatorNorm(iterations={self.iterations}{', generator=...' if self.generator is not None else ''})"

    def sample_v(self, like: torch.Tensor) -> torch.Tensor:
        """A per-example random unit vector shaped like ``like`` (drawn on the CPU for reproducibility)."""
        v = torch.randn(like.shape, generator=self.generator, dtype=like.dtype, device="cpu").to(like.device)
        return _normalize(v)

    def seeds(self, net, rec, y):
        from .algorithms.passes import backward_pass, linearized_forward

        v = self.sample_v(rec.output)
        for _ in range(self.iterations - 1):
            xi_0 = backward_pass(net, rec, net.output_map.jvp(rec.output, v)).xis[0]
            v = _normalize(linearized_forward(net, rec, xi_0))
        yield ConstantSeed(net.output_map, rec.output, v)


def _index(index, who: str) -> int:
    """A non-negative int from ``index`` (Python or NumPy integers, 0-d integer tensors); bools are refused."""
    if isinstance(index, bool) or (isinstance(index, torch.Tensor) and index.dtype == torch.bool):
        raise ValueError(f"{who}: index must be a non-negative integer, got the bool {index!r}")
    try:
        i = operator.index(index)
    except TypeError:
        raise ValueError(f"{who}: index must be a non-negative integer, got {index!r}") from None
    if i < 0:
        raise ValueError(f"{who}: index must be a non-negative integer, got {i}")
    return i


def _unit(like: torch.Tensor, index: int) -> torch.Tensor:
    v = torch.zeros_like(like).reshape(like.shape[0], -1)
    v[:, index] = 1
    return v.reshape(like.shape)


def _normalize(v: torch.Tensor) -> torch.Tensor:
    n = torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1).reshape((-1,) + (1,) * (v.ndim - 1))
    return v / torch.where(n > 0, n, torch.ones_like(n))


