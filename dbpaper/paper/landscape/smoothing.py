"""Batch averaging: how the jumps of ``∂_t R`` shrink with the batch size (Section 6.2, Figures 6 and 7)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ...network import Network
from ...penalties import ClassicalDoubleBackprop, OutputNodeGradient, Penalty
from .evaluate import _per_example_many, sweep
from .jumps import limits
from .regions import regions
from .sine import single_thread
from .slices import Slice


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
) -> tuple[list[SmoothingRow], dict[str, Any]]:
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
