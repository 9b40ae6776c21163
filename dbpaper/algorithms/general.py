"""Algorithms 1–3 as registered algorithms: ``"general"`` (as printed) and ``"minimal"``, the loss gradient and the reuse of Section 4.5.

Running a registered algorithm on a recorded forward pass is :mod:`dbpaper.algorithms._dispatch`'s.
"""

from __future__ import annotations

import dataclasses

import torch

from ..network import ForwardRecord, Network
from ..penalties import Penalty
from ..seeds import LossGradientSeed
from .algorithm4 import Accumulators, Context, chunk_pass
from .costs import eta_vanishes, layer_sums, power_iteration_flops
from .passes import (
    BackwardPass,
    LayerGradients,
    backward_backward_pass,
    backward_pass,
    forward_backward_pass,
    forward_backward_sweep,
    linearized_forward,
    standard_backprop,
)
from .registry import Algorithm, Estimate, LossFold, Outcome, register
from .shortcuts import PlainInput, SeedOutput

__all__ = ["General", "Linearization", "Minimal", "Result", "general", "loss_gradients", "loss_seed", "minimal"]


@dataclasses.dataclass(frozen=True, eq=False)
class Linearization:
    """The linearised network on a recorded forward pass: ``(dx_L/dx_0)*`` by Algorithm 1, ``dx_L/dx_0`` forward."""

    net: Network
    rec: ForwardRecord

    def vjp(self, v: torch.Tensor) -> torch.Tensor:
        """``(dx_L/dx_0)* v`` (Algorithm 1 from ``ζ_L = (dx_L/dz_L)* v``)."""
        return backward_pass(self.net, self.rec, self.net.output_map.jvp(self.rec.output, v)).xis[0]

    def jvp(self, u: torch.Tensor) -> torch.Tensor:
        """``(dx_L/dx_0) u``."""
        return linearized_forward(self.net, self.rec, u)


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


def loss_gradients(
    net: Network, rec: ForwardRecord, y: torch.Tensor, loss: str, reuse: BackwardPass | None = None, zeta_L: torch.Tensor | None = None
) -> LayerGradients:
    """The gradients of the mean loss ``ℓ`` (Section 4.5): one standard backpropagation (``L - 1`` evaluations of ``Kᵀ``).

    ``reuse``: the backward pass of classical double backpropagation with the same
    loss, whose ``ζ_j`` are the loss's own (Section 4.5), so no ``Kᵀ`` is evaluated again;
    ``zeta_L``: ``∇_{z_L} ℓ`` where the caller has it already (``loss_seed``).
    """
    if reuse is not None:
        return standard_backprop(net, rec, None, xis_reuse=reuse).scaled(1.0 / rec.xs[0].shape[0])
    return standard_backprop(net, rec, loss_seed(net, rec, y, loss) if zeta_L is None else zeta_L)


def loss_seed(net: Network, rec: ForwardRecord, y: torch.Tensor, loss: str) -> torch.Tensor:
    """``∇_{z_L} ℓ`` of the batch-mean loss (Appendix B.2)."""
    return LossGradientSeed(net.output_map, rec.output, y, loss).zeta_L() / rec.xs[0].shape[0]


def _reusable(penalty: Penalty, loss: str, passes: list[BackwardPass]) -> BackwardPass | None:
    """The classical penalty's backward pass where its loss is ``loss`` (Section 4.5), else ``None``."""
    return passes[0] if passes and penalty.loss == loss else None


def general(
    net: Network,
    rec: ForwardRecord,
    penalty: Penalty,
    y: torch.Tensor | None,
    *,
    scale: float = 1.0,
    extra_eta_L: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LayerGradients, list[BackwardPass]]:
    """Algorithms 1–3 once per ``v`` of the penalty (class by class for the Jacobian penalty).

    Returns ``R``, the gradients of ``scale · R`` and the backward passes
    (kept only for a single seed, for the reuse of Section 4.5).
    ``minimal`` streams the same passes with less memory and skips ``h_L``
    where ``η_L`` vanishes identically.

    ``extra_eta_L`` folds a loss into the forward-backward pass: Algorithm 3
    is linear in ``(q, η_L)``, so seeding it with ``scale · η_L + ∇_{z_L} ℓ``
    (and ``q_0 = scale · ∇p(ξ_0) / N``) returns the gradients of
    ``ℓ + scale · R`` in the same pass — ``4L - 1`` evaluations instead of the
    ``5L - 2`` of Section 5.1. ``η_1`` then also gives ``∇_{x_0}(ℓ + scale · R)``.
    """
    net = net.at(rec)  # max-pooling's selections fixed
    n = rec.xs[0].shape[0]
    value = rec.xs[0].new_zeros(())
    grads = LayerGradients.zeros(net.depth)
    passes: list[BackwardPass] = []
    single = penalty.num_seeds(net) == 1
    extra = extra_eta_L
    penalty = penalty.bind(rec.xs[0], y)
    for seed in penalty.seeds(net, rec, y, Linearization(net, rec)):
        bp = backward_pass(net, rec, seed.zeta_L())  # Algorithm 1
        xi_0 = bp.xis[0]
        value = value + penalty.p.value(xi_0).sum() / n
        q_0 = penalty.p.grad(xi_0) * (scale / n)
        bbp = backward_backward_pass(net, rec, q_0)  # Algorithm 2
        eta_L = seed.eta_L(bbp.hs[net.depth])  # Appendix B (None where it vanishes identically)
        if extra is not None:
            eta_L = extra if eta_L is None else eta_L + extra
            extra = None  # the loss is folded into the first seed's pass only
        grads.add(forward_backward_pass(net, rec, bp, bbp, eta_L))  # Algorithm 3
        if single:
            passes.append(bp)
    return value, grads, passes


def minimal(
    net: Network,
    rec: ForwardRecord,
    penalty: Penalty,
    y: torch.Tensor | None,
    *,
    scale: float = 1.0,
    extra_eta_L: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LayerGradients, list[BackwardPass]]:
    """Algorithms 1–3 streamed: the penalty's seeds one by one through Algorithms 1 and 2, one forward-backward pass.

    Algorithm 3 is linear in ``(q, η_L)`` given the backward passes, so its
    per-seed terms can be accumulated as Algorithm 4 does for the Jacobian
    penalty (:mod:`dbpaper.algorithms.algorithm4`): per seed ``v``, Algorithm 1
    from ``ζ_L``, the value, and Algorithm 2 with ``K_j□(q_{p(j)}, ζ_j)`` and the
    source terms ``g''_j ⊙ h_j ⊙ ξ_j`` added to accumulators as they are formed
    (each ``ζ_j``, ``q_j``, ``h_j`` released once used); ``h_L`` only where ``η_L``
    does not vanish identically (Section 5.3); then one forward-backward pass
    on ``η̂_L = Σ_v η_L``. For one seed the evaluations are those of
    ``general`` without the unused ``h_L``; the memory is one set of
    ``ζ_j`` besides the forward record, not the ``ξ``, ``ζ``, ``q``, ``h`` of every
    layer. ``scale`` and ``extra_eta_L`` fold a loss in (see ``general``).
    """
    net = net.at(rec)
    ctx = Context.of(net, rec, scale, kmax=1)
    penalty = penalty.bind(rec.xs[0], y)
    first = PlainInput(ctx, penalty)
    acc = Accumulators.empty(ctx, eta_L=False)
    with torch.no_grad():
        for seed in penalty.seeds(net, rec, y, Linearization(net, rec)):
            chunk_pass(ctx, first, SeedOutput(ctx, seed), acc, range(1))
        acc.fold_in(extra_eta_L)
        grads = forward_backward_sweep(net, rec, acc.eta_L, lambda j: first.weight_term(acc, j), lambda j, gamma: acc.eta(rec, j, gamma))
    return acc.value, grads, []


def general_cost(net: Network, penalty: Penalty, batch: int) -> Estimate:
    """``2N [F + S (2F + F□) + S (F' + F□)]`` (the last bracket only where ``η`` does not vanish) and ``3L + S (8L + 5)`` calls."""
    L, n = net.depth, batch
    F, Fbox, Fprime = layer_sums(net)
    S = penalty.num_seeds(net)
    fb = 0 if eta_vanishes(net, penalty) else Fprime + Fbox
    return Estimate(2 * n * (F + S * (2 * F + Fbox + fb)) + power_iteration_flops(net, penalty, n), 3 * L + S * (8 * L + 5))


def minimal_cost(net: Network, penalty: Penalty, batch: int) -> Estimate:
    """``2N [F + S (2F + F□) + F' + F□]`` (the last two terms only where ``η`` does not vanish), less ``h_L`` where
    ``η_L`` vanishes; ``6L + S (5L + 5)`` calls (one fewer per seed without ``h_L``): one forward-backward pass for all
    ``S`` seeds."""
    L, n = net.depth, batch
    F, Fbox, Fprime = layer_sums(net)
    S = penalty.num_seeds(net)
    vanishes = eta_vanishes(net, penalty)
    fb = 0 if vanishes else Fprime + Fbox
    unused = net.layers[-1].op.macs if vanishes else 0
    flops = 2 * n * (F + S * (2 * F + Fbox - unused) + fb) + power_iteration_flops(net, penalty, n)
    return Estimate(flops, 6 * L + S * (5 * L + 5) - (S if vanishes else 0))


class Minimal(Algorithm):
    """``"minimal"``: Algorithms 1–3 streamed through Algorithm 4's accumulators (``minimal``), the loss folded in."""

    name = "minimal"
    folds_loss = True

    def run(
        self, net: Network, rec: ForwardRecord, penalty: Penalty, y: torch.Tensor | None, fold: LossFold | None = None
    ) -> Outcome:
        if fold is None:
            value, grads, _ = minimal(net, rec, penalty, y)
        else:
            value, grads, _ = minimal(net, rec, penalty, y, scale=fold.scale, extra_eta_L=fold.eta_L)
        return Outcome(value, grads)

    def cost(self, net: Network, penalty: Penalty, batch: int) -> Estimate:
        return minimal_cost(net, penalty, batch)


class General(Algorithm):
    """``"general"``: Algorithms 1–3 once per ``v`` (``general``), the paper's path; the loss backpropagated apart."""

    name = "general"

    def run(
        self, net: Network, rec: ForwardRecord, penalty: Penalty, y: torch.Tensor | None, fold: LossFold | None = None
    ) -> Outcome:
        if fold is not None:
            raise ValueError("'general' does not fold a loss in (folds_loss is False)")
        value, grads, passes = general(net, rec, penalty, y)
        return Outcome(value, grads, tuple(passes))

    def cost(self, net: Network, penalty: Penalty, batch: int) -> Estimate:
        return general_cost(net, penalty, batch)


def register_builtin() -> None:
    """Algorithms 1–3 in :data:`~dbpaper.algorithms.REGISTRY`; "minimal" first: where the estimates tie (one seed)
    ``"auto"`` takes it, the same evaluations in less memory."""
    register(Minimal(), replace=True)
    register(General(), replace=True)
