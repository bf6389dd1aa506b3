"""Tests of stpredict.plot.style: every figure is rendered to a PNG and a PDF, NaNs do not crash."""

from __future__ import annotations

import anndata as ad
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stpredict.ingest.geometry import visium_lattice
from stpredict.plot.latent import plot_ig_overlays, plot_umap
from stpredict.plot.maps import plot_cluster_maps, plot_dataset_stats, plot_expression_maps
from stpredict.plot.scores import (
    plot_auroc_hist,
    plot_confusion,
    plot_consistency,
    plot_loss_curves,
    plot_method_scatter,
)
from stpredict.vocab import units_label

SID = "DEMO_A1"


def check_outputs(png, min_w=300, min_h=200):
    """Both files exist and are non-empty, the PNG loads and is not blank, no figure is open."""
    pdf = png.with_suffix(".pdf")
    assert png.is_file() and png.stat().st_size > 1000
    assert pdf.is_file() and pdf.stat().st_size > 1000
    assert pdf.read_bytes()[:4] == b"%PDF"
    img = mpimg.imread(png)
    h, w = img.shape[:2]
    assert min_w <= w <= 6000 and min_h <= h <= 8000, (w, h)
    assert float(np.asarray(img[..., :3]).std()) > 0.01  # not blank
    assert plt.get_fignums() == []


def section(sid=SID, genes=("G1", "G2", "G3"), sparse=False, clusters=False, image=True):
    rng = np.random.default_rng(1)
    r, c = visium_lattice(14, 24)
    x = 200 + c * 69.0
    y = 200 + r * 119.5
    n = len(x)
    tumour = np.hypot(x - x.mean(), y - y.mean()) < 350
    ann = np.where(tumour, "tumor", np.where(np.arange(n) % 7 == 0, "", "non"))
    meas = rng.normal(1.0, 0.5, (n, len(genes))) + tumour[:, None]
    pred = meas * 0.5 + rng.normal(0, 0.2, meas.shape)
    pred[:, -1] = 0.7  # constant prediction: Pearson r is NaN
    obs = pd.DataFrame({"sample_id": sid, "array_row": r, "array_col": c, "annotation": ann},
                       index=[f"{sid}_{i}" for i in range(n)])
    X = sp.csr_matrix(meas.astype(np.float32)) if sparse else meas.astype(np.float32)
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(genes)))
    a.layers["predicted"] = pred.astype(np.float32)
    a.obsm["spatial"] = np.column_stack([x, y])
    if image:
        low = np.full((int(y.max() * 0.1) + 30, int(x.max() * 0.1) + 30, 3), 235, np.uint8)
        yy, xx = np.mgrid[0:low.shape[0], 0:low.shape[1]]
        low[np.hypot(xx - x.mean() * 0.1, yy - y.mean() * 0.1) < 70] = (190, 110, 180)
        a.uns["spatial"] = {sid: {"images": {"lowres": low}, "scalefactors": {
            "tissue_lowres_scalef": 0.1, "tissue_hires_scalef": 0.2,
            "spot_diameter_fullres": 50.0}}}
        a.uns["stpredict"] = {"sample_id": sid, "mpp": 0.5}
    if clusters:
        k = (x > x.mean()).astype(int) + 2 * tumour
        a.obs["cluster_true"] = [f"C{v}" for v in k]
        a.obs["cluster_pred"] = [f"C{v}" if i % 5 else "C0" for i, v in enumerate(k)]
        a.obs.loc[a.obs_names[:3], "cluster_pred"] = ""
    return a


def per_gene_table(n_genes=30, n_units=8, nan_gene=True):
    rng = np.random.default_rng(2)
    rows = []
    for g in range(n_genes):
        mu = rng.normal(0.1, 0.1)
        for u in range(n_units):
            r = float(np.clip(rng.normal(mu, 0.1), -1, 1))
            auc = float(np.clip(0.5 + r, 0, 1))
            if nan_gene and g == 0:
                r, auc = np.nan, np.nan
            for target in ("raw", "smoothed"):
                for stratum in ("all", "tumor"):
                    rows.append((f"G{g}", f"P{u}", "patient", target, stratum, "log1p", r, r,
                                 0.4, auc, 200))
    return pd.DataFrame(rows, columns=["gene", "unit", "unit_by", "target", "stratum",
                                       "transform", "pearson", "spearman", "rmse", "auroc",
                                       "n_spots"])


def comparison_table():
    """Fixed example: CNN vs labels (r) and vs mean (RMSE)."""
    rows = [
        # gene, method, median_pearson, median_rmse
        ("A", "cnn", 0.30, 0.50), ("B", "cnn", 0.10, 0.60), ("C", "cnn", 0.20, 0.40),
        ("D", "cnn", np.nan, 0.70),
        ("A", "labels", 0.10, 0.55), ("B", "labels", 0.20, 0.58), ("C", "labels", 0.05, 0.45),
        ("D", "labels", 0.10, 0.70),
        ("A", "mean", np.nan, 0.60), ("B", "mean", np.nan, 0.55), ("C", "mean", np.nan, 0.50),
        ("D", "mean", np.nan, 0.80),
        ("A", "neighbours", 0.40, 0.40), ("B", "neighbours", 0.05, 0.50),
        ("C", "neighbours", np.nan, 0.50),
    ]
    df = pd.DataFrame(rows, columns=["gene", "method", "median_pearson", "median_rmse"])
    df["target"] = "raw"
    df["pooled_pearson"] = df["median_pearson"]
    df["n_units"] = 8
    df["n_positive"] = 5
    df["median_auroc"] = 0.6
    other = df.copy()
    other["target"] = "smoothed"
    other["median_pearson"] = -0.5  # must be ignored for target="raw"
    return pd.concat([df, other], ignore_index=True)


@pytest.fixture(autouse=True)
def _no_open_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == []


def test_dataset_stats(tmp_path):
    rng = np.random.default_rng(0)
    parts = []
    for i in range(5):
        tc = rng.lognormal(8, 0.6, 80)
        tc[:3] = 0  # zero-UMI spots cannot go on the log axis
        parts.append(pd.DataFrame({"sample_id": f"S{i}", "patient_id": f"P{i // 2}",
                                   "platform": "visium" if i < 4 else "st",
                                   "total_counts": tc, "n_genes_by_counts": (tc ** 0.8),
                                   "keep": tc > 2000}))
    parts.append(pd.DataFrame({"sample_id": "S9", "patient_id": "P9", "platform": "st",
                               "total_counts": [5.0, 7.0], "n_genes_by_counts": [2, 3],
                               "keep": [False, False]}))  # a section with no kept spot
    png = tmp_path / "stats" / "dataset.png"
    plot_dataset_stats(pd.concat(parts), png)
    check_outputs(png)


def test_expression_maps(tmp_path):
    a = section()
    b = section("DEMO_B1", genes=("G1", "G3"), image=False)  # no H&E, G2 missing
    png = tmp_path / "maps.png"
    plot_expression_maps([a, b], ["G1", "G2", "G3"], units_label("log1p"), png,
                            titles=["section A", "section B"])
    check_outputs(png, min_w=800, min_h=1000)


def test_expression_maps_sparse_default_titles(tmp_path):
    png = tmp_path / "maps_sparse.png"
    plot_expression_maps([section(sparse=True)], ["G1"], "counts", png)
    check_outputs(png, min_w=800)


def test_expression_maps_rejects_bad_titles(tmp_path):
    with pytest.raises(ValueError, match="titles"):
        plot_expression_maps([section()], ["G1"], "x", tmp_path / "m.png", titles=["a", "b"])
    assert plt.get_fignums() == []


def test_consistency(tmp_path):
    from stpredict.evaluate.metrics import summarise

    summary = summarise(per_gene_table())
    assert summary["median_pearson"].isna().any()  # the NaN gene is in the input
    comp = comparison_table()
    png = tmp_path / "consistency.png"
    plot_consistency(summary, 8, png, methods={"labels": summary.assign(
        n_positive=summary["n_positive"] // 2), "mean": comp[comp["method"] == "mean"]})
    check_outputs(png)


def test_consistency_all_nan(tmp_path):
    summary = pd.DataFrame({"target": "raw", "gene": ["A", "B"], "median_pearson": np.nan,
                            "n_units": 0, "n_positive": 0})
    png = tmp_path / "consistency_nan.png"
    plot_consistency(summary, 5, png)
    check_outputs(png)


def test_auroc_hist(tmp_path):
    png = tmp_path / "auroc.png"
    plot_auroc_hist(per_gene_table(), png)
    check_outputs(png)
    nan_only = per_gene_table(n_genes=2).assign(auroc=np.nan)
    png2 = tmp_path / "auroc_nan.png"
    plot_auroc_hist(nan_only, png2)
    check_outputs(png2)


def test_method_scatter_counts(tmp_path):
    png = tmp_path / "methods.png"
    counts = plot_method_scatter(comparison_table(), png, units_label="log1p")
    check_outputs(png)
    # labels (r): A 0.30>0.10, B 0.10<0.20, C 0.20>0.05, D CNN NaN -> 2 of 3
    # mean (RMSE, lower is better): A .50<.60, B .60>.55, C .40<.50, D .70<.80 -> 3 of 4
    # neighbours (r): A 0.30<0.40, B 0.10>0.05, C NaN -> 1 of 2
    assert counts == {"mean": (3, 4), "labels": (2, 3), "neighbours": (1, 2)}


def test_method_scatter_needs_cnn(tmp_path):
    comp = comparison_table()
    with pytest.raises(ValueError, match="cnn"):
        plot_method_scatter(comp[comp["method"] != "cnn"], tmp_path / "m.png")
    only_cnn = comp[comp["method"] == "cnn"]
    assert plot_method_scatter(only_cnn, tmp_path / "cnn_only.png") == {}
    check_outputs(tmp_path / "cnn_only.png")


@pytest.mark.parametrize("with_patches", [True, False])
def test_umap(tmp_path, with_patches):
    rng = np.random.default_rng(4)
    n = 400
    labels = rng.choice(["tumor", "non", ""], n)
    coords = rng.normal(0, 1, (n, 2)) + (labels == "tumor")[:, None] * 2.5
    examples = pd.DataFrame({"kind": ["tumour", "normal", "unannotated", "far"],
                             "index": [int(np.flatnonzero(labels == "tumor")[0]),
                                       int(np.flatnonzero(labels == "non")[0]), 7, 11]})
    patches = rng.integers(0, 255, (4, 32, 32, 3)).astype(np.uint8) if with_patches else None
    png = tmp_path / "umap.png"
    plot_umap(coords, labels, png, examples, patches, "UMAP of patch features")
    check_outputs(png)


def test_umap_without_examples(tmp_path):
    rng = np.random.default_rng(5)
    png = tmp_path / "umap_plain.png"
    plot_umap(rng.normal(size=(50, 2)), np.array(["tumor"] * 25 + [""] * 25, dtype=object),
                 png, title="plain")
    check_outputs(png)


def test_ig_overlays(tmp_path):
    rng = np.random.default_rng(6)
    patches = rng.integers(100, 255, (7, 24, 24, 3)).astype(np.uint8)
    attr = rng.normal(size=(7, 24, 24))
    attr[1] = 0.0  # no attribution at all
    attr[2, :3] = np.nan
    png = tmp_path / "ig.png"
    plot_ig_overlays(patches, attr, "ERBB2", png,
                        values=[1.0, np.nan, 2.0, 0.5, 0.1, 3.0, 2.2], units_label="log1p")
    check_outputs(png)
    png2 = tmp_path / "ig_one.png"
    plot_ig_overlays(patches[:1], attr[:1], "ERBB2", png2)
    check_outputs(png2, min_w=150)


def test_confusion(tmp_path):
    labels = ["C0", "C1", "C2"]
    cm = pd.DataFrame([[10, 2, 0], [0, 0, 0], [1, 3, 20]], index=labels, columns=labels)
    for normalise in (True, False):
        png = tmp_path / f"confusion_{normalise}.png"
        plot_confusion(cm, png, normalise=normalise)
        check_outputs(png)


def test_cluster_maps(tmp_path):
    png = tmp_path / "clusters.png"
    plot_cluster_maps(section(clusters=True), png)
    check_outputs(png)


def test_loss_curves(tmp_path):
    e = np.arange(1, 11)
    h = pd.DataFrame({"epoch": e, "train_loss": 10.0 / e, "val_loss": 12.0 / e,
                      "val_pearson_mean": np.nan, "val_accuracy": np.nan,
                      "images_per_s": 100.0, "seconds": 1.0, "lr": 1e-4})
    few = {"fold0": h, "fold1": h.assign(val_loss=np.nan), "fold2": h.iloc[:0]}
    png = tmp_path / "loss.png"
    plot_loss_curves(few, png)
    check_outputs(png)
    many = {f"fold{i}": h.assign(train_loss=h["train_loss"] * (1 + i / 10)) for i in range(12)}
    png2 = tmp_path / "loss_many.png"
    plot_loss_curves(many, png2)
    check_outputs(png2)
