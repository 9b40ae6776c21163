"""Loss landscapes of (leaky) ReLU networks: Section 6 and Figures 2–7.

A (leaky) ReLU network with an identity output is piecewise affine in its
input, and along a one-dimensional *slice* — the input ``x_0`` moving along
one coordinate, or a single weight ``w`` or bias ``b`` moving while
everything else stays fixed — every pre-activation ``z_j`` is a piecewise
affine function of the slice parameter ``t``. The operator (35),
``dz_L/dx_0``, is therefore piecewise constant in ``x_0`` (Section 6.1),
piecewise affine in a single weight and piecewise constant in a single bias
(Section 6.2), and it jumps where a hidden pre-activation changes sign.

This module makes these statements exact:

* :func:`regions` walks a slice segment by segment, propagating each
  pre-activation as an affine function of ``t`` with the current activation
  pattern and stopping at the first zero crossing. It returns the region
  boundaries, the crossing neurons, the activation pattern of every region and
  the affine pieces of ``z_L`` and of ``dz_L/dx_0`` (independently of the
  double-backpropagation algorithms, for cross-checks);
* :func:`per_example` and :func:`sweep` evaluate ``s = ∂_{x_0} z_L``, penalties
  ``R`` and their derivatives along a slice *with the package's algorithms*
  (Algorithms 1–3 of Section 4 with the initial values of Appendix B),
  example by example;
* :func:`limits` measures one-sided limits and jumps at given boundaries;
  :func:`grid_increments` checks on a grid that nothing jumps elsewhere;
* :func:`smoothing_study` quantifies how averaging over a batch of ``M``
  examples (Section 6.2, Figures 6 and 7) shrinks the jumps;
* :func:`sine_data`, :func:`sine_model` and :func:`train_sine_model` set up the
  toy experiment of Section 6.3.

Only networks of ``nn.Linear`` layers with ReLU or leaky-ReLU hidden
activations and an identity output are supported by the exact region walk;
the algorithms themselves accept any network of the package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import activations as act
from .algorithms.passes import backward_backward_pass, backward_pass, forward_backward_pass
from .network import Network
from .operators import Dense
from .penalties import ClassicalDoubleBackprop, OutputNodeGradient, Penalty

__all__ = [
    "Limits",
    "Regions",
    "Slice",
    "SmoothingRow",
    "SweepResult",
    "TrainedSine",
    "choose_slice_entry",
    "example_jumps",
    "grid_increments",
    "input_gradients",
    "limits",
    "parameter_count",
    "per_example",
    "printed_cdb_penalty",
    "regions",
    "sine_data",
    "sine_model",
    "single_thread",
    "smoothing_study",
    "sweep",
    "train_sine_model",
]


# ----------------------------------------------------------------------------------------------
# the toy experiment of Section 6.3
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def single_thread():
    """Run torch single-threaded inside the block (restored afterwards).

    The networks of Section 6.3 are tiny: one thread is faster than several
    competing ones, and it keeps floating-point reductions independent of the
    number of cores, so that results are reproducible across machines.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def sine_data(n: int = 1500, seed: int = 0, dtype: torch.dtype = torch.float64, device=None):
    """The data set of Section 6.3: ``n`` points ``x ~ U[-π, π]`` and ``y = sin x``.

    Parameters
    ----------
    n : int
        Number of points (1500 in the paper).
    seed : int
        Seed of the CPU generator the points are drawn from.
    dtype, device
        Of the returned tensors.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``x`` and ``y``, both of shape ``(n, 1)``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"sine_data: n must be a positive int, got {n!r}")
    g = torch.Generator().manual_seed(int(seed))
    x = (2 * torch.rand(n, 1, generator=g, dtype=torch.float64) - 1) * math.pi
    x = x.to(dtype=dtype, device=device)
    return x, torch.sin(x)


def sine_model(hidden: Sequence[int] = (8, 5), seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """The multilayer perceptron of Section 6.3: ``1 → 8 → 5 → 1``, ReLU hidden layers, identity output.

    Parameters
    ----------
    hidden : sequence of int
        Widths of the hidden ReLU layers.
    seed : int
        ``torch.manual_seed`` used for the default initialisation.
    dtype : torch.dtype
        Parameter dtype (float64 for the chapter).
    """
    if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"sine_model: hidden must be a non-empty sequence of positive ints, got {hidden!r}")
    torch.manual_seed(int(seed))
    modules: list[nn.Module] = []
    width = 1
    for h in hidden:
        modules += [nn.Linear(width, h), nn.ReLU()]
        width = h
    modules.append(nn.Linear(width, 1))
    return nn.Sequential(*modules).to(dtype)


def parameter_count(model: nn.Module) -> int:
    """The number of trainable scalars of ``model`` (67 for ``1 → 8 → 5 → 1``; Section 6.3 prints 61)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"parameter_count: expected an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters())


@dataclasses.dataclass(eq=False)
class TrainedSine:
    """The outcome of :func:`train_sine_model`."""

    model: nn.Sequential
    x: torch.Tensor
    y: torch.Tensor
    losses: np.ndarray

    @property
    def net(self) -> Network:
        """The model read as the network of eq. (8)."""
        return Network.from_sequential(self.model, (1,))


def train_sine_model(
    n: int = 1500,
    steps: int = 2500,
    lr: float = 1e-2,
    seed: int = 0,
    hidden: Sequence[int] = (8, 5),
    dtype: torch.dtype = torch.float64,
    device=None,
) -> TrainedSine:
    """Fit :func:`sine_model` to :func:`sine_data` with full-batch Adam on the squared loss (Section 6.3).

    Deterministic: seeded data and initialisation, full batch, float64, one
    thread (:func:`single_thread`). The learning rate decays by a cosine
    schedule to a tenth of ``lr``.

    Returns
    -------
    TrainedSine
        The model, the data and the loss after every step.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"train_sine_model: steps must be a positive int, got {steps!r}")
    if not (lr > 0):
        raise ValueError(f"train_sine_model: lr must be positive, got {lr!r}")
    x, y = sine_data(n, seed=seed, dtype=dtype, device=device)
    model = sine_model(hidden, seed=seed, dtype=dtype).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = np.empty(steps)
    with single_thread():
        for k in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / steps)))
            opt.zero_grad()
            loss = torch.mean((model(x) - y) ** 2)
            loss.backward()
            opt.step()
            losses[k] = loss.item()
    return TrainedSine(model=model, x=x, y=y, losses=losses)


def printed_cdb_penalty(s: torch.Tensor | np.ndarray, residual: torch.Tensor | np.ndarray):
    """The classical penalty as *printed* in Section 6.3, ``((∂_{x_0}(x_L − y))²)² = s⁴``.

    With a label ``y`` that does not depend on ``x_0``, ``∂_{x_0}(x_L − y) = s``.
    The correct value is ``(∂_{x_0} ℓ)² = (2 (x_L − y) s)²`` for ``ℓ = (x_L − y)²``
    (eqs. (11)–(12)); ``residual`` (``x_L − y``) is accepted only to make the
    contrast explicit: the printed formula ignores it.
    """
    del residual
    return s**4


# ----------------------------------------------------------------------------------------------
# slices
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Slice:
    """A one-dimensional slice ``t ↦ (x_0(t), Θ(t))`` through input or parameter space (Section 6).

    ``kind="input"``: coordinate ``index`` of ``x_0`` is set to ``t``.
    ``kind="weight"``: entry ``index = (i, l)`` of the weight of layer ``layer``
    (1-based, as ``j`` in eq. (8)) is set to ``t``. ``kind="bias"``: entry
    ``index = (i,)`` of the bias of layer ``layer`` is set to ``t``.
    """

    kind: str
    layer: int = 1
    index: tuple[int, ...] = (0,)

    def __post_init__(self):
        if self.kind not in ("input", "weight", "bias"):
            raise ValueError(f"Slice: kind must be 'input', 'weight' or 'bias', got {self.kind!r}")
        if not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"Slice: layer must be an int >= 1 (eq. (8) numbering), got {self.layer!r}")
        object.__setattr__(self, "index", tuple(int(i) for i in self.index))
        need = 2 if self.kind == "weight" else 1
        if len(self.index) != need:
            raise ValueError(f"Slice: a {self.kind} slice needs an index of length {need}, got {self.index}")

    @classmethod
    def input(cls, index: int = 0) -> Slice:
        """Coordinate ``index`` of ``x_0``."""
        return cls("input", 1, (index,))

    @classmethod
    def weight(cls, layer: int, i: int, l: int) -> Slice:
        """Weight entry ``(i, l)`` of layer ``layer``: ``w`` of Section 6.3."""
        return cls("weight", layer, (i, l))

    @classmethod
    def bias(cls, layer: int, i: int) -> Slice:
        """Bias entry ``i`` of layer ``layer``: ``b`` of Section 6.3."""
        return cls("bias", layer, (i,))

    def check(self, net: Network) -> None:
        """Raise a ValueError if the slice does not fit ``net``."""
        if self.kind == "input":
            if len(net.in_shape) != 1 or not 0 <= self.index[0] < net.in_shape[0]:
                raise ValueError(f"Slice: input index {self.index[0]} does not fit inputs of shape {net.in_shape}")
            return
        if self.layer > net.depth:
            raise ValueError(f"Slice: layer {self.layer} does not exist (L = {net.depth})")
        t = self._tensor(net)
        if t is None:
            raise ValueError(f"Slice: layer {self.layer} has no {self.kind}")
        if len(self.index) != t.ndim or any(not 0 <= i < s for i, s in zip(self.index, t.shape)):
            raise ValueError(f"Slice: index {self.index} is out of range for a {self.kind} of shape {tuple(t.shape)}")

    def _tensor(self, net: Network) -> torch.Tensor | None:
        layer = net.layers[self.layer - 1]
        return layer.weight if self.kind == "weight" else layer.bias

    def value(self, net: Network, x: torch.Tensor | None = None) -> float:
        """The current value of the sliced parameter (or input coordinate of the single example ``x``)."""
        self.check(net)
        if self.kind == "input":
            if x is None or x.shape[0] != 1:
                raise ValueError("Slice.value: an input slice needs a single example x of shape (1, d)")
            return float(x[0, self.index[0]])
        return float(self._tensor(net).detach()[self.index])

    @contextlib.contextmanager
    def at(self, net: Network, t: float):
        """Set the sliced parameter to ``t`` inside the block (restored afterwards); parameter slices only."""
        if self.kind == "input":
            raise ValueError("Slice.at: input slices move x_0, not a parameter; use Slice.inputs")
        self.check(net)
        tensor = self._tensor(net)
        with torch.no_grad():
            old = tensor[self.index].clone()
            tensor[self.index] = float(t)
        try:
            yield
        finally:
            with torch.no_grad():
                tensor[self.index] = old

    def inputs(self, x: torch.Tensor, ts) -> torch.Tensor:
        """The batch ``x_0(t)`` for all ``t`` in ``ts`` from the single example ``x`` (input slices)."""
        if self.kind != "input":
            raise ValueError("Slice.inputs: only for input slices")
        if x.ndim != 2 or x.shape[0] != 1:
            raise ValueError(f"Slice.inputs: x must be a single example of shape (1, d), got {tuple(x.shape)}")
        ts = torch.as_tensor(np.asarray(ts, dtype=np.float64), dtype=x.dtype, device=x.device)
        out = x.repeat(ts.shape[0], 1)
        out[:, self.index[0]] = ts
        return out


# ----------------------------------------------------------------------------------------------
# the exact region walk (Sections 6.1 and 6.2)
# ----------------------------------------------------------------------------------------------
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
    crossings: tuple
    patterns: tuple
    jacobian: tuple
    output: tuple

    @property
    def edges(self) -> np.ndarray:
        """``[lo, *boundaries, hi]``."""
        return np.concatenate([[self.lo], self.boundaries, [self.hi]])

    @property
    def midpoints(self) -> np.ndarray:
        """A point inside each region."""
        e = self.edges
        return 0.5 * (e[:-1] + e[1:])

    def region_of(self, t) -> np.ndarray:
        """Index of the region containing each ``t`` (a point on a boundary counts to the right)."""
        return np.searchsorted(self.boundaries, np.asarray(t, dtype=np.float64), side="right")

    def jacobian_at(self, t) -> np.ndarray:
        """``dz_L/dx_0`` at each ``t`` from the affine pieces, shape ``(T, C, d)``."""
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        r = self.region_of(t)
        return np.stack([self.jacobian[k][0] + tk * self.jacobian[k][1] for k, tk in zip(r, t)])

    def output_at(self, t) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------
# evaluation with the package's algorithms
# ----------------------------------------------------------------------------------------------
def input_gradients(net: Network, x: torch.Tensor, output: int = 0) -> torch.Tensor:
    """``ξ_0 = (dx_L/dx_0)* e^{(output)}`` per example by Algorithm 1: ``s = ∂_{x_0} z_L`` of Section 6.3.

    With an identity output and a scalar input this is the derivative ``s`` the
    paper plots in Figures 2b and 3.
    """
    c = net.layers[-1].op.out_numel
    if not isinstance(output, int) or not 0 <= output < c:
        raise ValueError(f"input_gradients: output must be an int in [0, {c}), got {output!r}")
    with torch.no_grad():
        rec = net.forward(x)
        (seed,) = OutputNodeGradient(output).seeds(net, rec, None)
        return backward_pass(net, rec, seed.zeta_L()).xis[0]


def _entry_pairing(layer, index: tuple[int, ...], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``⟨E, K□(a_n, b_n)⟩ = ⟨K(E, a_n), b_n⟩`` per example, ``E`` the unit tensor of the weight entry ``index``.

    This is the entry ``index`` of each example's summand of the weight-adjoint
    (eq. (6)), computed with one batched evaluation of ``K`` instead of ``N``
    evaluations of ``K□``.
    """
    E = torch.zeros_like(layer.weight)
    E[index] = 1
    Ka = layer.K(E, a)
    return torch.sum(Ka * b.reshape(Ka.shape), dim=tuple(range(1, Ka.ndim)))


def _per_example_many(net: Network, x: torch.Tensor, penalties: Mapping[str, Penalty], y, sl: Slice | None):
    """``{name: (R_n, ∂_t R_n or None)}`` for several penalties sharing one recorded forward pass."""
    out = {}
    with torch.no_grad():
        rec = net.forward(x)
        for name, penalty in penalties.items():
            if not isinstance(penalty, Penalty):
                raise TypeError(f"per_example: penalty must be a dbpaper penalty, got {type(penalty).__name__}")
            if penalty.num_seeds(net) != 1:
                raise ValueError(f"per_example: {penalty!r} has several v's; only single-v penalties are supported")
            yy = y if penalty.needs_y else None
            penalty.check(net, yy)
            (seed,) = penalty.seeds(net, rec, yy)
            bp = backward_pass(net, rec, seed.zeta_L())  # Algorithm 1
            xi_0 = bp.xis[0]
            values = penalty.p.value(xi_0)
            if sl is None or sl.kind == "input":
                out[name] = (values, None)
                continue
            bbp = backward_backward_pass(net, rec, penalty.p.grad(xi_0))  # Algorithm 2, q_0 without 1/N
            eta_L = seed.eta_L(bbp.hs[net.depth])  # Appendix B
            trace: dict = {}
            forward_backward_pass(net, rec, bp, bbp, eta_L, trace=trace)  # Algorithm 3
            j = sl.layer
            layer = net.layers[j - 1]
            eta = trace["eta"][j]
            if sl.kind == "bias":
                grad = eta.reshape(eta.shape[0], -1)[:, sl.index[0]] if eta is not None else torch.zeros_like(values)
            else:  # eq. (31), example by example: K□(q_{j-1}, ζ_j) + K□(x_{j-1}, η_j)
                grad = _entry_pairing(layer, sl.index, bbp.qs[j - 1], bp.zetas[j])
                if eta is not None:
                    grad = grad + _entry_pairing(layer, sl.index, rec.xs[j - 1], eta)
            out[name] = (values, grad)
    return out


def per_example(
    net: Network,
    x: torch.Tensor,
    penalty: Penalty,
    y: torch.Tensor | None = None,
    sl: Slice | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-example penalty ``R_n = p(ξ_0^{(n)})`` and ``∂_t R_n`` for a parameter slice, by Algorithms 1–3.

    Runs the passes of :mod:`dbpaper.algorithms` once for the whole batch with
    ``q_0 = ∇p(ξ_0)`` (no ``1/N``), so that every example keeps its own
    quantities, and applies eq. (31) example by example:
    ``∇_{θ_j} R_n = K_j□(q_{j-1}, ζ_j) + K_j□(x_{j-1}, η_j)`` and ``∇_{b_j} R_n = η_j``
    (with the corrected argument order, erratum E3). The entry of the
    weight-adjoint is read off through its defining identity (eq. (6)),
    ``⟨E, K□(a, b)⟩ = ⟨K(E, a), b⟩``. The batch mean of the results is what
    :func:`dbpaper.double_backprop` returns.

    Parameters
    ----------
    net : Network
        The network.
    x : torch.Tensor
        Inputs ``(N, *in_shape)``.
    penalty : Penalty
        A single-``v`` penalty, e.g. ``OutputNodeGradient(0)`` or ``ClassicalDoubleBackprop("mse")``.
    y : torch.Tensor, optional
        Targets for classical double backpropagation.
    sl : Slice, optional
        A parameter slice; its entry of the gradient is returned per example.

    Returns
    -------
    (torch.Tensor, torch.Tensor or None)
        ``R_n`` of shape ``(N,)`` and ``∂_t R_n`` of shape ``(N,)`` (``None`` without a parameter slice).
    """
    if sl is not None:
        sl.check(net)
    return _per_example_many(net, x, {"R": penalty}, y, sl)["R"]


@dataclasses.dataclass(eq=False)
class SweepResult:
    """Quantities along a slice: one row per ``t``, one column per example.

    ``s`` is ``∂_{x_0} z_L`` (first input coordinate, output 0); ``values[name]``
    and ``grads[name]`` are ``R_n`` and ``∂_t R_n`` for each penalty (``grads``
    is empty for an input slice).
    """

    ts: np.ndarray
    s: np.ndarray
    values: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]


def sweep(
    net: Network,
    x: torch.Tensor,
    sl: Slice,
    ts,
    penalties: Mapping[str, Penalty] | None = None,
    y: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> SweepResult:
    """Evaluate ``s``, ``R`` and ``∂_t R`` along a slice with the package's algorithms.

    A parameter slice sets the parameter to each ``t`` in turn (and restores it)
    and evaluates the whole batch ``x`` there; an input slice evaluates all
    ``x_0(t)`` of the single example ``x`` in one batch. ``y`` may be a callable
    ``x_0 ↦ y`` (e.g. ``torch.sin`` for Figure 2c, where the label follows ``x_0``).

    Returns
    -------
    SweepResult
        Arrays of shape ``(T, N)`` (``N = 1`` for an input slice).
    """
    sl.check(net)
    penalties = dict(penalties or {})
    ts = np.asarray(ts, dtype=np.float64)
    if ts.ndim != 1 or ts.size == 0 or not np.all(np.isfinite(ts)):
        raise ValueError("sweep: ts must be a non-empty 1-D array of finite values")
    if y is not None and not callable(y) and not isinstance(y, torch.Tensor):
        raise TypeError("sweep: y must be a tensor, a callable x_0 -> y, or None")
    with single_thread():
        if sl.kind == "input":
            xs = sl.inputs(x, ts)
            yy = y(xs) if callable(y) else (None if y is None else y.expand(xs.shape[0], *y.shape[1:]))
            s = input_gradients(net, xs)[:, 0].cpu().numpy()[:, None]
            res = _per_example_many(net, xs, penalties, yy, None)
            values = {k: v.cpu().numpy()[:, None] for k, (v, _) in res.items()}
            return SweepResult(ts=ts, s=s, values=values, grads={})
        yy = y(x) if callable(y) else y
        s_rows, v_rows, g_rows = [], {k: [] for k in penalties}, {k: [] for k in penalties}
        for t in ts:
            with sl.at(net, t):
                s_rows.append(input_gradients(net, x)[:, 0].cpu().numpy())
                for k, (v, g) in _per_example_many(net, x, penalties, yy, sl).items():
                    v_rows[k].append(v.cpu().numpy())
                    g_rows[k].append(g.cpu().numpy())
    return SweepResult(
        ts=ts,
        s=np.stack(s_rows),
        values={k: np.stack(v) for k, v in v_rows.items()},
        grads={k: np.stack(g) for k, g in g_rows.items()},
    )


# ----------------------------------------------------------------------------------------------
# jumps
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Limits:
    """One-sided limits at boundaries: ``left``, ``right`` and ``jump = right − left`` (arrays ``(K, ...)``)."""

    points: np.ndarray
    left: np.ndarray
    right: np.ndarray
    delta: np.ndarray

    @property
    def jump(self) -> np.ndarray:
        return self.right - self.left


def limits(
    evaluate: Callable[[np.ndarray], np.ndarray],
    points,
    lo: float,
    hi: float,
    rel_delta: float = 1e-6,
    extrapolate: bool = True,
) -> Limits:
    """One-sided limits of a piecewise-smooth function at ``points`` inside ``(lo, hi)``.

    ``evaluate(ts)`` returns an array whose first axis follows ``ts``. With
    ``extrapolate=True`` the limits are extrapolated from the offsets ``δ`` and
    ``2δ`` on either side, ``f(t±) ≈ 2 f(t ± δ) − f(t ± 2δ)``, exact for a function
    affine between boundaries and accurate to ``O(δ²)`` otherwise; without it,
    ``f(t±) ≈ f(t ± δ)`` (``O(δ)``, half the evaluations). ``δ`` is ``rel_delta``
    times ``max(1, |t|)``, but never more than a fifth of the distance to the
    neighbouring point (or end of the interval).
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 1:
        raise ValueError("limits: points must be 1-D")
    if not rel_delta > 0:
        raise ValueError(f"limits: rel_delta must be positive, got {rel_delta!r}")
    if pts.size == 0:
        return Limits(pts, np.zeros((0,)), np.zeros((0,)), np.zeros((0,)))
    if not (np.all(pts > lo) and np.all(pts < hi)):
        raise ValueError(f"limits: every point must lie strictly inside ({lo}, {hi})")
    order = np.argsort(pts, kind="stable")
    srt = pts[order]
    edges = np.concatenate([[lo], srt, [hi]])
    gaps = np.minimum(np.diff(edges)[:-1], np.diff(edges)[1:])
    if np.any(gaps <= 0):
        raise ValueError("limits: points must be distinct")
    delta = np.empty_like(pts)
    delta[order] = np.minimum(rel_delta * np.maximum(1.0, np.abs(srt)), gaps / 5)
    offs = np.array([-2.0, -1.0, 1.0, 2.0]) if extrapolate else np.array([-1.0, 1.0])
    ts = (pts[:, None] + offs[None, :] * delta[:, None]).ravel()
    f = np.asarray(evaluate(ts))
    f = f.reshape(pts.size, offs.size, *f.shape[1:])
    if extrapolate:
        left, right = 2 * f[:, 1] - f[:, 0], 2 * f[:, 2] - f[:, 3]
    else:
        left, right = f[:, 0], f[:, 1]
    return Limits(points=pts, left=left, right=right, delta=delta)


def grid_increments(ts, f, boundaries) -> tuple[float, np.ndarray]:
    """Increments ``|f(t_{k+1}) − f(t_k)|`` of a sampled function, split by whether a boundary lies between.

    Returns the largest increment over grid intervals that contain no boundary
    (it shrinks with the spacing where ``f`` is continuous) and, per boundary,
    the increment ``f(t_{k+1}) − f(t_k)`` of the interval containing it (it tends
    to the jump). Used to show that ``f`` jumps at the computed boundaries and
    nowhere else.
    """
    ts = np.asarray(ts, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    b = np.asarray(boundaries, dtype=np.float64)
    if ts.ndim != 1 or f.shape[0] != ts.size or np.any(np.diff(ts) <= 0):
        raise ValueError("grid_increments: ts must be strictly increasing and f must follow it")
    inc = np.diff(f, axis=0)
    cell = np.searchsorted(ts, b, side="left") - 1  # ts[cell] < b <= ts[cell + 1]
    inside = (cell >= 0) & (cell < ts.size - 1)
    mask = np.ones(ts.size - 1, dtype=bool)
    mask[cell[inside]] = False
    smooth = float(np.max(np.abs(inc[mask]))) if np.any(mask) else 0.0
    across = np.full((b.size, *inc.shape[1:]), np.nan)
    across[inside] = inc[cell[inside]]
    return smooth, across


def choose_slice_entry(net: Network, x0: torch.Tensor, layer: int = 2) -> tuple[int, int]:
    """Pick ``(i, l)`` of layer ``layer``'s weight for Figure 3: a neuron ``i`` active at ``x0``, a
    non-zero input ``x_{j-1}[l]``, and, among those, the nearest switch ``|w* − w|``.

    With ``z_j[i] > 0`` and ``x_{j-1}[l] ≠ 0``, moving the weight to
    ``w* = w − z_j[i] / x_{j-1}[l]`` switches the neuron off, so the plotted
    window around the trained value contains a jump.
    """
    if not 1 <= layer < net.depth:
        raise ValueError(f"choose_slice_entry: layer must be a hidden layer in [1, {net.depth - 1}], got {layer}")
    with torch.no_grad():
        rec = net.forward(x0)
        lay = net.layers[layer - 1]
        z = lay.add_bias(lay.K(lay.theta(x0), rec.xs[layer - 1]))[0]
        xin = rec.xs[layer - 1][0]
    best, choice = math.inf, None
    for i in range(z.shape[0]):
        if z[i] <= 0:
            continue
        for l in range(xin.shape[0]):
            if xin[l] == 0:
                continue
            dist = abs(float(z[i] / xin[l]))
            if dist < best:
                best, choice = dist, (i, l)
    if choice is None:
        raise ValueError("choose_slice_entry: no active neuron with a non-zero input at x0")
    return choice


# ----------------------------------------------------------------------------------------------
# batch averaging (Section 6.2, Figures 6 and 7, and beyond)
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SmoothingRow:
    """Jumps and variation of the batch-averaged derivative ``∂_t R^B`` for one batch size ``M``.

    Every value is the mean over the disjoint batches of size ``M``:
    ``largest_jump`` is the largest ``|jump|`` of the averaged derivative in the
    window, ``total_variation`` its total variation on the grid,
    ``jump_variation`` the part carried by the jumps (``Σ |jump|``) and
    ``jumps`` the number of jumps in the window.
    """

    penalty: str
    M: int
    batches: int
    largest_jump: float
    total_variation: float
    jump_variation: float
    jumps: float


def example_jumps(
    net: Network,
    x: torch.Tensor,
    y: torch.Tensor | None,
    sl: Slice,
    lo: float,
    hi: float,
    penalties: Mapping[str, Penalty],
    rel_delta: float = 1e-9,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Every example's boundaries on ``[lo, hi]`` (exact, :func:`regions`) and the jumps of its ``∂_t R_n`` there.

    The jumps are one-sided limits at ``t ± δ`` (:func:`limits` without
    extrapolation, half the evaluations) of the per-example derivative from the
    algorithms (:func:`per_example`), example by example; with the default
    ``δ = 10⁻⁹ max(1, |t|)`` their ``O(δ)`` error is far below the reported digits.

    Returns
    -------
    (np.ndarray, np.ndarray, dict)
        Boundary positions, the index of the example each belongs to, and per
        penalty the jump of ``∂_t R_n`` at each boundary.
    """
    if sl.kind == "input":
        raise ValueError("example_jumps: needs a parameter slice")
    pos, owner = [], []
    for n in range(x.shape[0]):
        b = regions(net, sl, lo, hi, x[n : n + 1]).boundaries
        pos += list(b)
        owner += [n] * b.size
    pos_arr, owner_arr = np.asarray(pos, dtype=np.float64), np.asarray(owner, dtype=int)
    jumps = {k: np.zeros(pos_arr.size) for k in penalties}
    names = list(penalties)
    with single_thread():
        for n in np.unique(owner_arr):
            sel = np.flatnonzero(owner_arr == n)
            xn = x[n : n + 1]
            yn = None if y is None else y[n : n + 1]

            def evaluate(tt, xn=xn, yn=yn):
                out = np.zeros((len(tt), len(names)))
                for r, tv in enumerate(tt):
                    with sl.at(net, tv):
                        res = _per_example_many(net, xn, penalties, yn, sl)
                    out[r] = [float(res[k][1][0]) for k in names]
                return out

            lim = limits(evaluate, pos_arr[sel], lo, hi, rel_delta=rel_delta, extrapolate=False)
            for c, k in enumerate(names):
                jumps[k][sel] = lim.jump[:, c]
    return pos_arr, owner_arr, jumps


def smoothing_study(
    net: Network,
    x: torch.Tensor,
    y: torch.Tensor,
    sl: Slice,
    lo: float,
    hi: float,
    penalties: Mapping[str, Penalty] | None = None,
    sizes: Sequence[int] = (1, 4, 16, 64, 256, 1024),
    grid: int = 801,
) -> tuple[list[SmoothingRow], dict]:
    """How averaging over a batch of ``M`` examples smooths ``∂_t R`` (Section 6.2; Figures 6 and 7).

    The ``N`` examples ``x`` (with targets ``y``) are split into ``N / M``
    disjoint batches of size ``M`` for every ``M`` in ``sizes`` (each must
    divide ``N``). For every example, :func:`example_jumps` gives its exact
    boundaries and its jumps; the averaged derivative
    ``∂_t R^B = (1/M) Σ_{n∈B} ∂_t R_n`` has the union of its examples'
    boundaries, and its jump at each is the sum of the examples' jumps there
    divided by ``M``. The total variation is taken on a grid of ``grid`` points
    (a :func:`sweep` of all examples at once).

    Returns
    -------
    (list of SmoothingRow, dict)
        One row per penalty and ``M``, and the raw data: ``"ts"``,
        ``"grads"`` (per penalty, ``(grid, N)`` per-example derivatives),
        ``"boundaries"``, ``"owner"`` and ``"jumps"`` (per penalty) from
        :func:`example_jumps`.
    """
    if sl.kind == "input":
        raise ValueError("smoothing_study: needs a parameter slice")
    if x.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"smoothing_study: x must be (N, d) and y (N, ...), got {tuple(x.shape)}, {tuple(y.shape)}")
    N = x.shape[0]
    sizes = [int(m) for m in sizes]
    if any(m < 1 or N % m for m in sizes):
        raise ValueError(f"smoothing_study: every size must divide N = {N}, got {sizes}")
    penalties = dict(penalties or {"node": OutputNodeGradient(0), "cdb": ClassicalDoubleBackprop("mse")})
    ts = np.linspace(lo, hi, grid)
    sw = sweep(net, x, sl, ts, penalties, y)
    pos, owner, jumps = example_jumps(net, x, y, sl, lo, hi, penalties)
    raw = {"ts": ts, "grads": sw.grads, "boundaries": pos, "owner": owner, "jumps": jumps}
    rows: list[SmoothingRow] = []
    for k in penalties:
        for M in sizes:
            nb = N // M
            curves = sw.grads[k].reshape(len(ts), nb, M).mean(axis=2)
            tv = np.sum(np.abs(np.diff(curves, axis=0)), axis=0)
            largest, jv, count = np.zeros(nb), np.zeros(nb), np.zeros(nb)
            batch = owner // M
            for r in range(nb):
                sel = batch == r
                p, j = pos[sel], jumps[k][sel] / M
                if p.size:
                    order = np.argsort(p)
                    p, j = p[order], j[order]
                    # boundaries of different examples that coincide: their jumps add up
                    group = np.concatenate([[0], np.cumsum(np.diff(p) > 1e-12 * np.maximum(1.0, np.abs(p[1:])))])
                    j = np.bincount(group, weights=j)
                    largest[r], jv[r], count[r] = np.max(np.abs(j)), np.sum(np.abs(j)), j.size
            rows.append(
                SmoothingRow(
                    penalty=k,
                    M=M,
                    batches=nb,
                    largest_jump=float(largest.mean()),
                    total_variation=float(tv.mean()),
                    jump_variation=float(jv.mean()),
                    jumps=float(count.mean()),
                )
            )
    return rows, raw
