"""Spatial figures (stpredict.plot.maps): PNG and PDF written, missing images, genes and NaNs drawn around."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from stpredict.plot.maps import plot_cluster_maps, plot_dataset_stats, plot_expression_maps
from stpredict.vocab import units_label
from tests.unit.plot.figure_inputs import (
    check_outputs,
    section,
)


def test_dataset_stats_survive_zero_umi_spots_and_a_section_without_kept_spots(tmp_path):
    rng = np.random.default_rng(0)
    parts = []
    for i in range(5):
        tc = rng.lognormal(8, 0.6, 80)
        tc[:3] = 0  # zero-UMI spots cannot go on the log axis
        parts.append(
            pd.DataFrame(
                {
                    "sample_id": f"S{i}",
                    "patient_id": f"P{i // 2}",
                    "platform": "visium" if i < 4 else "st",
                    "total_counts": tc,
                    "n_genes_by_counts": (tc**0.8),
                    "keep": tc > 2000,
                }
            )
        )
    parts.append(
        pd.DataFrame(
            {
                "sample_id": "S9",
                "patient_id": "P9",
                "platform": "st",
                "total_counts": [5.0, 7.0],
                "n_genes_by_counts": [2, 3],
                "keep": [False, False],
            }
        )
    )  # a section with no kept spot
    png = tmp_path / "stats" / "dataset.png"
    plot_dataset_stats(pd.concat(parts), png)
    check_outputs(png)


def test_expression_maps_draw_sections_without_an_image_or_a_gene(tmp_path):
    a = section()
    b = section("DEMO_B1", genes=("G1", "G3"), image=False)  # no H&E, G2 missing
    png = tmp_path / "maps.png"
    plot_expression_maps(
        [a, b], ["G1", "G2", "G3"], units_label("log1p"), png, titles=["section A", "section B"]
    )
    check_outputs(png, min_w=800, min_h=1000)


def test_expression_maps_of_sparse_counts_take_default_titles(tmp_path):
    png = tmp_path / "maps_sparse.png"
    plot_expression_maps([section(sparse=True)], ["G1"], "counts", png)
    check_outputs(png, min_w=800)


def test_expression_maps_refuse_titles_of_another_length_and_close_the_figure(tmp_path):
    with pytest.raises(ValueError, match="titles"):
        plot_expression_maps([section()], ["G1"], "x", tmp_path / "m.png", titles=["a", "b"])
    assert plt.get_fignums() == []


def test_cluster_maps_draw_every_cluster_over_the_section(tmp_path):
    png = tmp_path / "clusters.png"
    plot_cluster_maps(section(clusters=True), png)
    check_outputs(png)


def superres_adata():
    """A section's measured spots plus imputed triangle centroids (and two QC-failed spots)."""
    from stpredict.patches.centres import triangle_centres

    a = section(genes=("G1", "G2"))
    a.obs["kind"], a.obs["qc_failed"] = "measured", False
    a.obs.loc[a.obs_names[:2], ["kind", "qc_failed"]] = ["imputed", True]
    a.X[:2] = np.nan
    t = triangle_centres(a.obs["array_row"], a.obs["array_col"], *a.obsm["spatial"].T)
    b = ad.AnnData(
        X=np.full((len(t), 2), np.nan, np.float32),
        obs=pd.DataFrame({"kind": "imputed", "qc_failed": False}, index=t["id"].to_numpy()),
        var=a.var.copy(),
    )
    b.layers["predicted"] = (
        np.random.default_rng(0).normal(3.0, 0.5, (len(t), 2)).astype(np.float32)
    )
    b.obsm["spatial"] = t[["x", "y"]].to_numpy()
    out = ad.concat([a, b])
    out.uns = a.uns
    return out


def test_superres_maps_share_one_colour_scale_for_measured_and_predicted(tmp_path):
    import json

    from PIL import Image

    from stpredict.plot.maps import plot_superres_maps

    a = superres_adata()
    png = tmp_path / "superres.png"
    scales = plot_superres_maps(a, ["G1", "G2"], units_label("log1p"), png)
    check_outputs(png, min_w=800, min_h=400)
    written = json.loads(Image.open(png).text["colour_scales"])
    assert written == json.loads(json.dumps(scales))
    kind = a.obs["kind"].to_numpy()
    for j, gene in enumerate(["G1", "G2"]):
        assert written[gene]["panels"] == ["measured", "imputed", "both"]
        # the one scale spans measured values AND predictions (imputed near 3, measured near 1-2)
        drawn = np.where(kind == "measured", a.X[:, j], a.layers["predicted"][:, j])
        lo, hi = np.percentile(drawn[np.isfinite(drawn)], [1, 99])
        assert (written[gene]["vmin"], written[gene]["vmax"]) == pytest.approx((lo, hi))
        measured_only = np.percentile(a.X[kind == "measured", j], 99)
        assert written[gene]["vmax"] > measured_only  # not the measured values' scale alone


def test_expression_maps_ring_qc_failed_spots(tmp_path):
    a = section()
    a.obs["qc_failed"] = False
    a.obs.loc[a.obs_names[5:9], "qc_failed"] = True
    a.X[5:9] = np.nan  # imputed, not measured
    png = tmp_path / "maps_qc.png"
    plot_expression_maps([a], ["G1"], units_label("log1p"), png)
    check_outputs(png)


def _captured(monkeypatch, module):
    """Keep the figure a plot function saves (it closes it after saving)."""
    import importlib

    mod = importlib.import_module(module)
    figs = []
    real = mod._save_both

    def keep(fig, out_png, **kw):
        figs.append(fig)
        real(fig, out_png, **kw)

    monkeypatch.setattr(mod, "_save_both", keep)
    return figs


def test_superres_maps_draw_measured_spots_at_their_own_size_on_a_fine_stride_grid(
    tmp_path, monkeypatch
):
    """A stride grid finer than the spots: grid points small, measured spots at spot size."""
    from matplotlib.collections import EllipseCollection

    from stpredict.plot.maps import _spacing, plot_superres_maps

    a = section(genes=("G1",))
    a.obs["kind"], a.obs["qc_failed"] = "measured", False
    xy = np.asarray(a.obsm["spatial"], float)
    spot_gap = _spacing(xy)
    step = spot_gap / 6.0
    gx, gy = np.meshgrid(
        np.arange(xy[:, 0].min(), xy[:, 0].max(), step),
        np.arange(xy[:, 1].min(), xy[:, 1].max(), step),
    )
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    b = ad.AnnData(
        X=np.full((len(grid), 1), np.nan, np.float32),
        obs=pd.DataFrame(
            {"kind": "imputed", "qc_failed": False}, index=[f"g{i}" for i in range(len(grid))]
        ),
        var=a.var.copy(),
    )
    b.layers["predicted"] = np.ones((len(grid), 1), np.float32)
    b.obsm["spatial"] = grid
    a.layers["predicted"] = np.asarray(a.X, np.float32)
    both = ad.concat([a, b])
    both.uns = a.uns
    figs = _captured(monkeypatch, "stpredict.plot.maps")
    plot_superres_maps(both, ["G1"], units_label("log1p"), tmp_path / "stride.png")
    measured_ax, imputed_ax = figs[0].axes[0], figs[0].axes[1]

    def widths(ax):
        (coll,) = [c for c in ax.collections if isinstance(c, EllipseCollection)]
        return np.unique(np.round(coll._widths * 2, 6))  # matplotlib keeps half-widths

    (w_spot,), (w_grid,) = widths(measured_ax), widths(imputed_ax)
    scale = a.uns["spatial"][next(iter(a.uns["spatial"]))]["scalefactors"]
    phys = scale["spot_diameter_fullres"] * scale["tissue_lowres_scalef"]  # background px
    assert w_spot == pytest.approx(min(phys, 0.9 * spot_gap * scale["tissue_lowres_scalef"]))
    assert w_grid == pytest.approx(0.9 * step * scale["tissue_lowres_scalef"], rel=0.02)
    assert w_spot > 2 * w_grid  # the spots are not shrunk to the grid's marker
