"""IHC figures on a synthetic section and IHC image."""

from __future__ import annotations

import numpy as np
import pandas as pd
import tifffile

from stpredict.ihc.correlate import summary_table
from stpredict.ingest.images import open_image
from stpredict.plot.ihc import ihc_on_background, plot_ihc_maps, plot_ihc_scatter

from .figure_inputs import check_outputs, section


def inputs(tmp_path, missing_predictions=False):
    a = section()
    xy = np.asarray(a.obsm["spatial"])
    rng = np.random.default_rng(0)
    protein = (np.hypot(*(xy - xy.mean(axis=0)).T) < 400).astype(float)
    spots = pd.DataFrame(
        {
            "spot_id": a.obs_names.astype(str),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "keep": True,
            "inside": True,
            "darkness": 30 + 90 * protein + rng.normal(0, 5, len(xy)),
            "dab_od": 0.05 + 0.3 * protein + rng.normal(0, 0.02, len(xy)),
            "measured": protein + rng.normal(0, 0.3, len(xy)),
            "predicted": np.nan if missing_predictions else protein + rng.normal(0, 0.2, len(xy)),
        }
    )
    reg = {"matrix": np.eye(3).tolist(), "ransac_residual_px": 3.0, "refined_residual_px": 3.5}
    summary = summary_table(spots, reg, sample="S", gene="G1", experiment="e", n_boot=50, seed=0)
    img = np.full((2000, 2000, 3), 240, np.uint8)
    img[700:1300, 700:1300] = (120, 80, 50)
    path = tmp_path / "ihc.tif"
    tifffile.imwrite(path, img)
    return a, spots, summary, reg, path


def test_scatter_and_maps(tmp_path):
    a, spots, summary, reg, path = inputs(tmp_path)
    plot_ihc_scatter(spots, summary, "G1", "log1p", tmp_path / "scatter.png")
    check_outputs(tmp_path / "scatter.png")
    plot_ihc_maps(a, spots, summary, reg, str(path), "G1", "log1p", tmp_path / "maps.png")
    check_outputs(tmp_path / "maps.png")


def test_figures_without_predictions_do_not_raise(tmp_path):
    a, spots, summary, reg, path = inputs(tmp_path, missing_predictions=True)
    assert summary["r"].isna().all()
    plot_ihc_scatter(spots, summary, "G1", "log1p", tmp_path / "scatter.png")
    check_outputs(tmp_path / "scatter.png")
    plot_ihc_maps(a, spots, summary, reg, str(path), "G1", "log1p", tmp_path / "maps.png")
    check_outputs(tmp_path / "maps.png")


def test_ihc_is_resampled_into_the_background_frame(tmp_path):
    img = np.full((400, 400, 3), 250, np.uint8)
    img[100:200, 250:350] = 20  # a dark square at IHC x 250-350, y 100-200
    path = tmp_path / "ihc.tif"
    tifffile.imwrite(path, img)
    shift = np.array([[1.0, 0, 200], [0, 1.0, 50], [0, 0, 1]])  # IHC = H&E + (200, 50)
    with open_image(path) as ihc:
        out = ihc_on_background(ihc, shift, (200, 200), 0.5)  # background at half scale
    # H&E x 50-150, y 50-150 -> background px 25-75
    assert out[50, 50].max() < 60 and out[10, 10].min() > 200 and out[90, 90].min() > 200


def test_map_titles_name_the_ihc_measure_and_qc_failed_spots_are_ringed(tmp_path, monkeypatch):
    from matplotlib.collections import EllipseCollection

    import stpredict.plot.ihc as mod

    a, spots, summary, reg, path = inputs(tmp_path)
    spots.loc[spots.index[:7], "keep"] = False  # failed QC: not scored, still drawn
    summary = summary_table(spots, reg, sample="S", gene="G1", experiment="e", n_boot=50, seed=0)
    figs = []
    real = mod._save_both
    monkeypatch.setattr(
        mod, "_save_both", lambda fig, out, **kw: (figs.append(fig), real(fig, out, **kw))
    )
    plot_ihc_maps(a, spots, summary, reg, str(path), "G1", "log1p", tmp_path / "maps.png")
    axes = figs[0].axes
    titles = {ax.get_title().split("\n")[0]: ax for ax in axes if ax.get_title()}
    for name in ("G1: predicted", "G1: measured"):
        assert "vs IHC DAB OD:" in titles[name].get_title()
    ring_counts = []
    for name in ("G1 IHC: DAB OD", "G1 IHC: darkness (paper)", "G1: predicted", "G1: measured"):
        rings = [
            c
            for c in titles[name].collections
            if isinstance(c, EllipseCollection) and len(c.get_facecolor()) == 0
        ]
        ring_counts.append(sum(len(c.get_offsets()) for c in rings))
    assert ring_counts == [7, 7, 7, 7]
    legend = titles["H&E"].get_legend()
    assert legend is not None and "failed QC (7 spots): not scored" in legend.texts[0].get_text()
