"""The exact region walk along a slice (Sections 6.1 and 6.2)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from ... import activations as act
from ...network import Network
from ...operators import Dense
from .slices import Slice

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


def _affine_layers(net: Network):
    """Weights, biases (numpy float64) and hidden leaky slopes of a dense (leaky) ReLU network."""
    if not isinstance(net, Network):
        raise TypeError(f"expected a dbpaper.Network, got {type(net).__name__}")
    Ws, bs, alphas = [], [], []
    for j, layer in enumerate(net.layers, start=1):
        if not isinstance(layer.op, Dense):
            raise ValueError(f"regions: layer {j} ({layer.op!r}) is not dense; the exact region walk needs nn.Linear layers")
        a = layer.activation
        if j < net.depth:
            if isinstance(a, act.ReLU):
                alphas.append(0.0)
            elif isinstance(a, act.LeakyReLU):
                alphas.append(a.alpha)
            else:
                raise ValueError(f"regions: hidden layer {j} uses {a!r}; Section 6 concerns (leaky) ReLU networks")
        elif not isinstance(a, act.IdentityOutput):
            raise ValueError(f"regions: the output map must be the identity (z_L = x_L), got {a!r}")
        W = layer.weight.detach().to("cpu", torch.float64).numpy().copy()
        b = np.zeros(W.shape[0]) if layer.bias is None else layer.bias.detach().to("cpu", torch.float64).numpy().copy()
        Ws.append(W)
        bs.append(b)
    return Ws, bs, alphas


@dataclasses.dataclass(frozen=True, eq=False)
class Regions:
    """The affine regions of a network along a slice, found exactly by :func:`regions`.

    Attributes
    ----------
    slice : Slice
        The slice walked.
    lo, hi : float
        The interval of ``t``.
    boundaries : np.ndarray
        The ``t`` strictly inside ``(lo, hi)`` where some hidden pre-activation
        ``z_j`` changes sign, sorted; region ``r`` is ``[edges[r], edges[r + 1]]``.
    crossings : tuple
        For each boundary, the ``(j, neuron)`` pairs whose pre-activation crosses zero.
    patterns : tuple
        For each region, one boolean array per hidden layer: ``z_j > 0`` inside the region.
    jacobian : tuple
        For each region, ``(A, B)`` with ``dz_L/dx_0 = A + t B`` (matrices of shape
        ``(C, d)``): the operator (35) restricted to the region.
    output : tuple
        For each region, ``(a, c)`` with ``z_L = a + t c``.
    """

    slice: Slice
    lo: float
    hi: float
    boundaries: np.ndarray
    crossings: tuple[tuple[tuple[int, int], ...], ...]
    patterns: tuple[tuple[np.ndarray, ...], ...]
    jacobian: tuple[tuple[np.ndarray, np.ndarray], ...]
    output: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def edges(self) -> np.ndarray:
        """``[lo, *boundaries, hi]``."""
        return np.concatenate([[self.lo], self.boundaries, [self.hi]])

    @property
    def midpoints(self) -> np.ndarray:
        """A point inside each region."""
        e = self.edges
        return 0.5 * (e[:-1] + e[1:])

    def region_of(self, t: ArrayLike) -> np.ndarray:
        """Index of the region containing each ``t`` (a point on a boundary counts to the right)."""
        return np.searchsorted(self.boundaries, np.asarray(t, dtype=np.float64), side="right")

    def jacobian_at(self, t: ArrayLike) -> np.ndarray:
        """``dz_L/dx_0`` at each ``t`` from the affine pieces, shape ``(T, C, d)``."""
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        r = self.region_of(t)
        return np.stack([self.jacobian[k][0] + tk * self.jacobian[k][1] for k, tk in zip(r, t)])

    def output_at(self, t: ArrayLike) -> np.ndarray:
        """``z_L`` at each ``t`` from the affine pieces, shape ``(T, C)``."""
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        r = self.region_of(t)
        return np.stack([self.output[k][0] + tk * self.output[k][1] for k, tk in zip(r, t)])

    def jacobian_jumps(self) -> np.ndarray:
        """``(dz_L/dx_0)(t+) − (dz_L/dx_0)(t−)`` at every boundary, from the affine pieces, shape ``(K, C, d)``."""
        out = []
        for k, t in enumerate(self.boundaries):
            (A0, B0), (A1, B1) = self.jacobian[k], self.jacobian[k + 1]
            out.append((A1 + t * B1) - (A0 + t * B0))
        C, d = self.jacobian[0][0].shape
        return np.stack(out) if out else np.zeros((0, C, d))


def regions(net: Network, sl: Slice, lo: float, hi: float, x0: torch.Tensor | None = None, max_regions: int = 100_000) -> Regions:
    """Find the affine regions of ``net`` along the slice ``sl`` on ``[lo, hi]`` exactly (Sections 6.1–6.2).

    Along a slice every pre-activation is piecewise affine in ``t``: the first
    layer that depends on ``t`` (layer 1 for an input slice, layer ``j`` for a
    parameter of layer ``j``) is affine in ``t`` everywhere, and with a fixed
    activation pattern so are all later layers. The walk starts at ``lo``,
    determines the pattern just to the right of the current point (a neuron
    sitting exactly at zero is active to the right iff its slope is positive),
    propagates value and slope of every pre-activation, and jumps to the
    nearest zero crossing; the crossing neurons are set exactly to zero there
    so that rounding cannot produce spurious tiny regions.

    Parameters
    ----------
    net : Network
        A network of dense layers with ReLU or leaky-ReLU hidden activations and
        an identity output.
    sl : Slice
        The slice; for parameter slices the value ``t`` replaces the parameter.
    lo, hi : float
        The interval of ``t`` (``lo < hi``).
    x0 : torch.Tensor, optional
        The single example ``(1, d)``: the fixed input of a parameter slice, or
        the base point whose coordinate an input slice replaces (zeros if
        omitted).
    max_regions : int
        Safety limit on the number of regions.

    Returns
    -------
    Regions
    """
    sl.check(net)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"regions: need finite lo < hi, got lo={lo}, hi={hi}")
    Ws, bs, alphas = _affine_layers(net)
    L = len(Ws)
    d = Ws[0].shape[1]
    if x0 is None:
        if sl.kind != "input":
            raise ValueError("regions: a parameter slice needs the fixed input x0 of shape (1, d)")
        base = np.zeros(d)
    else:
        if not isinstance(x0, torch.Tensor) or x0.ndim != 2 or x0.shape[0] != 1 or x0.shape[1] != d:
            raise ValueError(f"regions: x0 must be a tensor of shape (1, {d}), got {getattr(x0, 'shape', x0)}")
        base = x0.detach().to("cpu", torch.float64).numpy()[0].copy()

    k = 1 if sl.kind == "input" else sl.layer  # first layer whose pre-activation depends on t
    # fixed part below layer k: its activation pattern and Jacobian
    J_lo = np.eye(d)
    fixed_patterns = []
    x = base
    if sl.kind == "input":
        x = base.copy()
        x[sl.index[0]] = 0.0
        e = np.zeros(d)
        e[sl.index[0]] = 1.0
        Wk0, E = Ws[0], None
        A, Cs = Wk0 @ x + bs[0], Ws[0] @ e
    else:
        for j in range(k - 1):
            z = Ws[j] @ x + bs[j]
            p = z > 0
            dgate = np.where(p, 1.0, alphas[j])
            fixed_patterns.append(p)
            x = dgate * z
            J_lo = dgate[:, None] * (Ws[j] @ J_lo)
        Wk0, bk0 = Ws[k - 1].copy(), bs[k - 1].copy()
        Cs = np.zeros(Wk0.shape[0])
        E = None
        if sl.kind == "weight":
            i, l = sl.index
            Wk0[i, l] = 0.0
            Cs[i] = x[l]
            E = np.zeros_like(Wk0)
            E[i, l] = 1.0
        else:
            (i,) = sl.index
            bk0[i] = 0.0
            Cs[i] = 1.0
        A = Wk0 @ x + bk0
    # z_k(t) = A + t Cs for all t

    def state(t: float, forced: set[tuple[int, int]]):
        """Values, slopes and right-patterns of the layers k..L at t (forced neurons set to exactly 0)."""
        vals, slopes, pats, gates = [], [], [], []
        a, c = A + t * Cs, Cs.copy()
        for m in range(k, L + 1):  # layer numbers
            for jj, n in forced:
                if jj == m:
                    a[n] = 0.0
            vals.append(a)
            slopes.append(c)
            if m == L:
                break
            p = (a > 0) | ((a == 0) & (c > 0))
            g = np.where(p, 1.0, alphas[m - 1])
            pats.append(p)
            gates.append(g)
            a, c = Ws[m] @ (g * a) + bs[m], Ws[m] @ (g * c)
        return vals, slopes, pats, gates

    def region_pieces(t, vals, slopes, gates):
        # z_L = vals[-1] + (s - t) slopes[-1];  dz_L/dx_0 = J_hi W_k(s) J_lo
        aL, cL = vals[-1], slopes[-1]
        J_hi = np.eye(Ws[-1].shape[0])
        for m in range(L, k, -1):  # layers L..k+1
            J_hi = J_hi @ Ws[m - 1] * gates[m - k - 1][None, :]
        if sl.kind == "input":
            Ajac, Bjac = J_hi @ Ws[0], np.zeros((J_hi.shape[0], d))
        elif sl.kind == "weight":
            Ajac, Bjac = J_hi @ Wk0 @ J_lo, J_hi @ E @ J_lo
        else:
            Ajac = J_hi @ Ws[k - 1] @ J_lo
            Bjac = np.zeros_like(Ajac)
        return (Ajac, Bjac), (aL - t * cL, cL.copy())

    boundaries, crossings, patterns, jacs, outs = [], [], [], [], []
    t, forced = lo, set()
    while True:
        vals, slopes, pats, gates = state(t, forced)
        # next crossing among the hidden layers k..L-1
        best, cands = math.inf, []
        for m in range(k, L):
            a, c = vals[m - k], slopes[m - k]
            moving = a * c < 0
            if np.any(moving):
                tc = t - a[moving] / c[moving]
                for n, tn in zip(np.flatnonzero(moving), tc):
                    cands.append((float(tn), m, int(n)))
                    best = min(best, float(tn))
        tol = 1e-12 * max(1.0, abs(best) if math.isfinite(best) else 1.0)
        hit = {(m, n) for tn, m, n in cands if tn <= best + tol}
        if boundaries and best <= t + tol:
            # a neuron that rounding left a hair away from zero crosses at the same boundary: merge, re-propagate
            forced = forced | hit
            crossings[-1] = tuple(sorted(set(crossings[-1]) | hit))
            continue
        patterns.append(tuple(fixed_patterns) + tuple(pats))
        jac, out = region_pieces(t, vals, slopes, gates)
        jacs.append(jac)
        outs.append(out)
        if best >= hi:
            break
        boundaries.append(best)
        crossings.append(tuple(sorted(hit)))
        t, forced = best, hit
        if len(boundaries) >= max_regions:
            raise RuntimeError(f"regions: more than {max_regions} regions on [{lo}, {hi}]")
    return Regions(
        slice=sl,
        lo=lo,
        hi=hi,
        boundaries=np.asarray(boundaries, dtype=np.float64),
        crossings=tuple(crossings),
        patterns=tuple(patterns),
        jacobian=tuple(jacs),
        output=tuple(outs),
    )
