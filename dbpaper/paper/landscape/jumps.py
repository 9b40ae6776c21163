"""One-sided limits and jumps at region boundaries; the slice entry of Figure 3."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...network import Network

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


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
    points: ArrayLike,
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


def grid_increments(ts: ArrayLike, f: ArrayLike, boundaries: ArrayLike) -> tuple[float, np.ndarray]:
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
