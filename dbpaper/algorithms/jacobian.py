"""Algorithm 4 (Section 5.4, Appendix C): the Jacobian penalty's gradient in one forward-backward pass.

For ``R = Σ_i mean_n ‖∇_{x_0} x_L^i‖²`` (:class:`~dbpaper.penalties.JacobianFrobenius`)
on a network of eq. (8) whose output map is the softmax or the identity, the
``C`` per-class forward-backward passes of Algorithm 3 collapse into one.
What remains per class is a backward pass (Algorithm 1) and a
backward-backward pass (Algorithm 2), whose weight-adjoint terms
``θ̂¹_j = Σ_i K_j□(q_{j-1}^{(i)}, ζ_j^{(i)})`` are accumulated on the fly.
Operation count (``K`` and ``Kᵀ``): ``2CL + 2L - 1`` instead of the
``L + C(3L - 1)`` of the class-by-class Algorithms 1–3; ``K□`` (dense layers):
``CL + L`` instead of ``2CL``.

The paper states the algorithm for locally linear hidden activations (ReLU,
leaky ReLU, identity; Section 5.2), where ``G''_j = 0`` makes the recursion
linear in ``η_L``, so that it can be run once on ``η̂_L = Σ_i η_L^{(i)}``
(Section 5.4, points 3–6). The restriction is not needed. In eq. (28),
``η_j^{(i)} = M(G''_j(z_j) h_j^{(i)}, ξ_j^{(i)}) + G'_j(z_j) γ_j^{(i)}``, the
first term does not depend on ``η``: it is a per-class *source term*. Summed
over the classes, for every coordinate-wise hidden activation
(:class:`~dbpaper.activations.Activation`; mixed networks included)::

    η̂_j = S_j + g'_j(z_j) ⊙ K_{j+1}ᵀ(θ_{j+1}, η̂_{j+1}),   j = L-1, ..., 1,
    S_j = g''_j(z_j) ⊙ Σ_i h_j^{(i)} ⊙ ξ_j^{(i)}

(``S_j = 0`` for a locally linear ``g_j``). ``Σ_i h_j ⊙ ξ_j``, of the shape of
``z_j``, is accumulated during the class loop from the backward pass's
``ξ_j`` (kept next to ``ζ_j = g'_j ⊙ ξ_j`` until the backward-backward pass
has formed ``h_j``) and multiplied by ``g''_j`` (``rec.d2g[j]``) once. The
source terms cost no operator evaluation, so the counts are the same as for
locally linear networks — except with an identity output, where ``η̂_L ≡ 0``
but ``η̂_{L-1} = S_{L-1}`` need not vanish, so the final pass evaluates
``L - 2`` transposes that a locally linear network skips.

Corrections to the printed Algorithm 4 (the *Runtimes* chapter lists them):

* ``η̂_L`` is accumulated with the corrected Appendix B.1 formula
  ``η_L^{(i)} = S(e_i ⊙ h − x^i h − ⟨x, h⟩ e_i)``, ``S = diag(x_L) − x_L x_Lᵀ``
  (erratum E5); the printed update is B.1's printed line with ``v = e^{(i)}``;
* ``ζ_L^{(i)} = S e^{(i)}``, not ``M_L(a_L, e^{(i)})``: the softmax is not
  coordinate-wise, and its ``a_L = g'_L(z_L)`` does not exist as a vector;
* ``x_L`` is needed by every class, so it cannot be deleted inside the loop,
  and ``x_0, ..., x_{L-1}`` must be kept for the final ``K□``;
* the final pass uses the accumulators: ``∇_{θ_j} R = θ̂¹_j + K_j□(x_{j-1}, η̂_j)``
  and ``∇_{b_j} R = η̂_j`` (printed: per-class symbols, ``K□``'s arguments in
  the wrong order, erratum E3), and it must keep ``η̂_{j-1}``, which the printed
  line ``delete a_{j-1}, η̂_{j-1}`` erases right after computing it;
* the value ``R = Σ_i mean_n ‖ξ_0^{(i)}‖²`` is accumulated too.

Memory: no per-class tensor outlives its pass over the classes; only the
accumulators ``θ̂¹_j`` (they become the returned weight gradients), ``η̂_L``,
the sums ``Σ_i h_j ⊙ ξ_j`` of the source terms (one slot per stacked class,
i.e. ``chunk_size`` tensors of the shape of ``z_j``, summed after the last
pass) and the forward record are kept, and weight-adjoints of dense layers
are written straight into their accumulators. The memory is therefore ``O(1)``
in the number of classes processed — but tensors of the output layer (its
weight, ``x_L`` and ``ζ_L^{(i)}`` of shape ``(N, C)``) have sizes proportional
to ``C`` for every method.

Variants, all exact (they differ in rounding only)
--------------------------------------------------
``chunk_size``
    Classes are processed ``chunk_size`` at a time, stacked along the batch
    dimension (every operator accepts any batch size): fewer, larger operator
    evaluations, at ``chunk_size`` times the per-class memory. ``1`` is
    Algorithm 4 as printed; ``None`` processes all classes at once; ``"auto"``
    stacks as many classes as keep the largest stacked tensor (the widest
    layer's input or output for ``chunk_size × N`` examples) within
    :data:`TARGET_CHUNK_BYTES`. The ``ceil(C / chunk_size)``
    passes get balanced sizes. A stacked evaluation counts as *one* operator
    evaluation for :func:`dbpaper.count_operations`, though it does the work
    of ``k``.
``gram`` (beyond the paper)
    ``p = ‖·‖²`` makes ``ξ_0 = K_1ᵀ(θ_1, ζ_1)`` enter only through
    ``‖ξ_0‖² = ⟨ζ_1, G ζ_1⟩`` and ``h_1 = K_1(θ_1, q_0) = (2/N) G ζ_1`` with
    ``G = K_1 K_1ᵀ`` (``W_1 W_1ᵀ`` for a dense first layer, counted as one ``K``
    on the rows of ``W_1``); the layer-1 part of ``θ̂¹`` is
    ``Σ_{i,n} ζ_1 q_0ᵀ = (2/N) A W_1`` with ``A = Σ_{i,n} ζ_1 ζ_1ᵀ``, one ``K□`` at
    the end. Per class the input dimension drops out: ``2 N d_1²`` instead of
    ``3 N d_0 d_1`` multiply-adds. ``G`` and ``A`` are symmetric and are formed
    from their upper blocks (2×2 blocks, two levels deep: 5/8 of the
    multiply-adds for ``d_1 ≥ 256``). Dense first layers only. The source term
    needs ``ξ_j`` and ``h_j`` for ``j ≥ 1`` only, and both are formed
    (``ξ_1 = K_2ᵀ(θ_2, ζ_2)``, ``h_1 = (2/N) G ζ_1``).
``onehot`` (beyond the paper)
    ``v = e^{(i)}`` gives the dense output layer closed forms: with
    ``u = W_Lᵀ x_L`` (one ``Kᵀ``), ``ξ_{L-1}^{(i)} = x^i (W_{L,i} − u)`` (softmax)
    or ``W_{L,i}`` (identity); ``θ̂¹_L = Q − K_L□(P, x_L)`` with rows
    ``Q_i = Σ_n x_n^i q_{L-1,n}^{(i)}`` and ``P_n = Σ_i x_n^i q_{L-1,n}^{(i)}``;
    ``η̂_L = S(a − K_L(θ_L, P))`` with ``a_{n,i} = ⟨W_{L,i} − u_n, q_{L-1,n}^{(i)}⟩``.
    The output layer then costs ``O(N C d)`` instead of ``O(N C² d)``. Dense
    output layers and ``L ≥ 2`` only. The closed-form ``ξ_{L-1}`` enters the
    source term ``S_{L-1}`` like the one ``K_Lᵀ`` would give.

``gram="auto"`` and ``onehot="auto"`` consult the cost model of
:func:`shortcut_costs` and use a shortcut only where it is cheaper.

Registered algorithms
---------------------
Registered for :func:`dbpaper.double_backprop`, :func:`dbpaper.penalty` and
:func:`dbpaper.count_operations`. All three apply to the Jacobian penalty on every network of eq. (8)
(:func:`applies`), and ``"auto"`` chooses among them there; they are
registered in this order.

``"optimized"``
    Algorithm 4 as in the paper (corrected): one class at a time, no
    shortcuts; its operation counts are the paper's.
``"optimized-shortcuts"``
    One class at a time with ``gram="auto"`` and ``onehot="auto"``: ``O(1)``
    memory in ``C`` and the fewest FLOPs.
``"optimized-chunked"``
    ``DEFAULT_CHUNK_SIZE`` classes at a time (read at call time), with both
    shortcuts on ``"auto"``: the fastest.

Other combinations are registered as instances of :class:`Optimized`, e.g.
``dbpaper.algorithms.register(Optimized("optimized-64", chunk_size=64, gram="auto"))``; or call
:func:`jacobian_penalty_gradients` directly. The variant a call resolves to
(classes per pass, shortcuts) is :func:`~dbpaper.algorithms.variants.choose_variant`'s. The
penalty itself (:class:`~dbpaper.penalties.JacobianFrobenius`) stays the same
whichever way it is evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..activations import Activation, IdentityOutput, Softmax
from ..network import ForwardRecord, Network
from . import shortcuts
from .algorithm4 import Accumulators, Context, check_chunk_size, chunk_pass, class_chunks
from .costs import eta_vanishes, layer_sums, power_iteration_flops
from .passes import BackwardPass, LayerGradients, forward_backward_sweep
from .registry import Algorithm, Estimate, LossFold, Outcome, register
from .shortcuts import ELEMENTWISE_COST, GRAM_MAX_COND, GRAM_MAX_EPS_COND, gram_is_stable, shortcut_costs
from .variants import TARGET_CHUNK_BYTES, Variant, auto_chunk_size, check_choice, choose_variant

if TYPE_CHECKING:
    from ..penalties import Penalty

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "GRAM_MAX_COND",
    "GRAM_MAX_EPS_COND",
    "ELEMENTWISE_COST",
    "TARGET_CHUNK_BYTES",
    "Variant",
    "Optimized",
    "applies",
    "auto_chunk_size",
    "gram_is_stable",
    "jacobian_penalty_gradients",
    "optimized_algorithm",
    "choose_variant",
    "resolve_chunk_size",
    "shortcut_costs",
    "why_not",
]

#: Classes per stacked pass for ``"optimized-chunked"`` (an int, ``None`` for all classes, or
#: ``"auto"``); read at call time, so it may be changed.
DEFAULT_CHUNK_SIZE: int | str | None = "auto"

_AUTO = "auto"


def why_not(net: Network, penalty: Penalty) -> str | None:
    """Why Algorithm 4 does not apply to ``penalty`` on ``net`` (``None`` when it does).

    It applies to the Jacobian penalty (:class:`~dbpaper.penalties.JacobianFrobenius`)
    on any :class:`~dbpaper.Network`: every hidden activation of eq. (8) is
    coordinate-wise (:class:`~dbpaper.activations.Activation`), locally linear
    or not, and the output map is the softmax or the identity.
    """
    if not getattr(penalty, "sums_unit_outputs", False) or getattr(penalty, "squared_norm_scale", None) is None:
        return (
            "Algorithm 4 computes the Jacobian penalty (JacobianFrobenius) and other sums of c ‖∇_{x_0} x_L^i‖² over every "
            f"output i (R1 of a one-output critic), got {penalty!r}"
        )
    if not isinstance(net, Network):
        return f"Algorithm 4 needs a dbpaper.Network, got {type(net).__name__}"
    bad = [
        f"layer {j} ({layer.activation!r})"
        for j, layer in enumerate(net.layers[:-1], start=1)
        if not isinstance(layer.activation, Activation)
    ]
    if bad:
        return (
            "Algorithm 4 needs coordinate-wise hidden activations (dbpaper.activations.Activation, Definition 3.1), "
            f"but {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not"
        )
    if not isinstance(net.output_map, Softmax | IdentityOutput):
        return f"Algorithm 4 needs a softmax or identity output (Appendix B), got {net.output_map!r}"
    return None


def applies(net: Network, penalty: Penalty) -> bool:
    """Whether Algorithm 4 applies: a Jacobian penalty on a network of eq. (8) (any coordinate-wise activations)."""
    return why_not(net, penalty) is None


def resolve_chunk_size(chunk_size: int | str | None) -> int | str | None:
    """``"default"`` (the registered ``"optimized-chunked"``) read as ``DEFAULT_CHUNK_SIZE`` now; else unchanged."""
    return DEFAULT_CHUNK_SIZE if chunk_size == "default" else chunk_size


@torch.no_grad()
def jacobian_penalty_gradients(
    net: Network,
    rec: ForwardRecord,
    penalty: Penalty,
    *,
    chunk_size: int | str | None = 1,
    gram: bool | str = False,
    onehot: bool | str = False,
    extra_eta_L: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, LayerGradients]:
    """``R`` and ``∇_θ R``, ``∇_b R`` of the Jacobian penalty by Algorithm 4 (Appendix C), corrected.

    Parameters
    ----------
    net : Network
        A network of eq. (8): coordinate-wise hidden activations (locally
        linear or not) and a softmax or identity output.
    rec : ForwardRecord
        Its recorded forward pass (``net.forward(x)``: ``L`` evaluations of ``K``).
    penalty : JacobianFrobenius
        The penalty ``R = Σ_i mean_n ‖∇_{x_0} x_L^i‖²`` (Section 5.4).
    chunk_size : int, None or "auto"
        Classes per stacked pass (``1``: Algorithm 4 as printed, ``O(1)`` memory
        in ``C``; ``None``: all classes at once; ``"auto"``: about
        :data:`TARGET_CHUNK_BYTES` per stacked tensor).
    gram : bool or "auto"
        Use ``G = K_1 K_1ᵀ`` for a dense first layer (see the module docstring).
    onehot : bool or "auto"
        Use the closed forms of ``v = e^{(i)}`` for a dense output layer.
    extra_eta_L : torch.Tensor, optional
        Added to ``η̂_L`` before the forward-backward pass: the single pass is
        linear in ``(q, η̂_L)``, so ``∇_{z_L} ℓ`` here with ``scale = λ`` gives the
        gradients of ``ℓ + λR`` at no extra evaluation.
    scale : float
        The gradients returned are those of ``scale · R`` (``R`` itself is
        returned unscaled): ``q_0`` of Algorithm 2 carries the factor, so that no
        intermediate is divided by ``λ`` (which overflows in half precision for
        small ``λ``).

    Returns
    -------
    tuple
        ``R`` (a 0-d tensor) and the :class:`~dbpaper.algorithms.LayerGradients`
        (with ``η̂_1``, from which ``∇_{x_0} R = K_1ᵀ(θ_1, η̂_1)``).

    Raises
    ------
    ValueError
        If Algorithm 4 does not apply (see :func:`why_not`) or an option is invalid.
    """
    reason = why_not(net, penalty)
    if reason is not None:
        raise ValueError(reason)
    net = net.at(rec)  # max-pooling's selections fixed
    p = choose_variant(net, penalty, rec.xs[0].shape[0], chunk_size=chunk_size, gram=gram, onehot=onehot)
    chunks = class_chunks(net.layers[-1].op.out_numel, p.chunk_size)  # balanced, the largest first
    ctx = Context.of(net, rec, scale, kmax=len(chunks[0]))  # p = c ‖·‖²: the input end applies c
    first = shortcuts.input_end(ctx, penalty, p.gram, if_stable=p.gram_if_stable)  # layer 1: plain, or the Gram shortcut
    last = shortcuts.output_end(ctx, p.onehot)  # the output layer: plain, or the one-hot shortcut
    acc = Accumulators.empty(ctx, eta_L=isinstance(net.output_map, Softmax))  # η̂_L ≡ 0 for the identity output
    for chunk in chunks:  # Algorithms 1 and 2, a chunk of classes stacked along the batch
        chunk_pass(ctx, first, last, acc, chunk)
    last.finish(acc)
    acc.fold_in(extra_eta_L)  # a loss folded into the forward-backward pass (objective ℓ + λR)
    # the single forward-backward pass (Algorithm 3 on η̂, with the accumulated terms)
    grads = forward_backward_sweep(net, rec, acc.eta_L, lambda j: first.weight_term(acc, j), lambda j, gamma: acc.eta(rec, j, gamma))
    return acc.value, grads


def optimized_algorithm(
    *, chunk_size: int | str | None = 1, gram: bool | str = False, onehot: bool | str = False
) -> Callable[..., tuple[torch.Tensor, LayerGradients, list[BackwardPass]]]:
    """A registrable algorithm ``(net, rec, penalty, y) -> (R, gradients, [])`` with fixed options.

    ``chunk_size`` as in :func:`jacobian_penalty_gradients`; ``"default"``
    reads ``DEFAULT_CHUNK_SIZE`` at call time.
    The options are validated now (``chunk_size`` and the choices) and
    against the network at call time.
    """
    if chunk_size != "default":
        check_chunk_size(chunk_size)
    check_choice(gram, "gram")
    check_choice(onehot, "onehot")

    def algorithm(
        net: Network,
        rec: ForwardRecord,
        penalty: Penalty,
        y: torch.Tensor | None = None,
        *,
        scale: float = 1.0,
        extra_eta_L: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, LayerGradients, list[BackwardPass]]:
        size = DEFAULT_CHUNK_SIZE if chunk_size == "default" else chunk_size
        value, grads = jacobian_penalty_gradients(
            net, rec, penalty, chunk_size=size, gram=gram, onehot=onehot, extra_eta_L=extra_eta_L, scale=scale
        )
        return value, grads, []

    algorithm.options = {"chunk_size": chunk_size, "gram": gram, "onehot": onehot}
    algorithm.__doc__ = f"Algorithm 4 (Appendix C) with chunk_size={chunk_size!r}, gram={gram!r}, onehot={onehot!r}."
    return algorithm


def optimized_cost(
    *, chunk_size: int | str | None = 1, gram: bool | str = False, onehot: bool | str = False
) -> Callable[[Network, Penalty, int], Estimate]:
    """The cost model of Algorithm 4 with these options, ``(net, penalty, batch) -> Estimate``.

    ``2N [F + C (2F + F□) + F' + F□]`` FLOPs (the last two terms only where
    ``η̂`` does not vanish) minus twice what the chosen shortcuts save
    (:func:`shortcut_costs`), and ``6L + ⌈C / k⌉ (8L + 5)`` calls for chunks of ``k`` classes.
    """

    def cost(net: Network, penalty: Penalty, batch: int) -> Estimate:
        size = resolve_chunk_size(chunk_size)
        p = choose_variant(net, penalty, batch, chunk_size=size, gram=gram, onehot=onehot)
        F, Fbox, Fprime = layer_sums(net)
        S = penalty.num_seeds(net)
        fb = 0 if eta_vanishes(net, penalty) else Fprime + Fbox
        costs = shortcut_costs(net, batch)
        saved = sum(costs[k]["without"] - costs[k]["with"] for k, used in (("gram", p.gram), ("onehot", p.onehot)) if used)
        flops = 2 * batch * (F + S * (2 * F + Fbox) + fb) - 2 * max(0, saved) + power_iteration_flops(net, penalty, batch)
        passes = -(-S // p.chunk_size)
        return Estimate(max(flops, 0), 6 * net.depth + passes * (8 * net.depth + 5))

    return cost


def optimized_settings(
    *, chunk_size: int | str | None = 1, gram: bool | str = False, onehot: bool | str = False
) -> Callable[[Network, Penalty, int], dict[str, Any]]:
    """The settings Algorithm 4 with these options resolves to, ``(net, penalty, batch) -> dict`` (shown by :func:`dbpaper.plan`)."""

    def describe(net: Network, penalty: Penalty, batch: int) -> dict[str, Any]:
        p = choose_variant(net, penalty, batch, chunk_size=resolve_chunk_size(chunk_size), gram=gram, onehot=onehot)
        return {"chunk_size": p.chunk_size, "gram": p.gram, "onehot": p.onehot}

    return describe


class Optimized(Algorithm):
    """Algorithm 4 with fixed options, registered as ``"optimized"``, ``"optimized-shortcuts"`` or ``"optimized-chunked"``.

    ``chunk_size="default"`` reads ``DEFAULT_CHUNK_SIZE`` at call time; the
    options are validated now (``chunk_size`` and the choices) and against
    the network at call time.
    """

    folds_loss = True

    def __init__(self, name: str, *, chunk_size: int | str | None = 1, gram: bool | str = False, onehot: bool | str = False):
        self.name: str = name
        self.options: dict[str, int | str | bool | None] = {"chunk_size": chunk_size, "gram": gram, "onehot": onehot}
        self._run = optimized_algorithm(**self.options)
        self._cost = optimized_cost(**self.options)
        self._describe = optimized_settings(**self.options)

    def run(
        self, net: Network, rec: ForwardRecord, penalty: Penalty, y: torch.Tensor | None, fold: LossFold | None = None
    ) -> Outcome:
        if fold is None:
            value, grads, _ = self._run(net, rec, penalty, y)
        else:
            value, grads, _ = self._run(net, rec, penalty, y, scale=fold.scale, extra_eta_L=fold.eta_L)
        return Outcome(value, grads)

    def cost(self, net: Network, penalty: Penalty, batch: int) -> Estimate:
        return self._cost(net, penalty, batch)

    def why_not(self, net: Network, penalty: Penalty) -> str | None:
        return why_not(net, penalty)

    def settings(self, net: Network, penalty: Penalty, batch: int) -> dict[str, Any]:
        return self._describe(net, penalty, batch)


def register_builtin() -> None:
    """The three variants of Algorithm 4 in :data:`~dbpaper.algorithms.REGISTRY`; "optimized" first: ``"auto"`` breaks
    ties by registration order."""
    register(Optimized("optimized"), replace=True)
    register(Optimized("optimized-shortcuts", gram=_AUTO, onehot=_AUTO), replace=True)
    register(Optimized("optimized-chunked", chunk_size="default", gram=_AUTO, onehot=_AUTO), replace=True)
