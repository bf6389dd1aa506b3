"""Tests of stpredict.plot.qc: the QC figure is written (atomically), readable and complete."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

from stpredict.patches import qc as Q
from stpredict.plot.qc import plot_section_qc
from stpredict.plot.style import section_background


def qc_section(tmp_path, with_lowres=True):
    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[0:20, 0:24]
    xy = np.column_stack([cols.ravel() * 40 + 100, rows.ravel() * 40 + 100]).astype(float)
    n = len(xy)
    lam = np.where(np.hypot(xy[:, 0] - 560, xy[:, 1] - 480) < 300, 3.0, 0.2)
    counts = rng.poisson(lam[:, None] * np.ones((1, 800)))
    obs = pd.DataFrame({"sample_id": "DEMO_A1"}, index=[f"s{i}" for i in range(n)])
    a = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=obs,
        var=pd.DataFrame(index=[f"G{j}" for j in range(800)]),
    )
    a.obsm["spatial"] = xy
    a.uns["stpredict"] = {"sample_id": "DEMO_A1", "mpp": 1.0}
    if with_lowres:
        low = np.full((110, 120, 3), 240, np.uint8)
        yy, xx = np.mgrid[0:110, 0:120]
        low[np.hypot(xx - 56, yy - 48) < 30] = (180, 110, 190)
        a.uns["spatial"] = {
            "DEMO_A1": {
                "images": {"lowres": low},
                "scalefactors": {
                    "tissue_lowres_scalef": 0.1,
                    "tissue_hires_scalef": 0.2,
                    "spot_diameter_fullres": 30.0,
                    "fiducial_diameter_fullres": 40.0,
                },
            }
        }
    white = np.hypot(xy[:, 0] - 560, xy[:, 1] - 480) > 420
    tsv = tmp_path / "spots.tsv"
    pd.DataFrame(
        {
            "id": a.obs_names,
            "x": xy[:, 0],
            "y": xy[:, 1],
            "pad_frac": 0.0,
            "white_frac": np.where(white, 0.8, 0.05) + rng.uniform(0, 0.1, n),
            "mean_r": 200.0,
            "mean_g": 150.0,
            "mean_b": 200.0,
            "white": white,
        }
    ).to_csv(tsv, sep="\t", index=False)
    out = Q.apply_qc(a, tsv, {"min_umi": 1000, "min_genes": 700, "whiteness": True})
    return out, tsv


@pytest.mark.parametrize("with_lowres", [True, False])
def test_plot_section_qc_writes_png_and_pdf(tmp_path, with_lowres):
    a, tsv = qc_section(tmp_path, with_lowres)
    assert 0 < a.obs["keep"].sum() < a.n_obs  # every panel has something to show
    png, pdf = tmp_path / "fig" / "DEMO_A1.png", tmp_path / "fig" / "DEMO_A1.pdf"
    fig = plot_section_qc(a, tsv, png, out_pdf=pdf)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 1200 and im.size[1] > 700
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 20  # not blank
    assert pdf.read_bytes()[:4] == b"%PDF"
    assert sorted(p.name for p in png.parent.iterdir()) == ["DEMO_A1.pdf", "DEMO_A1.png"]
    texts = [t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))]
    joined = " ".join(texts)
    assert "DEMO_A1" in joined and "UMI per spot (log10)" in joined
    assert "too few UMI" in joined and "white patch" in joined
    assert f"{int(a.obs['keep'].sum()):,} of {a.n_obs:,} spots kept" in joined


def test_background_scale(tmp_path):
    a, _ = qc_section(tmp_path)
    img, scale = section_background(a)
    assert img.shape == (110, 120, 3) and scale == 0.1
    del a.uns["spatial"]
    img, scale = section_background(a)
    assert img is None and scale == 1.0
