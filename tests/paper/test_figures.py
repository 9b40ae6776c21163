"""Figures are written into stable files: two runs give byte-identical PDF, PNG, SVG and manifest."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dbpaper.paper.figures import FIGURE_FORMATS, save_figure, style, write_manifest  # noqa: E402


def _small_figure():
    with plt.rc_context(style()):
        fig, axes = plt.subplots(1, 2, figsize=(4, 2))
        t = np.linspace(-np.pi, np.pi, 201)
        axes[0].plot(t, np.sin(t), label=r"$\sin x_0$")
        axes[0].axvline(0.5, color="0.6", lw=0.7)
        axes[0].legend()
        axes[1].loglog([1, 4, 16], [1.0, 0.25, 0.0625], marker="o")
        axes[1].set_title(r"$\partial_w \mathcal{R}^{\mathfrak{B}}_\mathrm{cdb}$")
        fig.tight_layout()
    return fig


def test_save_figure_twice_gives_identical_bytes_and_manifest(tmp_path):
    outs = []
    for run in ("a", "b"):
        folder = tmp_path / run
        fig = _small_figure()
        paths = save_figure(fig, "fig-test-small", out=folder)
        plt.close(fig)
        assert set(paths) == set(FIGURE_FORMATS)
        manifest = write_manifest(folder)
        outs.append((folder, json.loads(manifest.read_text())))
    (fa, ma), (fb, mb) = outs
    assert ma == mb and sorted(ma) == [f"fig-test-small.{ext}" for ext in sorted(FIGURE_FORMATS)]
    for ext in FIGURE_FORMATS:
        assert (fa / f"fig-test-small.{ext}").read_bytes() == (fb / f"fig-test-small.{ext}").read_bytes()


def test_save_figure_rejects_paths_as_names(tmp_path):
    fig = _small_figure()
    try:
        with pytest.raises(ValueError, match="plain file stem"):
            save_figure(fig, "sub/dir", out=tmp_path)
    finally:
        plt.close(fig)
