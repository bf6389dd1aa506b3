"""Inputs of the figure tests: sections over a Visium lattice, per-gene and comparison tables."""

from __future__ import annotations

import anndata as ad
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp

from stpredict.ingest.geometry import visium_lattice

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
    obs = pd.DataFrame(
        {"sample_id": sid, "array_row": r, "array_col": c, "annotation": ann},
        index=[f"{sid}_{i}" for i in range(n)],
    )
    X = sp.csr_matrix(meas.astype(np.float32)) if sparse else meas.astype(np.float32)
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(genes)))
    a.layers["predicted"] = pred.astype(np.float32)
    a.obsm["spatial"] = np.column_stack([x, y])
    if image:
        low = np.full((int(y.max() * 0.1) + 30, int(x.max() * 0.1) + 30, 3), 235, np.uint8)
        yy, xx = np.mgrid[0 : low.shape[0], 0 : low.shape[1]]
        low[np.hypot(xx - x.mean() * 0.1, yy - y.mean() * 0.1) < 70] = (190, 110, 180)
        a.uns["spatial"] = {
            sid: {
                "images": {"lowres": low},
                "scalefactors": {
                    "tissue_lowres_scalef": 0.1,
                    "tissue_hires_scalef": 0.2,
                    "spot_diameter_fullres": 50.0,
                },
            }
        }
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
                    rows.append(
                        (f"G{g}", f"P{u}", "patient", target, stratum, "log1p", r, r, 0.4, auc, 200)
                    )
    return pd.DataFrame(
        rows,
        columns=[
            "gene",
            "unit",
            "unit_by",
            "target",
            "stratum",
            "transform",
            "pearson",
            "spearman",
            "rmse",
            "auroc",
            "n_spots",
        ],
    )


def comparison_table():
    """Fixed example: CNN vs labels (r) and vs mean (RMSE)."""
    rows = [
        # gene, method, median_pearson, median_rmse
        ("A", "cnn", 0.30, 0.50),
        ("B", "cnn", 0.10, 0.60),
        ("C", "cnn", 0.20, 0.40),
        ("D", "cnn", np.nan, 0.70),
        ("A", "labels", 0.10, 0.55),
        ("B", "labels", 0.20, 0.58),
        ("C", "labels", 0.05, 0.45),
        ("D", "labels", 0.10, 0.70),
        ("A", "mean", np.nan, 0.60),
        ("B", "mean", np.nan, 0.55),
        ("C", "mean", np.nan, 0.50),
        ("D", "mean", np.nan, 0.80),
        ("A", "neighbours", 0.40, 0.40),
        ("B", "neighbours", 0.05, 0.50),
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
