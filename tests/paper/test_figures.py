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


def test_save_figure_records_size_resolution_and_smallest_font(tmp_path):
    fig = _small_figure()
    try:
        save_figure(fig, "fig-test-record", out=tmp_path)
    finally:
        plt.close(fig)
    record = json.loads((tmp_path / "fig-test-record.json").read_text())
    png = (tmp_path / "fig-test-record.png").read_bytes()
    size = [int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")]  # the PNG's IHDR
    assert record["width_in"] == 4 and record["png_px"] == size == [round(4 * record["dpi"]), round(2 * record["dpi"])]
    assert record["min_font_pt"] == 9  # the style's font size: tick labels, legend, title
    assert record["min_display_px"] == pytest.approx(9 * 72 * 4 / 9)


def test_save_figure_refuses_text_that_cannot_be_read_in_the_column(tmp_path):
    from dbpaper.paper.figures import COLUMN_PX, page_width

    with plt.rc_context(style()):
        fig, ax = plt.subplots(figsize=(page_width() * 1.5, 2))  # 9 pt over 1.5 columns: 6 px in the page
        ax.plot([0, 1], [0, 1])
    try:
        with pytest.raises(ValueError, match=f"{COLUMN_PX} px"):
            save_figure(fig, "fig-test-too-wide", out=tmp_path)
        with plt.rc_context(style()):
            ax.legend(["a line"], fontsize=6)
            fig.set_size_inches(page_width(), 2)  # the column's width, but a 6 pt legend: 6 px
        with pytest.raises(ValueError, match="6"):
            save_figure(fig, "fig-test-small-font", out=tmp_path)
    finally:
        plt.close(fig)
    assert not list(tmp_path.glob("fig-test-*"))
