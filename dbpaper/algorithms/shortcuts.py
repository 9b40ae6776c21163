"""How Algorithm 4's passes start and end: the plain layers, the Gram shortcut, the one-hot shortcut.

Each chunk of classes (:func:`~dbpaper.algorithms.algorithm4.chunk_pass`) meets
two strategies. The *output end* starts the backward pass and ends the
backward-backward pass at layer ``L``: :class:`PlainOutput` (the seed of
Appendix B: ``ζ_L^{(i)} = S e^{(i)}``, ``K_L□`` per class, ``η̂_L`` by the
corrected B.1 formula) or :class:`OneHotOutput` (closed forms of ``v = e^{(i)}``
for a dense output layer). The *input end* ends the backward pass and starts
the backward-backward pass at layer 1, forming the value on the way:
:class:`PlainInput` (``p(ξ_0)`` and ``q_0 = ∇p(ξ_0) / N``) or :class:`GramInput`
(``G = W_1 W_1ᵀ``: ``ξ_0`` never formed). Both ends share one interface, so the
main loop does not ask which is used; the mathematics of the shortcuts is in
:mod:`dbpaper.algorithms.jacobian`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .. import counting
from ..activations import Softmax
from ..network import Network
from ..operators import Dense
from ..penalties import value_and_grad
from ..seeds import ConstantSeed, Seed
from .algorithm4 import Accumulators, Chunk, Context, _slope_
from .passes import gather

if TYPE_CHECKING:
    from ..penalties import Penalty

__all__ = [
    "ELEMENTWISE_COST",
    "GRAM_MAX_COND",
    "GRAM_MAX_EPS_COND",
    "GramInput",
    "OneHotOutput",
    "PlainInput",
    "PlainOutput",
    "SeedOutput",
    "gram_is_stable",
    "input_end",
    "output_end",
    "shortcut_costs",
]

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
    if isinstance(first.op, Dense) and net.plain_edge(1):
        d0, d1 = first.op.in_numel, first.op.out_numel
        f = _sym_fraction(d1)
        out["gram"] = {
            "without": 3 * n * c * d0 * d1 + 2 * w * n * c * d0,
            "with": round((1 + f) * (n * c * d1 * d1 + d1 * d1 * d0)) + w * n * c * d1,
        }
    if net.depth >= 2 and isinstance(last.op, Dense) and net.plain_edge(net.depth):
        d = last.op.in_numel
        out["onehot"] = {"without": 3 * n * c * c * d + 13 * w * n * c * c, "with": 6 * w * n * c * d + 3 * n * c * d}
    return out


# -- layer 1 ---------------------------------------------------------------------------------------


class PlainInput:
    """Layer 1 as in the paper: ``ξ_0 = K_1ᵀ(θ_1, ζ_1)``, ``R += mean_n p(ξ_0)``, ``q_0 = scale · ∇p(ξ_0) / N``."""

    #: the lowest layer of the plain per-chunk passes: Algorithm 1 runs down to it (forming ``ξ_{lowest-1}``),
    #: Algorithm 2 resumes there from ``q_{lowest-1}``
    lowest = 1

    def __init__(self, ctx: Context, penalty: Penalty):
        self.ctx: Context = ctx
        self.penalty: Penalty = penalty

    def start(self, chunk: Chunk, xi_0: torch.Tensor, acc: Accumulators) -> None:
        """The value, and ``chunk.q = q_{lowest-1}``, from which Algorithm 2 resumes."""
        n = self.ctx.n
        total, chunk.q = value_and_grad(self.penalty.p, xi_0, self.ctx.scale / n)  # q_0 = scale · ∇p(ξ_0) / N (batch mean)
        acc.add_value(total / n)

    def weight_term(self, acc: Accumulators, j: int) -> torch.Tensor | None:
        """``θ̂¹_j`` for the final pass."""
        return acc.take_weight(j)


class GramInput(PlainInput):
    """The Gram shortcut for a dense first layer: ``‖ξ_0‖² = ⟨ζ_1, G ζ_1⟩``, ``h_1 = (2/N) G ζ_1``, ``θ̂¹_1 = (2/N) A W_1``.

    For ``p = c ‖·‖²`` (the penalty's :attr:`~dbpaper.penalties.Penalty.squared_norm_scale`)
    the value, ``h_1`` and ``θ̂¹_1`` carry the factor ``c``.

    ``G2 = (2/N) W_1 W_1ᵀ`` is formed once (by symmetric blocks, counted as one
    ``K``); ``A = Σ_{i,n} ζ_1 ζ_1ᵀ`` is accumulated on its upper blocks and
    mirrored at the end.
    """

    lowest = 2  # ξ_0 is never formed

    def __init__(self, ctx: Context, penalty: Penalty, G2: torch.Tensor):
        super().__init__(ctx, penalty)
        counting.record("apply")
        self.c: float | None = penalty.squared_norm_scale  # p = c ‖·‖²
        self.G2 = G2.mul_(2.0 / ctx.n)  # the factor 2/N of q_0 = 2 ξ_0 / N folded in
        d1 = G2.shape[0]
        self.A = G2.new_zeros((d1, d1))  # Σ_{i,n} ζ_1 ζ_1ᵀ, upper blocks until the class loop ends

    def start(self, chunk: Chunk, xi_0: torch.Tensor | None, acc: Accumulators) -> None:
        ctx, k = self.ctx, chunk.k
        Z = chunk.zetas[1].reshape(k * ctx.n, -1)
        chunk.zetas[1] = None
        h = torch.mm(Z, self.G2)  # h_1 = K_1(θ_1, q_0) = (2/N) G ζ_1
        acc.add_value(torch.dot(Z.reshape(-1), h.reshape(-1)) * (self.c / 2))  # (c/N) Σ ⟨ζ_1, G ζ_1⟩ = (1/N) Σ c ‖ξ_0‖²
        if ctx.scale * self.c != 1.0:
            h.mul_(ctx.scale * self.c)  # h_1 = K_1(θ_1, scale · q_0)
        _gram_into(self.A, Z)  # A += Zᵀ Z (upper blocks)
        del Z
        h = h.reshape(k * ctx.n, *ctx.net.layers[0].op.out_shape)
        if chunk.xis[1] is not None:
            acc.add_source(1, chunk.xis[1], h)  # Σ_i h_1 ⊙ ξ_1
            chunk.xis[1] = None
        chunk.q = _slope_(ctx.rec, 1, h, k) if ctx.depth > 1 else None  # None: h_1 = h_L, nothing left for layer L
        chunk.h = h

    def weight_term(self, acc: Accumulators, j: int) -> torch.Tensor | None:
        if j != 1:
            return acc.take_weight(j)
        ctx = self.ctx
        return ctx.net.layers[0].Kbox(ctx.thetas[0], _mirror_(self.A).mul_(2.0 * self.c * ctx.scale / ctx.n))  # θ̂¹_1 = (2c/N) A W_1


def input_end(ctx: Context, penalty: Penalty, gram: bool, if_stable: bool = False) -> PlainInput:
    """The strategy at layer 1: :class:`GramInput` where ``gram`` (and, with ``if_stable``, ``G`` is well conditioned)."""
    if not gram:
        return PlainInput(ctx, penalty)
    d1 = ctx.net.layers[0].op.out_numel
    # G = K_1 K_1ᵀ = W_1 W_1ᵀ (K_1 applied to the rows of W_1, by symmetric blocks)
    G = _mirror_(_gram_into(ctx.rec.xs[0].new_zeros((d1, d1)), ctx.thetas[0].T))
    if if_stable and (torch.compiler.is_compiling() or not gram_is_stable(G)):
        return PlainInput(ctx, penalty)  # ill-conditioned W_1 (or compiled: no data-dependent branch)
    return GramInput(ctx, penalty, G)


# -- the output layer ------------------------------------------------------------------------------


class PlainOutput:
    """The output layer as in the paper (corrected): the seed ``v = e^{(i)}`` of Appendix B per class.

    ``ζ_L^{(i)} = S e^{(i)}`` (softmax) or ``e^{(i)}`` (identity) starts the
    backward pass; the backward-backward pass ends with ``θ̂¹_L += K_L□(q_{L-1}, ζ_L)``
    and, for the softmax, ``h_L = K_L(θ_L, q_{L-1})`` and ``η̂_L += Σ_i η_L^{(i)}``
    (corrected B.1, erratum E5). With the identity output ``η̂_L ≡ 0`` and
    ``h_L`` is never formed.
    """

    def __init__(self, ctx: Context):
        self.ctx: Context = ctx
        self.softmax: bool = isinstance(ctx.net.output_map, Softmax)
        self._seed: ConstantSeed | None = None

    def start(self, chunk: Chunk) -> torch.Tensor | None:
        """Sets ``chunk.zetas[L]``; returns ``ξ_{L-1}`` where known in closed form (else ``None``)."""
        out, n, k, classes = self.ctx.rec.output, self.ctx.n, chunk.k, chunk.classes
        c = self.ctx.net.layers[-1].op.out_numel
        v = torch.zeros((k, n, c), dtype=out.dtype, device=out.device)
        v[torch.arange(k, device=out.device), :, torch.arange(classes.start, classes.stop, device=out.device)] = 1
        x_rep = out.unsqueeze(0).expand(k, *out.shape).reshape(k * n, *out.shape[1:])
        self._seed = ConstantSeed(self.ctx.net.output_map, x_rep, v.reshape(x_rep.shape))
        del v
        chunk.zetas[self.ctx.depth] = self._seed.zeta_L()  # ζ_L^{(i)} = S e^{(i)} (softmax) or e^{(i)} (identity)
        return None

    def end(self, chunk: Chunk, acc: Accumulators) -> None:
        """Layer ``L`` of Algorithm 2 from ``q_{L-1}`` (``q = None``: ``h = h_L`` is formed already) and ``η̂_L``."""
        ctx, seed, self._seed = self.ctx, self._seed, None
        L, (q, h) = ctx.depth, chunk.take_q_h(ctx.net)
        if q is not None:
            layer = ctx.net.layers[L - 1]
            if layer.weight is not None:
                acc.add_weight_adjoint(layer, L, q, chunk.zetas[L])  # θ̂¹_L += K_L□(q_{L-1}, ζ_L)
            if not self.softmax:  # identity output: η_L ≡ 0, so h_L is never used
                return
            chunk.zetas[L] = None
            h = gather(ctx.net, L, chunk.qs, layer.K(ctx.thetas[L - 1], q))  # h_L = K_L(θ_L, q_{p(L)}) + Σ_a q_a
            q = chunk.qs = None
        if self.softmax:  # η̂_L += Σ_i η_L^{(i)} with the corrected Appendix B.1 formula
            out = ctx.rec.output
            acc.eta_L.add_(seed.eta_L(h).reshape(chunk.k, *out.shape).sum(0))

    def finish(self, acc: Accumulators) -> None:
        """What the output end adds once all classes are done (nothing here)."""


class SeedOutput:
    """The output layer for one seed of any penalty (Appendix B): ``ζ_L`` from the seed, ``η̂_L += η_L`` from ``h_L``.

    What streams Algorithms 1–3 through the accumulators of Algorithm 4 (the
    registered ``"minimal"``): ``h_L`` is formed only where the seed's ``η_L``
    does not vanish identically (Section 5.3).
    """

    def __init__(self, ctx: Context, seed: Seed):
        self.ctx: Context = ctx
        self.seed: Seed = seed

    def start(self, chunk: Chunk) -> None:
        chunk.zetas[self.ctx.depth] = self.seed.zeta_L()  # ζ_L = (dx_L/dz_L)* v
        return None

    def end(self, chunk: Chunk, acc: Accumulators) -> None:
        ctx, L = self.ctx, self.ctx.depth
        q, h = chunk.take_q_h(ctx.net)
        layer = ctx.net.layers[L - 1]
        if q is not None:
            if layer.weight is not None:
                acc.add_weight_adjoint(layer, L, q, chunk.zetas[L])  # θ̂¹_L += K_L□(q_{p(L)}, ζ_L)
            chunk.zetas[L] = None
            if self.seed.eta_is_zero:  # η_L ≡ 0: h_L is never used
                return
            h = gather(ctx.net, L, chunk.qs, layer.K(ctx.thetas[L - 1], q))  # h_L = K_L(θ_L, q_{p(L)}) + Σ_a q_a
        chunk.qs = None
        eta_L = self.seed.eta_L(h)
        if eta_L is not None:
            acc.eta_L = eta_L.clone() if acc.eta_L is None else acc.eta_L.add_(eta_L)  # a user's v_vjp may return a shared tensor

    def finish(self, acc: Accumulators) -> None:
        """Nothing to add once the seeds are done."""


class OneHotOutput(PlainOutput):
    """The one-hot shortcut for a dense output layer (``L ≥ 2``): closed forms of ``v = e^{(i)}``.

    With ``u = W_Lᵀ x_L`` (one ``Kᵀ``): ``ξ_{L-1}^{(i)} = x^i (W_{L,i} − u)`` (softmax)
    or ``W_{L,i}`` (identity); per class the rows ``Q_i = Σ_n x_n^i q_{L-1,n}^{(i)}``,
    ``P_n += x_n^i q_{L-1,n}^{(i)}`` and ``a_{n,i} = ⟨W_{L,i} − u_n, q_{L-1,n}^{(i)}⟩``; at the
    end ``θ̂¹_L = Q − K_L□(P, x_L)`` and ``η̂_L += S(a − K_L(θ_L, P))``.
    """

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        out, n = ctx.rec.output, ctx.n
        self.x_flat: torch.Tensor = out.reshape(n, -1)
        self.W_L = ctx.thetas[ctx.depth - 1]
        self.u: torch.Tensor = ctx.net.layers[-1].KT(self.W_L, out).reshape(n, -1)  # u_n = W_Lᵀ x_{L,n}
        self.Q = torch.zeros_like(self.W_L)  # rows Σ_n x_n^i q_{L-1,n}^{(i)} (or Σ_n q for the identity output)
        self.P = out.new_zeros(self.u.shape)  # P_n = Σ_i x_n^i q_{L-1,n}^{(i)}
        self.a: torch.Tensor = out.new_zeros((n, self.x_flat.shape[1]))  # a_{n,i} = ⟨W_{L,i} − u_n, q_{L-1,n}^{(i)}⟩
        self._x_i = self._r = None

    def start(self, chunk: Chunk) -> torch.Tensor:
        ctx, k, classes = self.ctx, chunk.k, chunk.classes
        rows = self.W_L[classes.start : classes.stop]  # (k, d)
        if self.softmax:
            self._x_i = self.x_flat[:, classes.start : classes.stop].T.unsqueeze(-1)  # x^i, (k, n, 1)
            self._r = rows.unsqueeze(1) - self.u  # W_{L,i} − u_n, (k, n, d)
            xi = self._r * self._x_i  # ξ_{L-1}^{(i)} = x^i (W_{L,i} − u)
        else:
            xi = rows.repeat_interleave(ctx.n, dim=0)  # ξ_{L-1}^{(i)} = W_{L,i}
        return xi.reshape(k * ctx.n, *ctx.net.layers[-1].in_shape)  # stands in for K_Lᵀ(θ_L, ζ_L)

    def end(self, chunk: Chunk, acc: Accumulators) -> None:
        start, stop, k = chunk.classes.start, chunk.classes.stop, chunk.k
        qf = chunk.take_q_h(self.ctx.net)[0].reshape(k, self.ctx.n, -1)
        if self.softmax:
            x_i, r, self._x_i, self._r = self._x_i, self._r, None, None
            self.Q[start:stop] = torch.bmm(x_i.transpose(1, 2), qf).squeeze(1)  # Σ_n x_n^i q_n^{(i)}
            for t in range(k):  # P_n += Σ_i x_n^i q_n^{(i)}, in place
                self.P.addcmul_(qf[t], x_i[t])
            self.a[:, start:stop] = r.mul_(qf).sum(-1).T  # ⟨W_{L,i} − u_n, q_n^{(i)}⟩
        else:
            self.Q[start:stop] = qf.sum(1)

    def finish(self, acc: Accumulators) -> None:
        L, layer = self.ctx.depth, self.ctx.net.layers[-1]
        acc.weights[L] = self.Q
        if self.softmax:
            out, x = self.ctx.rec.output, self.x_flat
            acc.weights[L] = layer.Kbox_into(self.Q, self.P, out, alpha=-1.0)  # θ̂¹_L = Q − Σ_n x_n P_nᵀ
            inner = self.a - layer.K(self.W_L, self.P).reshape(x.shape)  # a − W_L P
            acc.eta_L.add_((x * (inner - torch.sum(x * inner, dim=1, keepdim=True))).reshape(out.shape))


def output_end(ctx: Context, onehot: bool) -> PlainOutput:
    """The strategy at the output layer: :class:`OneHotOutput` where ``onehot``, else :class:`PlainOutput`."""
    return OneHotOutput(ctx) if onehot else PlainOutput(ctx)


# -- symmetric block products ----------------------------------------------------------------------

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
