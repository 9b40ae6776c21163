"""Coordinate-wise activations (Definition 3.1) and the output maps of Appendix B.

A coordinate-wise activation ``g`` acts through the symmetric bilinear
operator ``M(a, v) = a ⊙ v``: ``G'(z) v = g'(z) ⊙ v`` and
``G''(z) v = g''(z) ⊙ v`` (eq. (9)). Each activation is a small final class
with ``f``, ``df`` (``g'``) and ``d2f`` (``g''``) and the flag
``locally_linear`` (``g'' = 0`` almost everywhere, Section 5.2).

Derivatives at the kinks follow torch's conventions (ReLU: ``g'(0) = 0``;
leaky ReLU: ``g'(0) = alpha``; ELU: ``g'(0) = alpha``), so the package agrees
with autograd everywhere, not only almost everywhere.

The output maps are not all coordinate-wise: :class:`Softmax` acts through
its symmetric Jacobian ``S(x) = diag(x) - x x^T`` (Appendix B.1).
"""

from __future__ import annotations

import abc

import torch

__all__ = [
    "Activation",
    "ELU",
    "Identity",
    "LeakyReLU",
    "OutputMap",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "Tanh",
    "IdentityOutput",
]


class Activation(abc.ABC):
    """A coordinate-wise, twice (almost everywhere) differentiable ``g``."""

    #: ``True`` when ``g'' = 0`` almost everywhere (Section 5.2).
    locally_linear: bool = False

    @abc.abstractmethod
    def f(self, z: torch.Tensor) -> torch.Tensor:
        """``g(z)``."""

    @abc.abstractmethod
    def df(self, z: torch.Tensor) -> torch.Tensor:
        """``g'(z)``, so that ``G'(z) v = g'(z) ⊙ v``."""

    def d2f(self, z: torch.Tensor) -> torch.Tensor:
        """``g''(z)``, so that ``G''(z) v = g''(z) ⊙ v``; zero for locally linear ``g``."""
        return torch.zeros_like(z)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))


class Identity(Activation):
    """``g(z) = z``."""

    locally_linear = True

    def f(self, z):
        return z

    def df(self, z):
        return torch.ones_like(z)


class ReLU(Activation):
    """``g(z) = max(z, 0)``, with ``g'(0) = 0`` as in torch."""

    locally_linear = True

    def f(self, z):
        return torch.relu(z)

    def df(self, z):
        return (z > 0).to(z.dtype)


class LeakyReLU(Activation):
    """``g(z) = z`` for ``z > 0`` and ``alpha z`` otherwise (``nn.LeakyReLU(negative_slope=alpha)``)."""

    locally_linear = True

    def __init__(self, alpha: float = 0.01):
        self.alpha = float(alpha)

    def f(self, z):
        return torch.where(z > 0, z, self.alpha * z)

    def df(self, z):
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, self.alpha))


class Tanh(Activation):
    """``g = tanh``, ``g' = 1 - g^2``, ``g'' = -2 g g'``."""

    def f(self, z):
        return torch.tanh(z)

    def df(self, z):
        t = torch.tanh(z)
        return 1 - t * t

    def d2f(self, z):
        t = torch.tanh(z)
        return -2 * t * (1 - t * t)


class Sigmoid(Activation):
    """``g = sigma``, ``g' = sigma (1 - sigma)``, ``g'' = g' (1 - 2 sigma)``."""

    def f(self, z):
        return torch.sigmoid(z)

    def df(self, z):
        s = torch.sigmoid(z)
        return s * (1 - s)

    def d2f(self, z):
        s = torch.sigmoid(z)
        return s * (1 - s) * (1 - 2 * s)


class Softplus(Activation):
    """``g(z) = log(1 + exp(beta z)) / beta``, linear above ``beta z > threshold`` (``nn.Softplus``)."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        self.beta = float(beta)
        self.threshold = float(threshold)

    def f(self, z):
        return torch.nn.functional.softplus(z, beta=self.beta, threshold=self.threshold)

    def df(self, z):
        bz = self.beta * z
        return torch.where(bz > self.threshold, torch.ones_like(z), torch.sigmoid(bz))

    def d2f(self, z):
        bz = self.beta * z
        s = torch.sigmoid(bz)
        return torch.where(bz > self.threshold, torch.zeros_like(z), self.beta * s * (1 - s))


class ELU(Activation):
    """``g(z) = z`` for ``z > 0`` and ``alpha (exp(z) - 1)`` otherwise (``nn.ELU``)."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = float(alpha)

    def f(self, z):
        return torch.where(z > 0, z, self.alpha * torch.expm1(z))

    def df(self, z):
        return torch.where(z > 0, torch.ones_like(z), self.alpha * torch.exp(z))

    def d2f(self, z):
        # torch's double backward takes g''(0) = 0 while g'(0) = alpha; we mirror both
        return torch.where(z >= 0, torch.zeros_like(z), self.alpha * torch.exp(z))


class OutputMap(abc.ABC):
    """The last layer's map ``g_L`` (Appendix B): softmax or identity."""

    name: str

    @abc.abstractmethod
    def f(self, z: torch.Tensor) -> torch.Tensor:
        """``x_L = g_L(z_L)``."""

    @abc.abstractmethod
    def jvp(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``(dx_L/dz_L) u``, written in terms of the output ``x = x_L``; self-adjoint."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self).__name__)


class Softmax(OutputMap):
    """``x = softmax(z)`` over the last dimension; ``dx/dz = S(x) = diag(x) - x x^T`` (Appendix B.1)."""

    name = "softmax"

    def f(self, z):
        return torch.softmax(z, dim=-1)

    def jvp(self, x, u):
        return x * (u - torch.sum(x * u, dim=-1, keepdim=True))


class IdentityOutput(OutputMap):
    """``x_L = z_L``: penalties on logits or regression outputs (Appendix B.3)."""

    name = "identity"

    def f(self, z):
        return z

    def jvp(self, x, u):
        return u
