"""Running a registered algorithm on a recorded forward pass: ``R`` alone, ``R`` with its gradients, or ``ℓ + λR``.

What the entry points call once they have read the network and chosen the algorithm (no planning, no validation here).
"""

from __future__ import annotations

import torch

from ..losses import loss_for, loss_value
from ..network import ForwardRecord, Network
from ..penalties import Penalty
from .general import Linearization, Result, _reusable, loss_gradients, loss_seed
from .passes import backward_pass
from .registry import REGISTRY, LossFold

__all__ = ["compute", "compute_objective", "penalty_value", "per_example_values"]


def penalty_value(net: Network, rec: ForwardRecord, penalty: Penalty, y: torch.Tensor | None) -> torch.Tensor:
    """``R`` alone: Algorithm 1 once per ``v`` and ``p(ξ_0)``, no gradients (what a call under ``torch.no_grad()`` returns)."""
    net = net.at(rec)
    n = rec.xs[0].shape[0]
    value = rec.xs[0].new_zeros(())
    penalty = penalty.bind(rec.xs[0], y)
    with torch.no_grad():
        for seed in penalty.seeds(net, rec, y, Linearization(net, rec)):
            value = value + penalty.p.value(backward_pass(net, rec, seed.zeta_L()).xis[0]).sum() / n
    return value


def per_example_values(net: Network, rec: ForwardRecord, penalty: Penalty, y: torch.Tensor | None) -> tuple[torch.Tensor, list]:
    """``R_n = Σ_k p(ξ_{0,n}^{(k)})`` per example, shape ``(N,)`` (``net`` linearised at ``rec``), and the seeds it used.

    Algorithm 1 once per ``v``. The seeds are returned so that the gradients of
    the same ``R_n`` can be computed later with the same ``v``'s (a random
    ``v`` is drawn once).
    """
    value = None
    penalty = penalty.bind(rec.xs[0], y)
    with torch.no_grad():
        seeds = list(penalty.seeds(net, rec, y, Linearization(net, rec)))
        for seed in seeds:
            term = penalty.p.value(backward_pass(net, rec, seed.zeta_L()).xis[0])
            value = term if value is None else value + term
    if value is None:
        raise ValueError(f"{penalty!r} has no v for this network")
    return value, seeds


def compute(
    net: Network,
    rec: ForwardRecord,
    penalty: Penalty,
    y: torch.Tensor | None,
    *,
    name: str,
    with_loss: bool = False,
) -> Result:
    """Run the registered algorithm ``name`` on a recorded forward pass (no planning, no validation).

    The entry points (:func:`dbpaper.double_backprop`, :func:`dbpaper.penalty`)
    validate the call, read the network and choose ``name`` once; this runs it.
    With ``with_loss`` also the loss and its gradients (Section 4.5), reusing
    the backward pass of classical double backpropagation when the losses coincide.
    """
    net = net.at(rec)  # max-pooling's selections fixed
    with torch.no_grad():
        value, grads, passes = REGISTRY[name].run(net, rec, penalty, y)
        result = Result(value=value, gradients=grads, algorithm=name)
        if with_loss:
            if y is None:
                raise ValueError("with_loss=True needs y (labels or targets)")
            kind = loss_for(y)
            result.loss = loss_value(net.output_map, rec.output, y, kind, rec.logits)
            result.loss_gradients = loss_gradients(net, rec, y, kind, _reusable(penalty, kind, passes))
    return result


def compute_objective(
    net: Network,
    rec: ForwardRecord,
    penalty: Penalty,
    y: torch.Tensor,
    lam: float,
    *,
    loss: str,
    name: str,
) -> Result:
    """``ℓ + λR`` and its gradients (Section 4.5) with the registered algorithm ``name``, the loss folded in where possible.

    ``value`` is ``ℓ + λR``; ``gradients`` holds its parameter gradients and
    ``η_1`` with ``∇_{x_0}(ℓ + λR) = K_1ᵀ(θ_1, η_1)``; ``loss`` holds ``ℓ``.
    With ``"minimal"`` the loss gradient ``∇_{z_L} ℓ`` is added to the seed
    ``η_L`` of Algorithm 3 (``4L - 1`` evaluations for a single ``v``, not the
    ``5L - 2`` of Section 5.1); Algorithm 4 scales its ``q_0`` by ``λ`` and adds
    ``∇_{z_L} ℓ`` to ``η̂_L`` before its single forward-backward pass (for
    ``λ = 0``: a standard backpropagation of the loss, Section 4.5). No
    intermediate is divided by ``λ``.
    ``"general"`` is the paper's path: a separate backpropagation of the loss.
    """
    lam = float(lam)
    net = net.at(rec)  # max-pooling's selections fixed
    with torch.no_grad():
        ell = loss_value(net.output_map, rec.output, y, loss, rec.logits)
        zeta_loss = loss_seed(net, rec, y, loss)  # ∇_{z_L} ℓ (batch mean)
        algorithm = REGISTRY[name]
        if algorithm.folds_loss and lam != 0.0:
            # the forward-backward pass is linear in (q, η_L): scale q_0 by λ and fold ∇_{z_L} ℓ into η_L
            value, grads, _ = algorithm.run(net, rec, penalty, y, LossFold(lam, zeta_loss))
        else:
            value, grads, passes = algorithm.run(net, rec, penalty, y)
            grads = grads.scaled(lam)
            grads.add(loss_gradients(net, rec, y, loss, _reusable(penalty, loss, passes), zeta_L=zeta_loss))
    return Result(value=ell + lam * value, gradients=grads, loss=ell, algorithm=name)
