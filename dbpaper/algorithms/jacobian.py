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
    :data:`DEFAULT_CHUNK_SIZE` classes at a time (read at call time), with both
    shortcuts on ``"auto"``: the fastest.

Other combinations are built with the factory :func:`optimized_algorithm` and
registered with :func:`dbpaper.algorithms.register_algorithm` under a name of
your choice, e.g. ``register_algorithm("optimized-64", optimized_algorithm(chunk_size=64),
applies=applies)``; or call :func:`jacobian_penalty_gradients` directly. The
penalty itself (:class:`~dbpaper.penalties.JacobianFrobenius`) stays the same
whichever way it is evaluated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from .. import counting
from ..activations import Activation, IdentityOutput, Softmax
from ..network import ForwardRecord, Network
from ..operators import Dense
from ..penalties import JacobianFrobenius, SquaredNorm
from ..seeds import ConstantSeed
from .costs import eta_vanishes, layer_sums, power_iteration_flops
from .passes import LayerGradients
from .registry import Estimate, register_algorithm

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "GRAM_MAX_COND",
    "GRAM_MAX_EPS_COND",
    "ELEMENTWISE_COST",
    "TARGET_CHUNK_BYTES",
    "Plan",
    "applies",
    "auto_chunk_size",
    "gram_is_stable",
    "jacobian_penalty_gradients",
    "optimized_algorithm",
    "plan",
    "resolve_chunk_size",
    "shortcut_costs",
    "why_not",
]

#: Classes per stacked pass for ``"optimized-chunked"`` (an int, ``None`` for all classes, or
#: ``"auto"``); read at call time, so it may be changed.
DEFAULT_CHUNK_SIZE: int | str | None = "auto"

#: ``chunk_size="auto"`` stacks as many classes as keep the largest stacked tensor within this many
#: bytes: enough rows for efficient matrix products, small enough for the per-pass tensors to stay
#: in cache instead of being allocated and faulted in afresh (a conv net's feature maps are large
#: per example, an MLP's small; counting bytes, not rows, serves both).
TARGET_CHUNK_BYTES = 4 * 2**20

_AUTO = "auto"


def why_not(net: Network, penalty) -> str | None:
    """Why Algorithm 4 does not apply to ``penalty`` on ``net`` (``None`` when it does).

    It applies to the Jacobian penalty (:class:`~dbpaper.penalties.JacobianFrobenius`)
    on any :class:`~dbpaper.Network`: every hidden activation of eq. (8) is
    coordinate-wise (:class:`~dbpaper.activations.Activation`), locally linear
    or not, and the output map is the softmax or the identity.
    """
    if not isinstance(penalty, JacobianFrobenius):
        return f"Algorithm 4 computes the Jacobian penalty (JacobianFrobenius) only, got {penalty!r}"
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


def applies(net: Network, penalty) -> bool:
    """Whether Algorithm 4 applies: a Jacobian penalty on a network of eq. (8) (any coordinate-wise activations)."""
    return why_not(net, penalty) is None


#: Cost of touching one tensor element in an elementwise pass, in multiply-adds: elementwise
#: work is memory-bound and costs far more per operation than a matrix product. A rough
#: machine-balance figure for CPUs; it only steers the ``"auto"`` choices.
ELEMENTWISE_COST = 16


def shortcut_costs(net: Network, batch: int) -> dict[str, dict[str, int]]:
    """The cost model behind ``gram="auto"`` and ``onehot="auto"``, in multiply-add equivalents.

    Returns ``{"gram": {"without": ..., "with": ...}, "onehot": {...}}`` for a
    batch of ``N = batch`` examples and all ``C`` classes; a shortcut that
    cannot be used is absent. Only the terms that differ are counted, matrix
    products by their multiply-adds and elementwise passes by
    ``ELEMENTWISE_COST`` per element (``w`` below):

    * Gram trick (dense first layer ``d_0 -> d_1``): without, ``3 N C d_0 d_1``
      (``K_1ᵀ``, ``K_1``, ``K_1□`` per class) plus ``2 w N C d_0`` (``p`` and
      ``∇p`` of ``ξ_0``); with, ``(1 + f) (N C d_1² + d_1² d_0)`` (``G ζ_1`` and
      ``A`` per class, ``A W_1`` and ``G`` once; ``f ≤ 1`` is the fraction of
      the multiply-adds that the symmetric block products of ``A`` and ``G``
      do, 5/8 for ``d_1 ≥ 256``) plus ``w N C d_1`` (the value);
    * one-hot output (dense output layer ``d -> C``, ``L ≥ 2``): without,
      ``3 N C² d`` (``K_L``, ``K_Lᵀ``, ``K_L□`` per class) plus ``13 w N C²``
      (``ζ_L`` and ``η_L`` per class); with, ``6 w N C d`` (six passes over the
      stacked ``(N, d)`` tensors per class) plus ``3 N C d`` once.
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"shortcut_costs: batch must be a positive int, got {batch!r}")
    n, c, w = batch, net.layers[-1].op.out_numel, ELEMENTWISE_COST
    out: dict[str, dict[str, int]] = {}
    first, last = net.layers[0], net.layers[-1]
    if isinstance(first.op, Dense):
        d0, d1 = first.op.in_numel, first.op.out_numel
        f = _sym_fraction(d1)
        out["gram"] = {
            "without": 3 * n * c * d0 * d1 + 2 * w * n * c * d0,
            "with": round((1 + f) * (n * c * d1 * d1 + d1 * d1 * d0)) + w * n * c * d1,
        }
    if net.depth >= 2 and isinstance(last.op, Dense):
        d = last.op.in_numel
        out["onehot"] = {"without": 3 * n * c * c * d + 13 * w * n * c * c, "with": 6 * w * n * c * d + 3 * n * c * d}
    return out


@dataclasses.dataclass(frozen=True)
class Plan:
    """The resolved variant: classes per stacked pass and which shortcuts are used.

    ``gram_if_stable``: the Gram shortcut was chosen by ``gram="auto"``, so it is used only if
    ``W_1 W_1ᵀ`` is well enough conditioned when the algorithm runs (:func:`gram_is_stable`).
    """

    chunk_size: int
    gram: bool
    onehot: bool
    gram_if_stable: bool = dataclasses.field(default=False, compare=False)


#: ``gram="auto"`` uses the Gram shortcut only where the estimated condition number of
#: ``G = W_1 W_1ᵀ`` (that of ``W_1``, squared) is at most this, and at most
#: ``GRAM_MAX_EPS_COND / eps`` for the dtype's machine epsilon ``eps``. ``⟨ζ, G ζ⟩`` loses
#: ``eps · cond(W_1)²`` where ``‖W_1ᵀ ζ‖²`` loses ``eps · cond(W_1)``: the bound keeps the
#: shortcut's error within a small factor of the direct path's, and rules it out in bfloat16
#: and float16.
GRAM_MAX_COND = 1024.0
GRAM_MAX_EPS_COND = 1e-3


def gram_is_stable(G: torch.Tensor) -> bool:
    """Whether the Gram shortcut is numerically safe for ``G = W_1 W_1ᵀ`` (see :data:`GRAM_MAX_COND`).

    The condition number is estimated from the pivots of a Cholesky factorisation
    (``(max L_ii / min L_ii)²``, float32 at least); a factorisation that fails
    (``G`` singular or nearly so, e.g. ``d_1 > d_0``) means unsafe. About
    ``d_1³ / 3`` multiply-adds, small beside forming ``G``.
    """
    eps = torch.finfo(G.dtype).eps
    bound = min(GRAM_MAX_COND, GRAM_MAX_EPS_COND / eps)
    if bound < 1.0:
        return False
    work = G if G.dtype in (torch.float32, torch.float64) else G.float()
    L, info = torch.linalg.cholesky_ex(work)
    if int(info) != 0:
        return False
    d = torch.diagonal(L)
    return bool((d.max() / d.min()) ** 2 <= bound)


def _check_chunk_size(chunk_size) -> None:
    if chunk_size is None or chunk_size == _AUTO:
        return
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, None (all classes at once) or 'auto', got {chunk_size!r}")


def _check_choice(value, name: str) -> None:
    if not (value is True or value is False or value == _AUTO):
        raise ValueError(f"{name} must be True, False or 'auto', got {value!r}")


def resolve_chunk_size(chunk_size):
    """``"default"`` (the registered ``"optimized-chunked"``) read as :data:`DEFAULT_CHUNK_SIZE` now; else unchanged."""
    return DEFAULT_CHUNK_SIZE if chunk_size == "default" else chunk_size


def auto_chunk_size(net: Network, batch: int) -> int:
    """Classes per stacked pass for ``chunk_size="auto"``: the largest stacked tensor within :data:`TARGET_CHUNK_BYTES`.

    The largest per-class tensor of a pass is the widest layer input or output,
    ``batch × max_j max(d_{j-1}, d_j)`` elements of the parameters' size.
    """
    widest = max(max(layer.op.in_numel, layer.op.out_numel) for layer in net.layers)
    params = net.parameters()
    itemsize = params[0].element_size() if params else 4
    return max(1, TARGET_CHUNK_BYTES // (batch * widest * itemsize))


def plan(net: Network, penalty, batch: int, *, chunk_size: int | str | None = 1, gram: bool | str = False, onehot: bool | str = False) -> Plan:
    """Resolve ``chunk_size`` and the ``"auto"`` shortcuts (with :func:`shortcut_costs`).

    ``chunk_size``: a positive int, ``None`` (all classes at once) or
    ``"auto"`` (by bytes: :func:`auto_chunk_size`). Raises a
    ValueError when a shortcut is requested explicitly (``True``) but cannot
    be used on ``net``.
    """
    _check_chunk_size(chunk_size)
    if chunk_size == _AUTO:
        chunk_size = auto_chunk_size(net, batch)
    _check_choice(gram, "gram")
    _check_choice(onehot, "onehot")
    c = net.layers[-1].op.out_numel
    costs = shortcut_costs(net, batch)
    quadratic = isinstance(penalty.p, SquaredNorm)
    if gram is True and ("gram" not in costs or not quadratic):
        raise ValueError(
            "gram=True needs a dense first layer (nn.Linear) and the squared norm p = ‖·‖²; "
            f"the first layer is {net.layers[0].op!r}"
        )
    if onehot is True and "onehot" not in costs:
        raise ValueError(f"onehot=True needs L ≥ 2 and a dense output layer; the network has L={net.depth}, last layer {net.layers[-1].op!r}")

    def decide(choice, key, extra_ok=True):
        if choice == _AUTO:
            return key in costs and extra_ok and costs[key]["with"] < costs[key]["without"]
        return bool(choice)

    use_gram = decide(gram, "gram", quadratic)
    return Plan(
        chunk_size=c if chunk_size is None else min(chunk_size, c),
        gram=use_gram,
        onehot=decide(onehot, "onehot"),
        gram_if_stable=use_gram and gram == _AUTO,
    )


def _mul_(t: torch.Tensor, dg: torch.Tensor, k: int) -> torch.Tensor:
    """``M(g'(z), t) = g'(z) ⊙ t`` in place, for ``k`` classes stacked along the batch (``dg`` broadcast)."""
    if not t.is_contiguous():
        t = t.contiguous()
    t.view(k, *dg.shape).mul_(dg)
    return t


def _slope_(rec: ForwardRecord, j: int, t: torch.Tensor, k: int) -> torch.Tensor:
    """``M(g'_j(z_j), t)`` in place for ``k`` stacked classes; ``t`` unchanged where ``g_j`` is the identity."""
    if rec.unit is not None and rec.unit[j]:
        return t
    return _mul_(t, rec.dg[j], k)


def _mul_into(t: torch.Tensor, dg: torch.Tensor, k: int, buf: torch.Tensor) -> torch.Tensor:
    """``g'(z) ⊙ t`` for ``k`` stacked classes, written into the leading rows of ``buf`` (``t`` is kept).

    ``buf`` holds the largest chunk and is reused by every pass over the
    classes, so that no fresh memory is touched per pass.
    """
    out = buf[: t.shape[0]]
    torch.mul(t.reshape(k, *dg.shape), dg, out=out.view(k, *dg.shape))
    return out


def _source_(acc: torch.Tensor | None, xi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``acc + h ⊙ ξ`` for ``k`` stacked classes, into the leading rows of ``acc`` (one fused ``addcmul_``).

    ``acc`` has room for the largest chunk; without it (the first, largest
    pass) ``ξ`` itself becomes the accumulator, overwritten in place. The sum
    over the stacked classes is taken once after the last pass
    (:func:`_sum_chunk`), so no temporary of the stacked size is formed per pass.
    """
    if acc is None:
        return xi.mul_(h.reshape(xi.shape)) if xi.is_contiguous() else torch.mul(xi, h.reshape(xi.shape))
    acc[: xi.shape[0]].addcmul_(xi, h.reshape(xi.shape))
    return acc


def _sum_chunk(acc: torch.Tensor, shape) -> torch.Tensor:
    """``Σ_i h_j^{(i)} ⊙ ξ_j^{(i)}``: the accumulator of :func:`_source_` summed over its stacked classes."""
    return acc.reshape(-1, *shape).sum(0)


#: Blocked symmetric products (:func:`_gram_into`) split a ``d × d`` result while its half is at least this wide.
_SYM_MIN_BLOCK = 64
_SYM_LEVELS = 2


def _gram_into(acc: torch.Tensor, Z: torch.Tensor, levels: int = _SYM_LEVELS) -> torch.Tensor:
    """``acc += Zᵀ Z`` on the upper blocks only (``acc`` symmetric, ``Z`` of shape ``(rows, d)``).

    torch has no symmetric rank-k update, so the product is split into 2×2
    blocks: the off-diagonal block once, the diagonal blocks recursively
    (``levels`` deep); one level does 3/4 of the multiply-adds, two 5/8.
    :func:`_mirror_` fills the lower blocks afterwards. Written with ``out=``
    so that :class:`torch.utils.flop_counter.FlopCounterMode` counts it.
    """
    d = Z.shape[1]
    h = d // 2
    if levels == 0 or h < _SYM_MIN_BLOCK:
        return torch.addmm(acc, Z.T, Z, out=acc)
    upper = acc[:h, h:]
    torch.addmm(upper, Z[:, :h].T, Z[:, h:], out=upper)
    _gram_into(acc[:h, :h], Z[:, :h], levels - 1)
    _gram_into(acc[h:, h:], Z[:, h:], levels - 1)
    return acc


def _mirror_(acc: torch.Tensor, levels: int = _SYM_LEVELS) -> torch.Tensor:
    """Copy the upper off-diagonal blocks written by :func:`_gram_into` to the lower ones (in place)."""
    h = acc.shape[0] // 2
    if levels == 0 or h < _SYM_MIN_BLOCK:
        return acc
    acc[h:, :h] = acc[:h, h:].T
    _mirror_(acc[:h, :h], levels - 1)
    _mirror_(acc[h:, h:], levels - 1)
    return acc


def _sym_fraction(d: int, levels: int = _SYM_LEVELS) -> float:
    """The fraction of the multiply-adds of ``Zᵀ Z`` (``d × d``) that :func:`_gram_into` does."""
    h = d // 2
    if levels == 0 or h < _SYM_MIN_BLOCK:
        return 1.0
    return (h * (d - h) + h * h * _sym_fraction(h, levels - 1) + (d - h) ** 2 * _sym_fraction(d - h, levels - 1)) / (d * d)


@torch.no_grad()
def jacobian_penalty_gradients(
    net: Network,
    rec: ForwardRecord,
    penalty,
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
    x0 = rec.xs[0]
    n, L = x0.shape[0], net.depth
    layers = net.layers
    out = rec.output
    c = layers[-1].op.out_numel
    softmax = isinstance(net.output_map, Softmax)
    assert softmax or isinstance(net.output_map, IdentityOutput)
    p = plan(net, penalty, n, chunk_size=chunk_size, gram=gram, onehot=onehot)
    thetas = [layer.theta(x0) for layer in layers]
    acc: list[torch.Tensor | None] = [None] * (L + 1)  # θ̂¹_j, indexed by j
    src: list[torch.Tensor | None] = [None] * (L + 1)  # h_j ⊙ ξ_j summed over the passes, where g''_j ≠ 0 (j = 1..L-1)
    value = x0.new_zeros(())
    eta_hat = torch.zeros_like(out) if softmax else None  # η̂_L (identically zero for the identity output)
    x_flat = out.reshape(n, c)

    if p.gram:
        # G = K_1 K_1ᵀ = W_1 W_1ᵀ (K_1 applied to the rows of W_1, by symmetric blocks and counted as one K);
        # the factor 2/N of q_0 = 2 ξ_0 / N is folded in
        d1 = layers[0].op.out_numel
        G2 = _mirror_(_gram_into(x0.new_zeros((d1, d1)), thetas[0].T))
        if p.gram_if_stable and (torch.compiler.is_compiling() or not gram_is_stable(G2)):
            p = dataclasses.replace(p, gram=False)  # ill-conditioned W_1 (or compiled: no data-dependent branch)
            G2 = None
        else:
            counting.record("apply")
            G2.mul_(2.0 / n)
            A = x0.new_zeros((d1, d1))  # Σ_{i,n} ζ_1 ζ_1ᵀ, upper blocks until the class loop ends
    if p.onehot:
        W_L = thetas[L - 1]
        u = layers[-1].KT(W_L, out).reshape(n, -1)  # u_n = W_Lᵀ x_{L,n}
        Q = torch.zeros_like(W_L)  # rows Σ_n x_n^i q_{L-1,n}^{(i)} (or Σ_n q for the identity output)
        P = x0.new_zeros(u.shape)  # P_n = Σ_i x_n^i q_{L-1,n}^{(i)}
        a = x0.new_zeros((n, c))  # a_{n,i} = ⟨W_{L,i} − u_n, q_{L-1,n}^{(i)}⟩

    passes = -(-c // p.chunk_size)  # ceil(C / chunk_size) passes of balanced sizes (10 = 4 + 3 + 3, not 4 + 4 + 2)
    bounds = [c * t // passes for t in range(passes + 1)]
    chunks = list(zip(bounds[:-1], bounds[1:]))[::-1]  # the largest first (sizes never decrease)
    kmax = chunks[0][1] - chunks[0][0]
    zbuf: list[torch.Tensor | None] = [None] * (L + 1)  # ζ_j of smooth layers, reused by every pass
    for start, stop in chunks:
        k = stop - start
        zetas: list[torch.Tensor | None] = [None] * (L + 1)
        xis: list[torch.Tensor | None] = [None] * (L + 1)  # ξ_j^{(i)}, kept only where g''_j ≠ 0
        seed = None
        # -- backward pass (Algorithm 1), k classes stacked along the batch ------------------
        if p.onehot:
            rows = W_L[start:stop]  # (k, d)
            if softmax:
                x_i = x_flat[:, start:stop].T.unsqueeze(-1)  # x^i, (k, n, 1)
                r = rows.unsqueeze(1) - u  # W_{L,i} − u_n, (k, n, d)
                xi = r * x_i  # ξ_{L-1}^{(i)} = x^i (W_{L,i} − u)
            else:
                xi = rows.repeat_interleave(n, dim=0)  # ξ_{L-1}^{(i)} = W_{L,i}
            xi = xi.reshape(k * n, *layers[-1].in_shape)  # stands in for K_Lᵀ(θ_L, ζ_L)
        else:
            v = torch.zeros((k, n, c), dtype=out.dtype, device=out.device)
            v[torch.arange(k, device=out.device), :, torch.arange(start, stop, device=out.device)] = 1
            x_rep = out.unsqueeze(0).expand(k, *out.shape).reshape(k * n, *out.shape[1:])
            seed = ConstantSeed(net.output_map, x_rep, v.reshape(x_rep.shape))
            del v
            zetas[L] = seed.zeta_L()  # ζ_L^{(i)} = S e^{(i)} (softmax) or e^{(i)} (identity)
            xi = None
        for j in range(L, 0, -1):
            if j == 1 and p.gram:  # with the Gram trick ξ_0 is never formed
                break
            if xi is None:
                xi = layers[j - 1].KT(thetas[j - 1], zetas[j])  # ξ_{j-1} = K_jᵀ(θ_j, ζ_j)
            if j > 1:
                if rec.d2g[j - 1] is None:
                    zetas[j - 1] = _slope_(rec, j - 1, xi, k)  # ζ_{j-1} = M(g'_{j-1}, ξ_{j-1}), in place
                else:  # the source term needs ξ_{j-1} as well
                    if zbuf[j - 1] is None:
                        zbuf[j - 1] = xi.new_empty((kmax * n, *xi.shape[1:]))
                    zetas[j - 1] = _mul_into(xi, rec.dg[j - 1], k, zbuf[j - 1])
                    xis[j - 1] = xi
                xi = None
        # -- value and the start of the backward-backward pass (Algorithm 2) ------------------
        if p.gram:
            Z = zetas[1].reshape(k * n, -1)
            zetas[1] = None
            h = torch.mm(Z, G2)  # h_1 = K_1(θ_1, q_0) = (2/N) G ζ_1
            value = value + torch.dot(Z.reshape(-1), h.reshape(-1)) / 2  # (1/N) Σ ⟨ζ_1, G ζ_1⟩ = (1/N) Σ ‖ξ_0‖²
            if scale != 1.0:
                h.mul_(scale)  # h_1 = K_1(θ_1, scale · q_0)
            _gram_into(A, Z)  # A += Zᵀ Z (upper blocks)
            del Z
            h = h.reshape(k * n, *layers[0].op.out_shape)
            if xis[1] is not None:
                src[1] = _source_(src[1], xis[1], h)  # Σ_i h_1 ⊙ ξ_1
                xis[1] = None
            q = _slope_(rec, 1, h, k) if L > 1 else None
            first_bb = 2
        else:
            value = value + penalty.p.value(xi).sum() / n
            q = penalty.p.grad(xi).mul_(scale / n)  # q_0 = scale · ∇p(ξ_0) / N (batch mean)
            xi = None
            h = None
            first_bb = 1
        for j in range(first_bb, L + 1):
            layer = layers[j - 1]
            if j == L and not softmax and not p.onehot:  # identity output: η_L ≡ 0, so h_L is never used
                if layer.weight is not None:
                    acc[j] = layer.Kbox_into(acc[j], q, zetas[j])
                q = h = None
                break
            if j == L and p.onehot:
                qf = q.reshape(k, n, -1)
                if softmax:
                    Q[start:stop] = torch.bmm(x_i.transpose(1, 2), qf).squeeze(1)  # Σ_n x_n^i q_n^{(i)}
                    for t in range(k):  # P_n += Σ_i x_n^i q_n^{(i)}, in place
                        P.addcmul_(qf[t], x_i[t])
                    a[:, start:stop] = r.mul_(qf).sum(-1).T  # ⟨W_{L,i} − u_n, q_n^{(i)}⟩
                    r = None
                else:
                    Q[start:stop] = qf.sum(1)
                q = h = None
                break
            if layer.weight is not None:
                acc[j] = layer.Kbox_into(acc[j], q, zetas[j])  # θ̂¹_j += K_j□(q_{j-1}, ζ_j)
            zetas[j] = None
            h = layer.K(thetas[j - 1], q)  # h_j = K_j(θ_j, q_{j-1})
            if xis[j] is not None:  # j < L: the source term Σ_i h_j^{(i)} ⊙ ξ_j^{(i)}
                src[j] = _source_(src[j], xis[j], h)
                xis[j] = None
            q = _slope_(rec, j, h, k) if j < L else None  # q_j = M(g'_j, h_j), in place (h_j is not needed again)
        # -- η̂_L += Σ_i η_L^{(i)} with the corrected Appendix B.1 formula ------------------------
        if softmax and not p.onehot:
            eta_hat.add_(seed.eta_L(h).reshape(k, *out.shape).sum(0))
        del seed, h, zetas, xis

    if p.onehot:
        acc[L] = Q
        if softmax:
            acc[L] = layers[-1].Kbox_into(Q, P, out, alpha=-1.0)  # θ̂¹_L = Q − Σ_n x_n P_nᵀ
            inner = a - layers[-1].K(W_L, P).reshape(n, c)  # a − W_L P
            eta_hat.add_((x_flat * (inner - torch.sum(x_flat * inner, dim=1, keepdim=True))).reshape(out.shape))

    if extra_eta_L is not None:  # a loss folded into the forward-backward pass (objective ℓ + λR)
        eta_hat = extra_eta_L.clone() if eta_hat is None else eta_hat.add_(extra_eta_L)

    # -- the single, accumulated forward-backward pass (Algorithm 3 on η̂, with the source terms) --
    grads = LayerGradients.zeros(L)
    eta = eta_hat
    for j in range(L, 0, -1):
        layer = layers[j - 1]
        if layer.weight is not None:
            if j == 1 and p.gram:
                g = layer.Kbox(thetas[0], _mirror_(A).mul_(2.0 * scale / n))  # θ̂¹_1 = (2/N) A W_1
            else:
                g = acc[j]
            if eta is not None:
                g = layer.Kbox_into(g, rec.xs[j - 1], eta)  # + K_j□(x_{j-1}, η̂_j)
            grads.weights[j - 1] = torch.zeros_like(layer.weight) if g is None else g
        acc[j] = None
        if layer.bias is not None:
            grads.biases[j - 1] = layer.bias_adjoint(eta) if eta is not None else torch.zeros_like(layer.bias)
        if j > 1:
            # η̂_{j-1} = S_{j-1} + g'_{j-1} ⊙ K_jᵀ(θ_j, η̂_j) with S_{j-1} = g''_{j-1} ⊙ Σ_i h_{j-1}^{(i)} ⊙ ξ_{j-1}^{(i)}
            gamma = layer.KT(thetas[j - 1], eta) if eta is not None else None
            s = src[j - 1]
            src[j - 1] = None
            if s is None:
                eta = _slope_(rec, j - 1, gamma, 1) if gamma is not None else None
            else:
                s = _sum_chunk(s, rec.dg[j - 1].shape).mul_(rec.d2g[j - 1])
                eta = s if gamma is None else s.addcmul_(gamma.reshape(s.shape), rec.dg[j - 1])
    grads.eta_1 = eta
    return value, grads


def optimized_algorithm(*, chunk_size: int | str | None = 1, gram: bool | str = False, onehot: bool | str = False) -> Callable:
    """A registrable algorithm ``(net, rec, penalty, y) -> (R, gradients, [])`` with fixed options.

    ``chunk_size`` as in :func:`jacobian_penalty_gradients`; ``"default"``
    reads :data:`DEFAULT_CHUNK_SIZE` at call time.
    The options are validated now (``chunk_size`` and the choices) and
    against the network at call time.
    """
    if chunk_size != "default":
        _check_chunk_size(chunk_size)
    _check_choice(gram, "gram")
    _check_choice(onehot, "onehot")

    def algorithm(net: Network, rec: ForwardRecord, penalty, y=None, *, scale: float = 1.0, extra_eta_L=None):
        size = DEFAULT_CHUNK_SIZE if chunk_size == "default" else chunk_size
        value, grads = jacobian_penalty_gradients(
            net, rec, penalty, chunk_size=size, gram=gram, onehot=onehot, extra_eta_L=extra_eta_L, scale=scale
        )
        return value, grads, []

    algorithm.options = {"chunk_size": chunk_size, "gram": gram, "onehot": onehot}
    algorithm.__doc__ = f"Algorithm 4 (Appendix C) with chunk_size={chunk_size!r}, gram={gram!r}, onehot={onehot!r}."
    return algorithm


def optimized_cost(*, chunk_size: int | str | None = 1, gram: bool | str = False, onehot: bool | str = False) -> Callable:
    """The cost model of Algorithm 4 with these options, ``(net, penalty, batch) -> Estimate``.

    ``2N [F + C (2F + F□) + F' + F□]`` FLOPs (the last two terms only where
    ``η̂`` does not vanish) minus twice what the chosen shortcuts save
    (:func:`shortcut_costs`), and ``6L + ⌈C / k⌉ (8L + 5)`` calls for chunks of ``k`` classes.
    """

    def cost(net: Network, penalty, batch: int) -> Estimate:
        size = resolve_chunk_size(chunk_size)
        p = plan(net, penalty, batch, chunk_size=size, gram=gram, onehot=onehot)
        F, Fbox, Fprime = layer_sums(net)
        S = penalty.num_seeds(net)
        fb = 0 if eta_vanishes(net, penalty) else Fprime + Fbox
        costs = shortcut_costs(net, batch)
        saved = sum(costs[k]["without"] - costs[k]["with"] for k, used in (("gram", p.gram), ("onehot", p.onehot)) if used)
        flops = 2 * batch * (F + S * (2 * F + Fbox) + fb) - 2 * max(0, saved) + power_iteration_flops(net, penalty, batch)
        passes = -(-S // p.chunk_size)
        return Estimate(max(flops, 0), 6 * net.depth + passes * (8 * net.depth + 5))

    return cost


def optimized_settings(*, chunk_size: int | str | None = 1, gram: bool | str = False, onehot: bool | str = False) -> Callable:
    """The settings Algorithm 4 with these options resolves to, ``(net, penalty, batch) -> dict`` (shown by :func:`dbpaper.plan`)."""

    def describe(net: Network, penalty, batch: int) -> dict:
        p = plan(net, penalty, batch, chunk_size=resolve_chunk_size(chunk_size), gram=gram, onehot=onehot)
        return {"chunk_size": p.chunk_size, "gram": p.gram, "onehot": p.onehot}

    return describe


def _register(name: str, **options) -> None:
    register_algorithm(
        name, optimized_algorithm(**options), why_not=why_not, cost=optimized_cost(**options),
        describe=optimized_settings(**options), folds_loss=True,
    )  # fmt: skip


# "optimized" first: "auto" breaks ties by registration order.
_register("optimized")
_register("optimized-shortcuts", gram=_AUTO, onehot=_AUTO)
_register("optimized-chunked", chunk_size="default", gram=_AUTO, onehot=_AUTO)
