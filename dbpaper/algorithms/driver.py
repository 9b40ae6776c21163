"""Putting Algorithms 1–3 together: ``R``, ``∇_θ R``, ``∇_b R`` and, optionally, the loss gradient of Section 4.5."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..activations import Softmax
from ..network import ForwardRecord, Network
from .initial_values import loss_value
from .passes import (
    LayerGradients,
    backward_backward_pass,
    backward_pass,
    forward_backward_pass,
    standard_backprop,
)

__all__ = ["ALGORITHMS", "Result", "double_backprop", "general", "loss_kind", "register_algorithm"]


@dataclasses.dataclass(eq=False)
class Result:
    """The outcome of one double-backpropagation step.

    ``value`` is ``R``; ``gradients`` holds ``∇_θj R`` and ``∇_bj R`` per layer
    (and ``η_1``, from which ``∇_{x_0} R = K_1ᵀ(θ_1, η_1)``). With
    ``with_loss=True``, ``loss`` and ``loss_gradients`` hold the mean loss and
    its gradients.
    """

    value: torch.Tensor
    gradients: LayerGradients
    loss: torch.Tensor | None = None
    loss_gradients: LayerGradients | None = None
    algorithm: str = "general"


def loss_kind(net: Network, penalty) -> str:
    """The loss used with ``with_loss=True``: a classical penalty's own loss, else NLL for softmax, else squared error."""
    own = getattr(penalty, "loss", None)
    if own is not None:
        return own
    return "nll" if isinstance(net.output_map, Softmax) else "mse"


def general(net: Network, rec: ForwardRecord, penalty, y) -> tuple[torch.Tensor, LayerGradients, list]:
    """Algorithms 1–3 once per ``v`` of the penalty (class by class for the Jacobian penalty).

    Returns ``R``, the gradients and the backward passes (kept only for a
    single seed, for the reuse of Section 4.5).
    """
    n = rec.xs[0].shape[0]
    value = rec.xs[0].new_zeros(())
    grads = LayerGradients.zeros(net.depth)
    passes = []
    single = penalty.num_seeds(net) == 1
    for seed in penalty.seeds(net, rec, y):
        bp = backward_pass(net, rec, seed.zeta_L())  # Algorithm 1
        xi_0 = bp.xis[0]
        value = value + penalty.p.value(xi_0).sum() / n
        bbp = backward_backward_pass(net, rec, penalty.p.grad(xi_0) / n)  # Algorithm 2
        eta_L = seed.eta_L(bbp.hs[net.depth])  # Appendix B
        grads.add(forward_backward_pass(net, rec, bp, bbp, eta_L))  # Algorithm 3
        if single:
            passes.append(bp)
    return value, grads, passes


#: name -> implementation ``(net, rec, penalty, y) -> (R, gradients, backward passes)``
ALGORITHMS: dict[str, Callable] = {"general": general}


def register_algorithm(name: str, fn: Callable, *, applies: Callable | None = None) -> None:
    """Register an algorithm under ``name`` (``applies(net, penalty)`` tells ``"auto"`` when it can be used)."""
    ALGORITHMS[name] = fn
    if applies is not None:
        _APPLIES[name] = applies


_APPLIES: dict[str, Callable] = {}


def _choose(net: Network, penalty, algorithm: str) -> str:
    if algorithm == "auto":
        for name, applies in _APPLIES.items():
            if applies(net, penalty):
                return name
        return "general"
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose from {sorted(ALGORITHMS) + ['auto']}")
    if algorithm in _APPLIES and not _APPLIES[algorithm](net, penalty):
        raise ValueError(f"algorithm {algorithm!r} does not apply to {penalty!r} on this network")
    return algorithm


def double_backprop(
    net: Network,
    x: torch.Tensor,
    penalty,
    y: torch.Tensor | None = None,
    *,
    algorithm: str = "general",
    with_loss: bool = False,
) -> Result:
    """Evaluate ``R`` and its parameter gradients with the explicit algorithms (no autograd).

    Parameters
    ----------
    net : Network
        The network of eq. (8).
    x : torch.Tensor
        A batch of inputs ``x_0``, shape ``(N, *net.in_shape)``.
    penalty : dbpaper.penalties.Penalty
        The penalty term of Section 4.1.
    y : torch.Tensor, optional
        Labels (class indices) or targets, for classical double backpropagation
        and for ``with_loss``.
    algorithm : str
        ``"general"`` (Algorithms 1–3, class by class for several ``v``) or any
        registered algorithm, or ``"auto"``.
    with_loss : bool
        Also return the loss and its gradients (Section 4.5), reusing the
        backward pass of classical double backpropagation when the losses coincide.
    """
    penalty.check(net, y)
    name = _choose(net, penalty, algorithm)
    with torch.no_grad():
        rec = net.forward(x)
        value, grads, passes = ALGORITHMS[name](net, rec, penalty, y)
        result = Result(value=value, gradients=grads, algorithm=name)
        if with_loss:
            kind = loss_kind(net, penalty)
            if y is None:
                raise ValueError("with_loss=True needs y (labels or targets)")
            n = x.shape[0]
            result.loss = loss_value(net.output_map, rec.output, y, kind)
            if getattr(penalty, "loss", None) == kind and passes:
                # Section 4.5: the ζ_j of classical double backpropagation are the loss's own
                result.loss_gradients = standard_backprop(net, rec, None, xis_reuse=passes[0]).scaled(1.0 / n)
            else:
                from .initial_values import LossGradientSeed

                zeta_L = LossGradientSeed(net.output_map, rec.output, y, kind).zeta_L() / n
                result.loss_gradients = standard_backprop(net, rec, zeta_L)
    return result
