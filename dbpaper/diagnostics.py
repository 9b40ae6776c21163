"""Numerical checks of the adjoint identities (Section 2.1, Theorem 2.3).

The errors are normalised as in ODL's operator diagnostics: the defect of
``<A u, w> = <u, A^* w>`` is divided by ``||A|| ||u|| ||w||``, with the
operator norm ``||A||`` estimated by power iteration. For the transposed
operator ``A = K(theta, .)``; for the weight-adjoint ``A = K(., x)``. A
normalised error is scale-free, so one tolerance ``n * eps`` fits every
operator and size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from .operators.base import BilinearOperator

__all__ = ["AdjointErrors", "adjoint_errors", "dtype_tolerance", "inner", "operator_norm", "theorem_2_3_errors"]


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The Euclidean inner product ``<a, b>`` over all coordinates (batch included)."""
    return torch.sum(a * b)


def dtype_tolerance(dtype: torch.dtype, factor: float = 100.0) -> float:
    """A tolerance tied to the dtype: ``factor * finfo(dtype).eps``."""
    return factor * torch.finfo(dtype).eps


@dataclasses.dataclass(frozen=True)
class AdjointErrors:
    """Normalised defects of the two identities of Section 2.1.

    ``transpose``: ``|<K(θ,x), y> - <x, Kᵀ(θ,y)>| / (‖K(θ,·)‖ ‖x‖ ‖y‖)``;
    ``weight_adjoint``: ``|<K(θ,x), y> - <θ, K□(x,y)>| / (‖K(·,x)‖ ‖θ‖ ‖y‖)``.
    """

    transpose: float
    weight_adjoint: float

    @property
    def max(self) -> float:
        """The larger of the two errors."""
        return max(self.transpose, self.weight_adjoint)


def operator_norm(
    forward: Callable[[torch.Tensor], torch.Tensor],
    adjoint: Callable[[torch.Tensor], torch.Tensor],
    like: torch.Tensor,
    iterations: int = 30,
    generator: torch.Generator | None = None,
) -> float:
    """Estimate ``||A||`` by power iteration on ``A^* A``, starting from a random ``u`` shaped like ``like``."""
    u = torch.randn(like.shape, dtype=like.dtype, device="cpu", generator=generator).to(like.device)
    sigma = 0.0
    for _ in range(iterations):
        norm = torch.linalg.vector_norm(u)
        if norm == 0:
            return 0.0
        u = u / norm
        au = forward(u)
        sigma = float(torch.linalg.vector_norm(au))
        u = adjoint(au)
    return sigma


def adjoint_errors(
    op: BilinearOperator,
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm_iterations: int = 30,
    seed: int = 0,
) -> AdjointErrors:
    """Normalised errors of ``<K(θ,x), y> = <x, Kᵀ(θ,y)> = <θ, K□(x,y)>`` (Section 2.1).

    Parameters
    ----------
    op : BilinearOperator
        The operator ``K``.
    theta, x, y : torch.Tensor
        A parameter of shape ``op.param_shape`` and batches ``(N, *op.in_shape)``
        and ``(N, *op.out_shape)``.
    norm_iterations : int
        Power iterations for the operator norms in the normalisation.
    seed : int
        Seed of the power iteration's start vector.

    Returns
    -------
    AdjointErrors
        The two normalised errors (0 for exact adjoints, a few ``eps`` in practice).
    """
    if not isinstance(op, BilinearOperator):
        raise TypeError(f"adjoint_errors: op must be a BilinearOperator, got {type(op).__name__}")
    with torch.no_grad():
        kxy = inner(op.apply(theta, x), y)
        x_kty = inner(x, op.transpose(theta, y))
        th_kby = inner(theta, op.weight_adjoint(x, y))
        g = torch.Generator().manual_seed(seed)
        norm_x = operator_norm(lambda u: op.apply(theta, u), lambda w: op.transpose(theta, w), x, norm_iterations, g)
        norm_t = operator_norm(lambda t: op.apply(t, x), lambda w: op.weight_adjoint(x, w), theta, norm_iterations, g)
        ny = float(torch.linalg.vector_norm(y))
        scale_x = norm_x * float(torch.linalg.vector_norm(x)) * ny
        scale_t = norm_t * float(torch.linalg.vector_norm(theta)) * ny
        e_t = float(abs(kxy - x_kty)) / scale_x if scale_x > 0 else float(abs(kxy - x_kty))
        e_w = float(abs(kxy - th_kby)) / scale_t if scale_t > 0 else float(abs(kxy - th_kby))
    return AdjointErrors(transpose=e_t, weight_adjoint=e_w)


def _vjp(fn, primal: torch.Tensor, cotangent: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        primal = primal.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(primal), primal, cotangent)
    return g


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(torch.linalg.vector_norm(b))
    diff = float(torch.linalg.vector_norm(a - b))
    return diff / scale if scale > 0 else diff


def theorem_2_3_errors(op: BilinearOperator, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Relative errors of the hand-written adjoints against torch autograd (the independent oracle).

    Returns a dict with

    * ``"transpose_vs_vjp"``: ``Kᵀ(θ, y)`` against the VJP of ``x ↦ K(θ, x)``;
    * ``"weight_adjoint_vs_vjp"``: ``K□(x, y)`` against the VJP of ``θ ↦ K(θ, x)``;
    * ``"adjoint_of_transpose_in_theta"``: the VJP of ``θ ↦ Kᵀ(θ, y)`` at ``x``
      against ``K□(x, y)`` (Theorem 2.3, first half);
    * ``"adjoint_of_weight_adjoint_in_x"``: the VJP of ``x ↦ K□(x, y)`` at
      ``θ`` against ``Kᵀ(θ, y)`` (Theorem 2.3, second half).
    """
    kt = op.transpose(theta, y).detach()
    kb = op.weight_adjoint(x, y).detach()
    return {
        "transpose_vs_vjp": _rel(kt, _vjp(lambda u: op.apply(theta, u), x, y)),
        "weight_adjoint_vs_vjp": _rel(kb, _vjp(lambda t: op.apply(t, x), theta, y)),
        "adjoint_of_transpose_in_theta": _rel(_vjp(lambda t: op.transpose(t, y), theta, x), kb),
        "adjoint_of_weight_adjoint_in_x": _rel(_vjp(lambda u: op.weight_adjoint(u, y), x, theta), kt),
    }
