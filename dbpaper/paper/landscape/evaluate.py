"""Penalties and their derivatives along a slice, evaluated with the package's algorithms."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...algorithms.passes import backward_backward_pass, backward_pass, forward_backward_pass
from ...network import Network
from ...normalisation import require_coordinatewise
from ...penalties import OutputNodeGradient, Penalty
from .sine import single_thread
from .slices import Slice

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


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
    net.require_chain("the loss-landscape evaluation")
    require_coordinatewise(net, "the loss-landscape evaluation")
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
            penalty = penalty.bind(x, yy)  # the batch's p (Sobolev targets)
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
    ts: ArrayLike,
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
