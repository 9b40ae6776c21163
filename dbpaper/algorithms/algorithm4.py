"""The parts of Algorithm 4 (:mod:`dbpaper.algorithms.jacobian`): class chunks, accumulators, per-chunk passes.

One run of :func:`~dbpaper.algorithms.jacobian.jacobian_penalty_gradients` is

1. the classes cut into chunks (:func:`class_chunks`), each chunk stacked along
   the batch dimension;
2. per chunk (:func:`chunk_pass`, the chunk's tensors in a :class:`Chunk`):
   the backward pass of Algorithm 1 (:func:`chunk_backward`), the value and the
   start of the backward-backward pass, and Algorithm 2
   (:func:`chunk_backward_backward`), which adds ``K_j□(q_{j-1}, ζ_j)`` to
   ``θ̂¹_j`` and ``h_j ⊙ ξ_j`` to the source terms as it goes
   (:class:`Accumulators`);
3. the one forward-backward pass on the accumulated ``η̂``
   (:func:`~dbpaper.algorithms.passes.forward_backward_sweep`, shared with
   Algorithm 3).

How the passes start and end at the output layer and at layer 1 is a strategy
(:mod:`dbpaper.algorithms.shortcuts`): the plain layers of the paper, or the
one-hot and Gram shortcuts. Every tensor of a chunk is ``k`` classes stacked
along the batch: ``k N`` rows.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from ..network import ForwardRecord, Layer, Network
from .passes import NodeSums, gather

if TYPE_CHECKING:
    from .shortcuts import PlainInput, PlainOutput

__all__ = [
    "Accumulators",
    "Chunk",
    "Context",
    "check_chunk_size",
    "chunk_backward",
    "chunk_backward_backward",
    "chunk_pass",
    "class_chunks",
]


def check_chunk_size(chunk_size: int | str | None) -> None:
    """Raise a ValueError unless ``chunk_size`` is a positive int, ``None`` (all classes at once) or ``"auto"``."""
    if chunk_size is None or chunk_size == "auto":
        return
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, None (all classes at once) or 'auto', got {chunk_size!r}")


def class_chunks(c: int, chunk_size: int) -> list[range]:
    """The classes ``0..C-1`` in ``⌈C / chunk_size⌉`` ranges of balanced sizes, the largest first.

    10 classes by 4 are 4 + 3 + 3, not 4 + 4 + 2; the sizes never increase, so
    that buffers sized for the first chunk serve every chunk.
    """
    passes = -(-c // chunk_size)
    bounds = [c * t // passes for t in range(passes + 1)]
    return [range(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])][::-1]



@dataclasses.dataclass(eq=False)
class Context:
    """What every part of one run reads: the network, its forward record, ``θ_j``, ``N``, the scale.

    ``zeta_buffers[j]`` holds ``ζ_j`` of a layer with ``g''_j ≠ 0`` (whose ``ξ_j``
    is kept as well), sized for the largest chunk and reused by every chunk.
    """

    net: Network
    rec: ForwardRecord
    thetas: list[torch.Tensor]
    n: int
    depth: int
    scale: float
    kmax: int
    zeta_buffers: list[torch.Tensor | None]

    @classmethod
    def of(cls, net: Network, rec: ForwardRecord, scale: float, kmax: int) -> Context:
        x0 = rec.xs[0]
        thetas = [layer.theta(x0) for layer in net.layers]
        return cls(net, rec, thetas, x0.shape[0], net.depth, scale, kmax, [None] * (net.depth + 1))

    def zeta_buffer(self, j: int, like: torch.Tensor) -> torch.Tensor:
        """The buffer for ``ζ_j`` (allocated by the first, largest chunk)."""
        if self.zeta_buffers[j] is None:
            self.zeta_buffers[j] = like.new_empty((self.kmax * self.n, *like.shape[1:]))
        return self.zeta_buffers[j]


@dataclasses.dataclass(eq=False)
class Accumulators:
    """What Algorithm 4 keeps across the chunks of classes; indexed by the layer number ``j``.

    ``weights[j]``: ``θ̂¹_j = Σ_i K_j□(q_{j-1}^{(i)}, ζ_j^{(i)})`` (dense layers written
    in place); ``sources[j]``: ``Σ_i h_j^{(i)} ⊙ ξ_j^{(i)}`` where ``g''_j ≠ 0``, one
    slot per stacked class (summed once, by :meth:`eta`); ``eta_L``: ``η̂_L``
    (``None`` where it vanishes identically, the identity output); ``value``: ``R``.
    """

    weights: list[torch.Tensor | None]
    sources: list[torch.Tensor | None]
    eta_L: torch.Tensor | None
    value: torch.Tensor
    #: the forward record (a normalisation's source term is its bilinear ``g''_j[h_j, ξ_j]``, formed per seed)
    rec: ForwardRecord | None = None

    @classmethod
    def empty(cls, ctx: Context, eta_L: bool) -> Accumulators:
        out = ctx.rec.output
        slots = [None] * (ctx.depth + 1)
        return cls(list(slots), list(slots), torch.zeros_like(out) if eta_L else None, out.new_zeros(()), ctx.rec)

    def add_value(self, term: torch.Tensor) -> None:
        self.value = self.value + term

    def add_weight_adjoint(self, layer: Layer, j: int, q: torch.Tensor, zeta: torch.Tensor) -> None:
        """``θ̂¹_j += K_j□(q_{j-1}, ζ_j)`` for layer ``j`` (one with a weight)."""
        self.weights[j] = layer.Kbox_into(self.weights[j], q, zeta)

    def add_source(self, j: int, xi: torch.Tensor, h: torch.Tensor) -> None:
        """``Σ_i h_j ⊙ ξ_j`` += ``h_j ⊙ ξ_j`` of the stacked classes (``ξ_j`` may be overwritten).

        For a normalisation ``g_j`` the sum is of the source terms themselves,
        ``Σ_i g''_j[h_j^{(i)}, ξ_j^{(i)}]``: its ``g''`` is bilinear, not one diagonal for all seeds.
        """
        if self.rec is not None and self.rec.is_coupled(j):
            term, acc = self.rec.source(j, h, xi), self.sources[j]
            if acc is None:
                self.sources[j] = term  # the first, largest chunk: room for every later one
            else:
                acc[: term.shape[0]].add_(term)
            return
        self.sources[j] = _source_(self.sources[j], xi, h)

    def fold_in(self, extra_eta_L: torch.Tensor | None) -> None:
        """``η̂_L += extra_eta_L`` (a loss's ``∇_{z_L} ℓ`` folded into the final pass)."""
        if extra_eta_L is not None:
            self.eta_L = extra_eta_L.clone() if self.eta_L is None else self.eta_L.add_(extra_eta_L)

    def take_weight(self, j: int) -> torch.Tensor | None:
        """``θ̂¹_j``, released from the accumulators (it becomes the weight gradient)."""
        acc, self.weights[j] = self.weights[j], None
        return acc

    def eta(self, rec: ForwardRecord, j: int, gamma: torch.Tensor | None) -> torch.Tensor | None:
        """``η̂_j = S_j + g'_j ⊙ γ_j`` with ``S_j = g''_j ⊙ Σ_i h_j^{(i)} ⊙ ξ_j^{(i)}`` (in place; ``None``: zero)."""
        s, self.sources[j] = self.sources[j], None
        if s is None:
            return _slope_(rec, j, gamma, 1) if gamma is not None else None
        if rec.is_coupled(j):  # S_j = Σ_i g''_j[h_j^{(i)}, ξ_j^{(i)}], summed over the stacked classes
            s = _sum_chunk(s, rec.slope_in[j].shape)
            return s if gamma is None else _slope_(rec, j, gamma, 1).view(s.shape).add_(s)
        d2g = rec.d2g[j]
        s = _sum_chunk(s, d2g.shape)
        if gamma is None:
            return s.mul_(d2g)
        return _slope_(rec, j, gamma, 1).view(d2g.shape).addcmul_(s, d2g)  # g'_j ⊙ γ_j in place, + g''_j ⊙ Σ_i h_j ⊙ ξ_j


@dataclasses.dataclass(eq=False)
class Chunk:
    """One chunk of classes, stacked along the batch (``k N`` rows), and what its passes hand on.

    ``zetas[j] = ζ_j`` and, where ``g''_j ≠ 0``, ``xis[j] = ξ_j`` (for the source
    term); ``q`` and ``h``: the latest ``q_j``, ``h_j`` of Algorithm 2. Each is
    released as soon as it is used, and the whole chunk when its pass ends.
    """

    classes: range
    k: int
    zetas: list[torch.Tensor | None]
    xis: list[torch.Tensor | None]
    q: torch.Tensor | None = None
    h: torch.Tensor | None = None
    #: ``q_i`` of Algorithm 2 while a later layer still reads or adds it (``q_{L-1}`` alone in a chain)
    qs: list[torch.Tensor | None] | None = None

    @classmethod
    def of(cls, classes: range, depth: int) -> Chunk:
        return cls(classes, len(classes), [None] * (depth + 1), [None] * (depth + 1))

    def take_q_h(self, net: Network) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(q_{p(L)}, h)``: what the output layer's operator reads, and the latest ``h``; no longer held by the chunk."""
        q = self.qs[net.sources[net.depth]] if self.qs is not None else self.q
        h, self.q, self.h = self.h, None, None
        return q, h


def chunk_pass(ctx: Context, first: PlainInput, last: PlainOutput, acc: Accumulators, classes: range) -> None:
    """Algorithms 1 and 2 for ``classes``, stacked along the batch, accumulated into ``acc``.

    ``first`` and ``last`` are the strategies at layer 1 and at the output layer
    (:mod:`dbpaper.algorithms.shortcuts`); the layers ``first.lowest, ..., L-1``
    between them are plain. No tensor of the chunk outlives the call.
    """
    chunk = Chunk.of(classes, ctx.depth)
    xi_0 = chunk_backward(ctx, chunk, last.start(chunk), first.lowest)  # from ζ_L, or ξ_{L-1} in closed form
    first.start(chunk, xi_0, acc)  # the value, and q_0 (q_1 with the Gram shortcut)
    del xi_0
    chunk_backward_backward(ctx, acc, chunk, first.lowest)
    last.end(chunk, acc)


def chunk_backward(ctx: Context, chunk: Chunk, xi: torch.Tensor | None, lowest: int) -> torch.Tensor | None:
    """Algorithm 1 for a chunk, ``j = L, ..., lowest``: ``ξ_{p(j)} += K_jᵀ(θ_j, ζ_j)``, ``ζ_{j-1} = g'_{j-1} ⊙ ξ_{j-1}``.

    Starts from ``chunk.zetas[L]``, or from ``xi = ξ_{L-1}`` where the output
    end gave it in closed form. Across a skip connection ``ζ_j`` is added to
    ``ξ_a``; ``ξ_{j-1}`` is complete once layer ``j`` is done (every layer that
    reads or adds ``x_{j-1}`` comes after it). ``ζ_j`` is formed in place, except where
    ``g''_j ≠ 0``: there ``ξ_j`` is kept in ``chunk.xis[j]`` for the source term
    and ``ζ_j`` written into a reused buffer. Returns ``ξ_0`` (``None`` with
    ``lowest = 2``: the Gram shortcut never forms it).
    """
    rec, net, zetas, k = ctx.rec, ctx.net, chunk.zetas, chunk.k
    slots = NodeSums(ctx.depth)  # ξ_i, summed over the layers that read or add x_i
    for j in range(ctx.depth, lowest - 1, -1):
        if j == ctx.depth and xi is not None:
            slots.add(j - 1, xi, owned=True)  # the closed form stands in for K_Lᵀ(θ_L, ζ_L) (a plain last layer)
        else:
            layer = net.layers[j - 1]
            slots.add(net.sources[j], layer.KT(ctx.thetas[j - 1], zetas[j]), owned=True)  # ξ_{p(j)} += K_jᵀ(θ_j, ζ_j)
            for a in net.adds[j]:  # ξ_a += ζ_j (ζ_j is kept: borrowed, not copied)
                slots.add(a, zetas[j].reshape(zetas[j].shape[0], *net.node_shapes[a]), owned=False)
            if j < ctx.depth and layer.weight is None:
                zetas[j] = None  # no K_j□ to feed: ζ_j has done its work
        if j > 1:
            unit = rec.unit is not None and rec.unit[j - 1]
            xi = slots.take(j - 1, copy=not unit)  # g_{j-1} = id: ζ_{j-1} = ξ_{j-1} is only read, a borrowed ζ serves
            if not rec.curved(j - 1):
                zetas[j - 1] = _slope_(rec, j - 1, xi, k)  # ζ_{j-1} = M(g'_{j-1}, ξ_{j-1}), in place
            else:  # the source term needs ξ_{j-1} as well
                zetas[j - 1] = _slope_into(rec, j - 1, xi, k, ctx.zeta_buffer(j - 1, xi))
                chunk.xis[j - 1] = xi
    return slots.take(0) if lowest == 1 else None


def chunk_backward_backward(ctx: Context, acc: Accumulators, chunk: Chunk, lowest: int) -> None:
    """Algorithm 2 for a chunk on the hidden layers ``j = lowest, ..., L-1``, from ``chunk.q = q_{lowest-1}``.

    ``θ̂¹_j += K_j□(q_{p(j)}, ζ_j)``, ``h_j = K_j(θ_j, q_{p(j)}) + Σ_{a ∈ A(j)} q_a``, the source term
    ``Σ_i h_j ⊙ ξ_j`` and ``q_j = g'_j ⊙ h_j`` (in place); ``ζ_j``, ``ξ_j`` and ``q_i``
    are released once used for the last time. Leaves the ``q_i`` that layer ``L`` reads in
    ``chunk.qs`` and ``h_{L-1}`` in ``chunk.h`` for the output end.
    """
    rec, net, zetas, xis = ctx.rec, ctx.net, chunk.zetas, chunk.xis
    qs: list[torch.Tensor | None] = [None] * (ctx.depth + 1)
    qs[lowest - 1], h = chunk.q, chunk.h
    chunk.q = chunk.h = None
    for j in range(lowest, ctx.depth):
        layer, q = net.layers[j - 1], qs[net.sources[j]]
        if layer.weight is not None:
            acc.add_weight_adjoint(layer, j, q, zetas[j])  # θ̂¹_j += K_j□(q_{p(j)}, ζ_j)
        zetas[j] = None
        h = gather(net, j, qs, layer.K(ctx.thetas[j - 1], q))  # h_j = K_j(θ_j, q_{p(j)}) + Σ_a q_a
        for i in (net.sources[j], *net.adds[j]):
            if net.last_use[i] == j:
                qs[i] = None
        if xis[j] is not None:  # the source term Σ_i h_j^{(i)} ⊙ ξ_j^{(i)}
            acc.add_source(j, xis[j], h)
            xis[j] = None
        qs[j] = _slope_(rec, j, h, chunk.k)  # q_j = M(g'_j, h_j), in place (h_j is not needed again)
    chunk.qs, chunk.h = qs, h


def _dense(t: torch.Tensor) -> bool:
    """Contiguous in the standard or the channels-last layout (convolutions on the CPU run channels-last)."""
    return t.is_contiguous() or (t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _slope_(rec: ForwardRecord, j: int, t: torch.Tensor, k: int) -> torch.Tensor:
    """``M(g'_j(z_j), t)`` in place for ``k`` classes stacked along the batch; ``t`` unchanged where ``g_j`` is the identity.

    One pass of the activation's own backward kernel (:meth:`dbpaper.Activation.slope`), the record's
    ``x_j`` or ``z_j`` broadcast over the stacked classes.
    """
    if rec.unit is not None and rec.unit[j]:
        return t
    if not _dense(t):
        t = t.contiguous()
    a = rec.slope_in[j]
    view = t.view(k, *a.shape)
    rec.acts[j].slope(view, a, out=view)
    return t


def _slope_into(rec: ForwardRecord, j: int, t: torch.Tensor, k: int, buf: torch.Tensor) -> torch.Tensor:
    """``M(g'_j(z_j), t)`` for ``k`` stacked classes, written into the leading rows of ``buf`` (``t`` is kept).

    ``buf`` holds the largest chunk and is reused by every pass over the
    classes, so that no fresh memory is touched per pass.
    """
    out = buf[: t.shape[0]]
    a = rec.slope_in[j]
    if rec.unit is not None and rec.unit[j]:
        return out.copy_(t)
    rec.acts[j].slope(t.reshape(k, *a.shape), a, out=out.view(k, *a.shape))
    return out


def _source_(acc: torch.Tensor | None, xi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``acc + h ⊙ ξ`` for ``k`` stacked classes, into the leading rows of ``acc`` (one fused ``addcmul_``).

    ``acc`` has room for the largest chunk; without it (the first, largest
    pass) ``ξ`` itself becomes the accumulator, overwritten in place. The sum
    over the stacked classes is taken once after the last pass
    (:func:`_sum_chunk`), so no temporary of the stacked size is formed per pass.
    """
    if acc is None:
        return xi.mul_(h.reshape(xi.shape)) if _dense(xi) else torch.mul(xi, h.reshape(xi.shape))
    acc[: xi.shape[0]].addcmul_(xi, h.reshape(xi.shape))
    return acc


def _sum_chunk(acc: torch.Tensor, shape) -> torch.Tensor:
    """``Σ_i h_j^{(i)} ⊙ ξ_j^{(i)}``: the accumulator of :func:`_source_` summed over its stacked classes."""
    return acc.reshape(-1, *shape).sum(0)
