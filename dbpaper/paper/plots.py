"""The chapters' figures, one drawing function per figure family.

Every function takes the numbers a chapter computed and returns a matplotlib
figure; the chapter saves it with :func:`dbpaper.paper.figures.save_figure`.
The computations stay in the chapters (and in the library); only the drawing
lives here, so that a family of figures — Figures 3 to 7 of the paper are one
family — is drawn by one function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np

from .figures import page_width

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from numpy.typing import ArrayLike

    from ..diagnostics import AdjointErrors

#: The width of a figure drawn for the whole content column (inches).
COLUMN_IN = page_width()

#: Colours for figures with more series than matplotlib's ten (tab10, then black, magenta, sky blue and brown),
#: each paired with its own line style, so that no two series share a colour or look alike in grey.
PALETTE = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9", "k", "#e7298a", "#56b4e9", "#8c510a")
LINESTYLES = ("-", "--", "-.", ":")


def series_style(k: int) -> dict:
    """Colour and line style of series ``k``: a distinct colour for each of the first 14, styles cycling."""
    return {"color": PALETTE[k % len(PALETTE)], "ls": LINESTYLES[k % len(LINESTYLES)]}

__all__ = [
    "activation_curves",
    "adjoint_defects",
    "decision_regions",
    "fit_and_regions",
    "generator_curves",
    "power_iterations",
    "random_gradient_errors",
    "series_style",
    "slice_panels",
    "smoothing",
    "step_size_errors",
]


def _no_jump_lines(ts, f, boundaries):
    """``f`` as floats with NaN at the first grid point past each boundary: no vertical line across a jump."""
    f = np.array(f, dtype=float)
    if boundaries is not None and len(boundaries):
        f[np.minimum(np.searchsorted(ts, boundaries), len(f) - 1)] = np.nan
    return f


# ---------------------------------------------------------------- Section 6: loss landscapes
def fit_and_regions(xs, target, fit, edges, s_pieces, ts, cdb, boundaries, figsize=(COLUMN_IN, 2.9), zoom_last=None):
    """Figure 2: (a) the fit and its affine regions, (b) ``∂_{x_0} z_L`` per region, (c) ``R_cdb`` along ``x_0``.

    With ``zoom_last = (ts, values)`` (at full resolution) a fourth panel (d) magnifies the last region
    (on which erratum E16 rests) with the region before it, and an arrow in (c) points at it.
    """
    zoom = zoom_last is not None and len(edges) > 2
    if zoom:
        fig, axes = plt.subplots(2, 2, figsize=(figsize[0], 2 * figsize[1]))
        axes = axes.ravel()
    else:
        fig, axes = plt.subplots(1, 3, figsize=figsize)
    ax = axes[0]
    ax.plot(xs, target, color="k", lw=2.2, alpha=0.35, label=r"$\sin x_0$")
    ax.plot(xs, fit, color="C0", lw=1.2, label="network $z_L$")
    ax.set_title("(a) fit and affine regions")
    ax.legend(loc="upper left")
    for k in range(len(edges) - 1):  # (b) one horizontal segment per region, exactly
        axes[1].hlines(s_pieces[k], edges[k], edges[k + 1], color="C1", lw=1.6)
    axes[1].set_title(r"(b) $\partial_{x_0} z_L$")
    axes[2].plot(ts, _no_jump_lines(ts, cdb, boundaries), color="C2", lw=1.2)
    axes[2].set_title(r"(c) $\mathcal{R}_\mathrm{cdb} = (2(x_L-y)\,\partial_{x_0}x_L)^2$")
    for ax in axes[:3]:
        for b in boundaries:
            ax.axvline(b, color="0.6", lw=0.7, zorder=0)
        ax.set_xlabel("$x_0$")
        ax.set_xlim(edges[0], edges[-1])
    if zoom:
        # the last region is too narrow to see at the scale of (c): magnify it, with the region before it
        zts, zf = (np.asarray(a) for a in zoom_last)
        lo, hi = edges[-2], edges[-1]
        left = max(edges[0], lo - 2 * (hi - lo))
        inside = (zts >= left) & (zts <= hi)
        ax = axes[3]
        ax.plot(zts[inside], _no_jump_lines(zts[inside], zf[inside], boundaries), color="C2", lw=1.2)
        ax.axvline(lo, color="0.6", lw=0.7, zorder=0)
        ax.set_xlim(left, hi)
        ax.set_xlabel("$x_0$")
        ax.set_title(f"(d) (c) on the last region, {hi - lo:.4f} wide")
        ax.tick_params(axis="x", labelrotation=20)
        axes[2].annotate("(d)", xy=(lo, 0), xycoords="data", xytext=(0.82, 0.55), textcoords="axes fraction",
                         color="C3", arrowprops=dict(arrowstyle="->", color="C3", lw=0.8))
    fig.tight_layout()
    return fig


def slice_panels(panels: Sequence[Mapping[str, Any]], figsize: tuple[float, float] = (8, 2.9)) -> Figure:
    """Figures 3–7: one panel per slice (``w`` left, ``b`` right), a quantity against the sliced parameter.

    Each panel is a mapping with ``ts``, ``f`` (the values), ``var`` (``"w"`` or ``"b"``),
    ``title``, ``ylabel``, ``at`` (the trained value, dotted) and optionally
    ``boundaries`` (drawn as grey lines, no line drawn across them), ``ticks``
    (boundaries of a batch, drawn as ticks on the axis) and ``ylim``.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=figsize, squeeze=False)
    for ax, p in zip(axes[0], panels):
        ts, bnd = np.asarray(p["ts"]), p.get("boundaries")
        for t in bnd if bnd is not None else ():
            ax.axvline(t, color="0.6", lw=0.7, zorder=0)
        ax.plot(ts, _no_jump_lines(ts, p["f"], bnd), lw=1.3, color="C0" if p["var"] == "w" else "C3")
        ax.axvline(p["at"], color="k", lw=0.8, ls=":", zorder=0)
        if p.get("ticks") is not None:
            ax.plot(p["ticks"], np.zeros_like(p["ticks"]), "|", color="0.4", ms=5, transform=ax.get_xaxis_transform())
        ax.set_xlabel(f"${p['var']}$")
        ax.set_ylabel(p["ylabel"])
        ax.set_title(p["title"])
        ax.set_xlim(ts[0], ts[-1])
        if p.get("ylim") is not None:
            ax.set_ylim(*p["ylim"])
    fig.tight_layout()
    return fig


def smoothing(ts, first_batch: Mapping[int, np.ndarray], rows, single_jumps: Mapping[str, float],
              figsize=(COLUMN_IN, 6.4)):
    """Book figure: (a) the averaged derivative of the first batch for several ``M``, (b) the largest jump,
    (c) total and jump variation against ``M`` (``rows``: :class:`~dbpaper.paper.landscape.SmoothingRow`)."""
    fig = plt.figure(figsize=figsize)
    grid = fig.add_gridspec(2, 2)
    axes = [fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])]
    for k, (Mk, curve) in enumerate(first_batch.items()):
        axes[0].plot(ts, curve, lw=1.0, label=f"$M = {Mk}$", **series_style(k))
    axes[0].set_xlabel("$w$")
    axes[0].set_title(r"(a) $\partial_w \mathcal{R}^{\mathfrak{B}}_\mathrm{cdb}$, first batch")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    markers = {"node": "o", "cdb": "s"}
    labels = {"node": r"$\mathcal{R}_\mathrm{node}$", "cdb": r"$\mathcal{R}_\mathrm{cdb}$"}
    for c, name in enumerate(single_jumps):
        mine = [r for r in rows if r.penalty == name]
        Ms = np.array([r.M for r in mine])
        axes[1].loglog(Ms, [r.largest_jump for r in mine], marker=markers.get(name, "o"), lw=1.0, color=f"C{c}",
                       label=labels.get(name, name))
        axes[1].loglog(Ms, single_jumps[name] / Ms, color=f"C{c}", ls="--", lw=0.8)
        axes[2].loglog(Ms, [r.total_variation for r in mine], marker=markers.get(name, "o"), lw=1.0, color=f"C{c}",
                       label="TV, " + labels.get(name, name))
        axes[2].loglog(Ms, [r.jump_variation for r in mine], marker=markers.get(name, "o"), lw=1.0, ls=":",
                       color=f"C{c}", mfc="none", label=r"$\Sigma|$jumps$|$, " + labels.get(name, name))
    axes[1].set_title("(b) largest jump\n(dashed: $\\mathrm{max}_n |J_n| / M$)")
    axes[1].set_xlabel("batch size $M$")
    axes[1].legend()
    axes[2].set_title("(c) variation of the average")
    axes[2].set_xlabel("batch size $M$")
    axes[2].legend(loc="center", ncol=2)  # between the two penalties' curves, which lie decades apart
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- background: derivatives
def step_size_errors(hs: ArrayLike, rel_error: Mapping[str, np.ndarray], eps: float, floor: float = 1e-17,
                     figsize: tuple[float, float] = (6.4, 4.0)) -> Figure:  # fmt: skip
    """The error of finite differences and the complex step against the step size, with the error balance."""
    hs = np.asarray(hs, dtype=float)
    fig, ax = plt.subplots(figsize=figsize)
    styles = {"forward": ("C0", "-"), "backward": ("C1", "--"), "central": ("C2", "-"), "complex": ("C3", "-")}
    for m, err in rel_error.items():
        color, ls = styles.get(m, ("k", "-"))
        ax.loglog(hs, np.maximum(np.asarray(err, dtype=float), floor), color=color, ls=ls, lw=1.2, label=m)
    trunc = hs[(hs > 1e-7) & (hs < 1e-1)]
    canc = hs[(hs > 1e-15) & (hs < 1e-7)]
    for guide in (0.05 * trunc, 0.5 * trunc**2):
        ax.loglog(trunc, guide, color="0.45", lw=0.8, ls=":")
    ax.loglog(canc, 10 * eps / canc, color="0.45", lw=0.8, ls=":")
    ax.text(1e-4, 5e-7, "$\\propto h$", color="0.3")
    ax.text(1e-4, 5e-11, "$\\propto h^2$", color="0.3")
    ax.text(1e-12, 3e-3, "$\\propto \\varepsilon / h$", color="0.3")
    ax.axvline(math.sqrt(eps), color="C0", lw=0.6, alpha=0.5)
    ax.axvline(eps ** (1 / 3), color="C2", lw=0.6, alpha=0.5)
    ax.set_xlabel("step size $h$")
    ax.set_ylabel("relative error of $f'(0.7)$")
    ax.set_ylim(floor / 3, 10)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def random_gradient_errors(sample_sizes: ArrayLike, rmse: Mapping[tuple[str, str], ArrayLike],
                           evaluations: Mapping[str, Sequence[int]], n: int, figsize: tuple[float, float] = (8.4, 3.6)) -> Figure:
    """RMS error of random-direction gradient estimators against the number of evaluations (exact, noisy).

    ``rmse[objective, name]`` lists the errors over ``sample_sizes``; ``evaluations[name]`` the matching
    numbers of evaluations of ``f``; ``n`` is the dimension (central differences need ``2 n``).
    """
    ms = np.asarray(sample_sizes, dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=figsize, sharey=True)
    colors = {"SPSA, Rademacher": "C0", "SPSA, Gaussian": "C1", "regression": "C3"}
    for ax, objective in zip(axes, ("exact", "noisy")):
        for name, evals in evaluations.items():
            ax.loglog(evals, [max(e, 1e-12) for e in rmse[objective, name]], "o-", ms=3, color=colors.get(name),
                      label=name)
        ax.loglog(2 * ms, np.sqrt((n - 1) / ms), color=colors["SPSA, Rademacher"], ls=":", lw=0.8)
        ax.loglog(2 * ms, np.sqrt((n + 1) / ms), color=colors["SPSA, Gaussian"], ls=":", lw=0.8)
        ax.axvline(2 * n, color="0.4", lw=0.8, ls="--")
        ax.text(2 * n * 1.15, 20, "central\ndifferences", color="0.3", va="top")
        ax.set_xlabel("evaluations of $f$")
        ax.set_title(f"{objective} objective")
    axes[0].set_ylabel("RMS relative error of the gradient")
    axes[0].legend(loc="lower left")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- background: classical double backpropagation
def decision_regions(grid_x, grid_y, probabilities: Mapping[str, np.ndarray], x_train, y_train, lambdas: Mapping,
                     noise_levels, loss_vs_noise: Mapping[str, Sequence[float]], figsize=(COLUMN_IN, 3.4)):
    """Two classifiers' decision regions on the plane (``probabilities[name]`` of shape ``(len(grid_y), len(grid_x))``)
    and their test loss against the input noise level."""
    fig, axes = plt.subplots(1, 3, figsize=figsize, gridspec_kw={"width_ratios": [1, 1, 0.9]})
    for ax, (name, prob) in zip(axes, probabilities.items()):
        ax.contourf(grid_x, grid_y, prob, levels=np.linspace(0, 1, 11).tolist(), cmap="RdBu_r", alpha=0.6)
        ax.contour(grid_x, grid_y, prob, levels=[0.5], colors="k", linewidths=1.2)
        ax.scatter(x_train[:, 0], x_train[:, 1], c=y_train, cmap="RdBu_r", edgecolors="k", s=14, linewidths=0.5)
        ax.set_title(f"{name} ($\\lambda = {lambdas[name]}$)")
        ax.set_aspect("equal")
        ax.grid(False)
        ax.set_xlabel("$x_1$")
    axes[0].set_ylabel("$x_2$")
    for (name, color), (marker, ls) in zip(zip(loss_vs_noise, ("C1", "C0")), (("o", "-"), ("s", "--"))):
        axes[2].plot(noise_levels, loss_vs_noise[name], marker=marker, ls=ls, ms=3, color=color, label=name)
    axes[2].set_xlabel("input noise level $\\sigma$")
    axes[2].set_ylabel("test loss")
    axes[2].set_title("robustness to input noise")
    axes[2].legend()
    fig.tight_layout()
    return fig


def generator_curves(clean, targets, curves: Mapping[str, np.ndarray], t, clean_speed, speeds: Mapping[str, np.ndarray],
                     figsize=(COLUMN_IN, 3.6)):
    """Generated curves against the clean curve and the training targets, and their speed ``|G'(t)|``."""
    fig, axes = plt.subplots(1, 2, figsize=figsize, gridspec_kw={"width_ratios": [1.3, 1]})
    ax = axes[0]
    ax.plot(clean[:, 0], clean[:, 1], color="0.6", lw=2.5, label="clean curve")
    ax.scatter(targets[:, 0], targets[:, 1], color="k", s=12, zorder=3, label="training targets")
    for (name, out), color, ls in zip(curves.items(), ("C1", "C0"), ("--", "-")):
        ax.plot(out[:, 0], out[:, 1], color=color, ls=ls, lw=1.3, label=name)
    ax.set_xlabel("output coordinate 1")
    ax.set_ylabel("output coordinate 2")
    ax.set_title("generated curves $G(t)$, $t \\in [-1, 1]$")
    ax.legend(loc="lower right")
    ax = axes[1]
    ax.plot(t, clean_speed, color="0.6", lw=2.5, label="clean curve")
    for (name, speed), color, ls in zip(speeds.items(), ("C1", "C0"), ("--", "-")):
        ax.plot(t, speed, color=color, ls=ls, lw=1.3, label=name)
    ax.set_xlabel("latent code $t$")
    ax.set_ylabel("$\\|J_G(t)\\|_F = \\|G'(t)\\|$")
    ax.set_title("output speed per unit latent step")
    ax.legend()
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- Sections 2–3
def adjoint_defects(errors: Mapping[tuple[str, str], AdjointErrors], names: Sequence[str], short: Sequence[str],
                    eps: Mapping[str, float], floor: float = 1e-19, figsize: tuple[float, float] = (7.5, 3.6)) -> Figure:
    """Normalised adjoint defects per operator and dtype (``errors[(name, dtype)]`` has ``transpose`` and
    ``weight_adjoint``), with the machine epsilons."""
    fig, ax = plt.subplots(figsize=figsize)
    pos = np.arange(len(names))
    markers = {("float32", "transpose"): ("o", "C0"), ("float32", "weight_adjoint"): ("s", "C0"),
               ("float64", "transpose"): ("o", "C1"), ("float64", "weight_adjoint"): ("s", "C1")}
    for (dt, which), (mk, col) in markers.items():
        vals = [max(getattr(errors[(n, dt)], which), floor) for n in names]
        off = -0.12 if which == "transpose" else 0.12
        # typeset as the text writes them, K^T and the weight-adjoint K^□ (a superscript box, not a box after K)
        label = f"{dt}: " + (r"$\langle x, K^{\mathsf{T}}(\theta,y)\rangle$" if which == "transpose"
                             else r"$\langle \theta, K^{□}(x,y)\rangle$")
        ax.scatter(pos + off, vals, marker=mk, color=col, label=label, zorder=3)
    for dt, col in (("float32", "C0"), ("float64", "C1")):
        ax.axhline(eps[dt], color=col, ls="--", lw=0.8)
        ax.text(len(names) - 0.5, eps[dt] * 1.6, f"eps({dt})", color=col, ha="right")
    ax.set_yscale("log")
    ax.set_ylim(floor / 3, 1e-3)
    ax.set_xticks(pos, short)
    ax.set_ylabel("normalised defect")
    ax.legend(loc="upper left", ncol=2)
    fig.tight_layout()
    return fig


def activation_curves(activations: Mapping, t, figsize=(COLUMN_IN, 3.9)):
    """``g``, ``g'`` and ``g''`` of the package's activations (``activations[name]`` has ``f``, ``df``, ``d2f``).

    Every activation has its own colour and a line style (:func:`series_style`)."""
    if len(activations) > len(PALETTE):
        raise ValueError(f"activation_curves: {len(activations)} activations, but only {len(PALETTE)} distinct colours")
    fig, axes = plt.subplots(1, 3, figsize=figsize, sharex=True)
    for k, (name, act) in enumerate(activations.items()):
        for ax, fn in zip(axes, (act.f, act.df, act.d2f)):
            ax.plot(np.asarray(t), np.asarray(fn(t)), lw=1.2, label=name, **series_style(k))
    for ax, title in zip(axes, ("$g(z)$", "$g'(z)$", "$g''(z)$")):
        ax.set_title(title)
        ax.set_xlabel("$z$")
    axes[0].set_ylim(-1.5, 3)
    # the legend below the panels, where it covers no curve (inside the g'' panel it hid ELU's jump)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False)
    rect = (0.0, 0.22, 1.0, 1.0)
    setattr(fig, "dbpaper_tight_layout", {"rect": rect})  # noqa: B010 - save_figure lays it out again the same way
    fig.tight_layout(rect=rect)
    return fig


def power_iterations(iters: ArrayLike, ratios: ArrayLike, figsize: tuple[float, float] = (5.5, 3.2)) -> Figure:
    """The power-method lower bound of the operator norm over its spectral norm, per input and on average."""
    ratios = np.asarray(ratios)
    fig, ax = plt.subplots(figsize=figsize)
    for i in range(ratios.shape[1]):
        ax.plot(iters, ratios[:, i], color="0.7", lw=0.8)
    ax.plot(iters, ratios.mean(axis=1), color="C0", lw=2, marker="o", label=f"mean over {ratios.shape[1]} inputs")
    ax.axhline(1.0, color="C3", ls="--", lw=1, label="spectral norm of $J$")
    ax.set_xlabel("power iterations")
    ax.set_ylabel(r"$\|J^* v\| \,/\, \|J\|_2$")
    ax.set_xscale("log")
    ax.set_xticks(iters, [str(k) for k in iters])
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
