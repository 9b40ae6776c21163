"""The passes of Section 4: Algorithms 1–3, the standard backpropagation of Section 4.5
and the linearised forward pass used by power iterations.

Only the layers' bilinear operators ``K``, ``Kᵀ``, ``K□`` and the Hadamard
product ``M`` are used — never autograd. Index conventions (written once):
lists are indexed by the layer number ``j``; ``xis[j] = ξ_j`` for
``j = 0..L``, ``zetas[j] = ζ_j``, ``qs[j] = q_j`` for ``j = 0..L-1``,
``hs[j] = h_j`` and ``etas[j] = η_j`` for ``j = 1..L``; unused slots hold
``None``. A ``None`` η means "identically zero" (Appendix B.3, Section 5.3)
and the operator evaluations it would feed are skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..network import ForwardRecord, Network

__all__ = [
    "BackwardPass",
    "BackwardBackwardPass",
    "LayerGradients",
    "NodeSums",
    "backward_pass",
    "backward_backward_pass",
    "forward_backward_pass",
    "forward_backward_sweep",
    "input_gradient",
    "linearized_forward",
    "standard_backprop",
]


@dataclasses.dataclass(eq=False)
class BackwardPass:
    """ξ_j and ζ_j of eq. (14)."""

    xis: list[torch.Tensor | None]
    zetas: list[torch.Tensor | None]


@dataclasses.dataclass(eq=False)
class BackwardBackwardPass:
    """q_j and h_j of eq. (18)."""

    qs: list[torch.Tensor | None]
    hs: list[torch.Tensor | None]


@dataclasses.dataclass(eq=False)
class LayerGradients:
    """Per-layer gradients (``None`` where a layer has no such parameter) and what gives ``∇_{x_0}``.

    ``∇_{x_0} = K_1ᵀ(θ_1, η_1) + input_extra`` (``input_gradient``):
    ``input_extra`` collects what the other layers that read or add ``x_0``
    send back (``None`` in a chain, where layer 1 alone reads ``x_0``).
    """

    weights: list[torch.Tensor | None]
    biases: list[torch.Tensor | None]
    eta_1: torch.Tensor | None = None
    input_extra: torch.Tensor | None = None

    @classmethod
    def zeros(cls, depth: int) -> LayerGradients:
        return cls([None] * depth, [None] * depth, None)

    def add(self, other: LayerGradients) -> None:
        """Accumulate ``other`` into ``self`` (used across classes and for ``L + λR``)."""
        for lst, olst in ((self.weights, other.weights), (self.biases, other.biases)):
            for i, g in enumerate(olst):
                if g is not None:
                    lst[i] = g if lst[i] is None else lst[i] + g
        for name in ("eta_1", "input_extra"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None:
                setattr(self, name, theirs if mine is None else mine + theirs)

    def scaled(self, factor: float) -> LayerGradients:
        f = lambda t: None if t is None else factor * t  # noqa: E731
        return LayerGradients([f(g) for g in self.weights], [f(g) for g in self.biases], f(self.eta_1), f(self.input_extra))


def input_gradient(net: Network, grads: LayerGradients) -> torch.Tensor | None:
    """``∇_{x_0} = K_1ᵀ(θ_1, η_1) + input_extra`` (``None`` where both vanish identically)."""
    terms = []
    if grads.eta_1 is not None:
        first = net.layers[0]
        terms.append(first.KT(first.theta(grads.eta_1), grads.eta_1))
    if grads.input_extra is not None:
        terms.append(grads.input_extra.reshape(grads.input_extra.shape[0], *net.in_shape))
    return sum(terms[1:], terms[0]) if terms else None


class NodeSums:
    """``Σ`` over the layers that read or add each node ``x_i`` (the sum rule of residual networks), without copies.

    A term the caller keeps (``ζ_j`` or ``η_j`` sent across a skip connection)
    is *borrowed*: it is added to, never written into, and copied by
    :meth:`take` only where the taker will write into it. In a chain every
    node has one term, the fresh output of one ``Kᵀ``, and nothing is copied.
    """

    def __init__(self, depth: int):
        self.slots: list[torch.Tensor | None] = [None] * (depth + 1)
        self.borrowed: list[bool] = [False] * (depth + 1)

    def add(self, i: int, t: torch.Tensor, owned: bool) -> None:
        """``slots[i] += t``; ``owned``: ``t`` is the caller's fresh tensor, free to be written into."""
        s = self.slots[i]
        if s is None:
            self.slots[i], self.borrowed[i] = t, not owned
        elif not self.borrowed[i]:
            s.add_(t.reshape(s.shape))
        else:
            self.slots[i], self.borrowed[i] = (t.add_(s.reshape(t.shape)) if owned else s + t.reshape(s.shape)), False

    def take(self, i: int, copy: bool = True) -> torch.Tensor | None:
        """The sum at ``x_i``, no longer held; ``copy=False``: a borrowed term as it is (to be read only)."""
        s, self.slots[i] = self.slots[i], None
        return s.clone() if copy and s is not None and self.borrowed[i] else s


def send_back(net: Network, j: int, t: torch.Tensor, sums: NodeSums, *, skip_input_op: bool = False) -> None:
    """The adjoint of layer ``j``'s inputs applied to ``t`` (``ζ_j`` or ``η_j``), added to ``sums``.

    ``K_jᵀ(θ_j, t)`` goes to the node ``x_{p(j)}`` it reads and ``t`` itself to
    every node ``x_a`` it adds (Algorithm 1's ``ξ`` and Algorithm 3's ``γ``
    across a skip connection). ``skip_input_op``: layer 1's ``K_1ᵀ`` to ``x_0``
    is left to ``input_gradient`` (formed only where ``∇_{x_0}`` is wanted).
    """
    layer, p = net.layers[j - 1], net.sources[j]
    if not (skip_input_op and p == 0 and j == 1):
        sums.add(p, layer.KT(layer.theta(t), t), owned=True)
    for a in net.adds[j]:
        sums.add(a, t.reshape(t.shape[0], *net.node_shapes[a]), owned=False)


def gather(net: Network, j: int, ts: list[torch.Tensor | None], t: torch.Tensor) -> torch.Tensor:
    """``t + Σ_{a ∈ A(j)} ts[a]``: the skip connections of layer ``j`` added to ``K_j(θ_j, ·)``'s value ``t``."""
    for a in net.adds[j]:
        t = t.add_(ts[a].reshape(t.shape))  # t: the caller's fresh K_j(θ_j, ·)
    return t


def backward_pass(net: Network, rec: ForwardRecord, zeta_L: torch.Tensor) -> BackwardPass:
    """Algorithm 1 (eqs. (15)–(16)): ``ζ_j = G'_j(z_j) ξ_j`` and ``ξ_{j-1} = K_jᵀ(θ_j, ζ_j)``.

    Starts from ``ζ_L = (dx_L/dz_L)* v`` (computed by the seed, Appendix B);
    ``L`` evaluations of ``Kᵀ``. ``ξ_0`` is the input gradient whose penalty
    ``p(ξ_0)`` is ``R``. With residual blocks ``ξ_i`` sums what every layer
    that reads or adds ``x_i`` sends back (``send_back``): ``K_jᵀ(θ_j, ζ_j)``
    through an operator, ``ζ_j`` itself across a skip connection.
    """
    L = net.depth
    xis: list[torch.Tensor | None] = [None] * (L + 1)
    zetas: list[torch.Tensor | None] = [None] * (L + 1)
    zetas[L] = zeta_L
    sums = NodeSums(L)
    for j in range(L, 0, -1):
        if j < L:
            xis[j] = sums.take(j, copy=False)  # complete: every layer that reads or adds x_j comes after it
            zetas[j] = rec.slope(j, xis[j])  # M(g'_j(z_j), ξ_j)
        send_back(net, j, zetas[j], sums)  # ξ_{p(j)} += K_jᵀ(θ_j, ζ_j); ξ_a += ζ_j
    xis[0] = sums.take(0, copy=False)
    return BackwardPass(xis, zetas)


def backward_backward_pass(net: Network, rec: ForwardRecord, q_0: torch.Tensor, *, need_h_L: bool = True) -> BackwardBackwardPass:
    """Algorithm 2 (eqs. (20)–(21)): ``h_j = K_j(θ_j, q_{j-1})``, ``q_j = G'_j(z_j) h_j``.

    Starts from ``q_0 = ∇p(ξ_0)``; ``L`` evaluations of ``K``. ``q_L`` is not
    formed: nothing depends on it. ``h_L`` only feeds ``η_L`` (Appendix B);
    where ``η_L`` vanishes identically (an identity output with a
    network-independent ``v``, Section 5.3) pass ``need_h_L=False`` and it is
    not formed either: ``L - 1`` evaluations. With residual blocks
    ``h_j = K_j(θ_j, q_{p(j)}) + Σ_{a ∈ A(j)} q_a`` (the forward pass's wiring).
    """
    L = net.depth
    qs: list[torch.Tensor | None] = [None] * (L + 1)
    hs: list[torch.Tensor | None] = [None] * (L + 1)
    qs[0] = q_0
    for j in range(1, L + 1 if need_h_L else L):
        layer = net.layers[j - 1]
        hs[j] = gather(net, j, qs, layer.K(layer.theta(q_0), qs[net.sources[j]]))
        if j < L:
            qs[j] = rec.slope(j, hs[j])
    return BackwardBackwardPass(qs, hs)


def forward_backward_pass(
    net: Network,
    rec: ForwardRecord,
    bp: BackwardPass,
    bbp: BackwardBackwardPass,
    eta_L: torch.Tensor | None,
    trace: dict[str, list[torch.Tensor | None]] | None = None,
) -> LayerGradients:
    """Algorithm 3 (eqs. (22)–(31)) with the corrected argument order of ``K□`` (erratum E3).

    For ``j = L, ..., 1``::

        η_j   = η_L (Appendix B)                          if j = L
        η_j   = M(G''_j(z_j) h_j, ξ_j) + G'_j(z_j) γ_j    otherwise       (28)
        ∇_θj R = K_j□(q_{j-1}, ζ_j) + K_j□(x_{j-1}, η_j)                    (31)
        ∇_bj R = η_j
        γ_{j-1} = K_jᵀ(θ_j, η_j)                          if j > 1         (30)

    ``L - 1`` evaluations of ``Kᵀ`` in general; none where ``η_j`` vanishes
    identically (``None``), e.g. for all ``j`` with an identity output and a
    network-independent ``v`` in a locally linear network (Section 5.3).
    With a dict ``trace``, the lists ``trace["eta"]`` and ``trace["gamma"]``
    (indexed by ``j``) are filled for inspection. The pass itself is
    :func:`forward_backward_sweep` (shared with Algorithm 4), given this seed's
    terms.
    """

    def weight_term(j: int) -> torch.Tensor:  # K_j□(q_{j-1}, ζ_j)
        return net.layers[j - 1].Kbox(bbp.qs[net.sources[j]], bp.zetas[j])

    def eta(j: int, gamma: torch.Tensor | None) -> torch.Tensor | None:  # eq. (28)
        terms = []
        if rec.curved(j):
            terms.append(rec.source(j, bbp.hs[j], bp.xis[j]))  # M(G''(z_j) h_j, ξ_j)
        if gamma is not None:
            terms.append(rec.slope(j, gamma))  # G'(z_j) γ_j
        return sum(terms[1:], terms[0]) if terms else None

    return forward_backward_sweep(net, rec, eta_L, weight_term, eta, trace)


def forward_backward_sweep(
    net: Network,
    rec: ForwardRecord,
    eta_L: torch.Tensor | None,
    weight_term: Callable[[int], torch.Tensor | None],
    eta: Callable[[int, torch.Tensor | None], torch.Tensor | None],
    trace: dict[str, list[torch.Tensor | None]] | None = None,
) -> LayerGradients:
    """The forward-backward pass of Algorithm 3 and of Algorithm 4's final, accumulated pass.

    For ``j = L, ..., 1``::

        η_j    = η_L                              if j = L
        η_j    = eta(j, γ_j)                      otherwise: S_j + G'_j(z_j) γ_j
        ∇_θj R = weight_term(j) + K_j□(x_{j-1}, η_j)
        ∇_bj R = η_j (summed by the bias's adjoint)
        γ_{j-1} = K_jᵀ(θ_j, η_j)                  if j > 1

    Algorithm 3 (:func:`forward_backward_pass`) gives one seed's terms: the
    source ``S_j = M(G''_j h_j, ξ_j)`` and ``weight_term(j) = K_j□(q_{j-1}, ζ_j)``;
    Algorithm 4 (``dbpaper.algorithms.jacobian``) the accumulated ones:
    ``S_j = g''_j ⊙ Σ_i h_j ⊙ ξ_j``, ``θ̂¹_j`` and ``η̂_L``. ``eta`` forms ``η_j`` as
    the caller's arithmetic requires (in place where it may); ``weight_term`` is
    called for layers with a weight only, and may return ``None`` (no term).
    A ``None`` ``η_j`` is identically zero: the ``K□`` and ``Kᵀ`` it would feed
    are skipped. Returns the gradients with ``η_1``, from which
    ``∇_{x_0} R = K_1ᵀ(θ_1, η_1)``; ``trace`` as in :func:`forward_backward_pass`.
    """
    L = net.depth
    grads = LayerGradients.zeros(L)
    if trace is not None:
        trace["eta"], trace["gamma"] = [None] * (L + 1), [None] * (L + 1)
    gammas = NodeSums(L)  # γ_i, summed over the layers that read or add x_i
    for j in range(L, 0, -1):
        layer = net.layers[j - 1]
        eta_j = eta_L if j == L else eta(j, gammas.take(j))  # eta may form η_j in place of γ_j
        p = net.sources[j]
        if layer.weight is not None:
            g = weight_term(j)
            if eta_j is not None:
                g = layer.Kbox_into(g, rec.xs[p], eta_j)  # + K_j□(x_{p(j)}, η_j), accumulated in place
            grads.weights[j - 1] = torch.zeros_like(layer.weight) if g is None else g
        if layer.bias is not None:
            grads.biases[j - 1] = layer.bias_adjoint(eta_j) if eta_j is not None else torch.zeros_like(layer.bias)
        if eta_j is not None:
            send_back(net, j, eta_j, gammas, skip_input_op=True)  # γ_{p(j)} += K_jᵀ(θ_j, η_j); γ_a += η_j
        if trace is not None:
            trace["eta"][j] = eta_j
            if j > 1:
                trace["gamma"][j - 1] = gammas.slots[j - 1]
        if j == 1:
            grads.eta_1 = eta_j
    grads.input_extra = gammas.take(0, copy=False)
    return grads


def standard_backprop(net: Network, rec: ForwardRecord, zeta_L: torch.Tensor, xis_reuse: BackwardPass | None = None) -> LayerGradients:
    """Section 4.5, eqs. (32)–(33): ``∇_θj ℓ = K_j□(x_{j-1}, ζ_j)``, ``∇_bj ℓ = ζ_j``.

    With ``xis_reuse`` (the backward pass of classical double backpropagation,
    whose ``v`` is ``∇_{x_L} ℓ``) the ``ζ_j`` are reused and no ``Kᵀ`` is
    evaluated; otherwise the ``L - 1`` evaluations ``ξ_{j-1} = K_jᵀ(θ_j, ζ_j)``,
    ``j ≥ 2``, are performed.
    """
    L = net.depth
    grads = LayerGradients.zeros(L)
    xis = NodeSums(L)
    for j in range(L, 0, -1):
        layer = net.layers[j - 1]
        if xis_reuse is not None:
            zeta = xis_reuse.zetas[j]
        else:
            zeta = zeta_L if j == L else rec.slope(j, xis.take(j, copy=False))
        if layer.weight is not None:
            grads.weights[j - 1] = layer.Kbox(rec.xs[net.sources[j]], zeta)
        if layer.bias is not None:
            grads.biases[j - 1] = layer.bias_adjoint(zeta)
        if xis_reuse is None:
            send_back(net, j, zeta, xis, skip_input_op=True)  # ξ_{p(j)} += K_jᵀ(θ_j, ζ_j); ξ_a += ζ_j
        elif j > 1:  # reused: only what the other readers of x_0 send to it
            if net.sources[j] == 0:
                xis.add(0, layer.KT(layer.theta(zeta), zeta), owned=True)
            for a in net.adds[j]:
                if a == 0:
                    xis.add(0, zeta, owned=False)
    grads.eta_1 = zeta  # ζ_1: ∇_{x_0} ℓ = K_1ᵀ(θ_1, ζ_1) + what the other readers of x_0 send back
    grads.input_extra = xis.take(0, copy=False)
    return grads


def linearized_forward(net: Network, rec: ForwardRecord, u: torch.Tensor) -> torch.Tensor:
    """``(dx_L/dx_0) u``: the forward pass linearised at the recorded point (``L`` evaluations of ``K``)."""
    L = net.depth
    ts: list[torch.Tensor | None] = [u] + [None] * L
    for j, layer in enumerate(net.layers, start=1):
        t = gather(net, j, ts, layer.K(layer.theta(u), ts[net.sources[j]]))
        ts[j] = rec.slope(j, t) if j < L else layer.activation.jvp(rec.output, t)
    return ts[L]
