"""Tests of stpredict.patches.qc: thresholds, whiteness join by spot id, uns record, summary."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stpredict.errors import ConfigError, InputError
from stpredict.patches import qc as Q


def make_section(seed=0, n=12, g=1700):
    rng = np.random.default_rng(seed)
    counts = np.zeros((n, g))
    # spot i has i*150 detected genes, each with 1 or 2 counts
    for i in range(n):
        counts[i, : i * 150] = rng.integers(1, 3, i * 150)
    obs = pd.DataFrame({"sample_id": "S1"}, index=[f"BC{i:02d}-1" for i in range(n)])
    a = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=obs,
        var=pd.DataFrame(index=[f"G{j}" for j in range(g)]),
    )
    a.uns["stpredict"] = {"sample_id": "S1", "mpp": 0.5}
    return a, counts


def write_patch_table(tmp_path, ids, white):
    tsv = tmp_path / "spots.tsv"
    pd.DataFrame(
        {
            "id": ids,
            "x": 0.0,
            "y": 0.0,
            "pad_frac": 0.0,
            "white_frac": np.where(white, 0.9, 0.1),
            "mean_r": 1.0,
            "mean_g": 1.0,
            "mean_b": 1.0,
            "white": white,
        }
    ).to_csv(tsv, sep="\t", index=False)
    (tmp_path / "spots.json").write_text(
        json.dumps(
            {
                "whiteness": {
                    "percentile": 80.0,
                    "max_white_frac": 0.5,
                    "thresholds": [200, 190, 210],
                }
            }
        )
    )
    return tsv


def test_qc_flags_thresholds():
    a, counts = make_section()
    umi = counts.sum(1)
    genes = (counts > 0).sum(1)
    white = np.zeros(a.n_obs, bool)
    white[[0, 11]] = True
    df = Q.qc_flags(a, 1000, 900, white)
    assert list(df.columns) == ["pass_umi", "pass_genes", "pass_white", "keep"]
    np.testing.assert_array_equal(df["pass_umi"], umi >= 1000)
    np.testing.assert_array_equal(df["pass_genes"], genes >= 900)
    np.testing.assert_array_equal(df["pass_white"], ~white)
    np.testing.assert_array_equal(df["keep"], (umi >= 1000) & (genes >= 900) & ~white)
    assert df["pass_genes"].sum() == 12 - 6  # 6*150 = 900 passes with >=
    assert df.index.equals(a.obs_names)
    assert Q.qc_flags(a, 0, 0)["keep"].all()


def test_apply_qc_joins_patch_table_by_id(tmp_path):
    a, counts = make_section()
    white = np.zeros(a.n_obs, bool)
    white[[2, 9]] = True
    ids = list(a.obs_names)
    order = np.random.default_rng(1).permutation(a.n_obs)  # table in another order
    tsv = write_patch_table(tmp_path, [ids[i] for i in order], white[order])
    out = Q.apply_qc(a, tsv, "deepspace")
    assert "pass_white" not in a.obs  # input untouched
    np.testing.assert_array_equal(out.obs["pass_white"], ~white)
    umi, genes = counts.sum(1), (counts > 0).sum(1)
    keep = (umi >= 1000) & (genes >= 1000) & ~white
    np.testing.assert_array_equal(out.obs["keep"], keep)
    qc = out.uns["qc"]
    assert qc["min_umi"] == 1000 and qc["min_genes"] == 1000 and qc["whiteness"]
    assert qc["n_kept"] == keep.sum() and qc["n_removed"] == 12 - keep.sum()
    assert qc["removed"] == {
        "umi": int((umi < 1000).sum()),
        "genes": int((genes < 1000).sum()),
        "white": 2,
    }
    assert qc["whiteness_params"]["thresholds"] == [200, 190, 210]
    out.write_h5ad(tmp_path / "qc.h5ad")  # the record must be serialisable
    back = ad.read_h5ad(tmp_path / "qc.h5ad")
    assert back.obs["keep"].dtype == bool and int(back.uns["qc"]["removed"]["white"]) == 2

    row = Q.qc_summary(out)
    assert row["sample_id"] == "S1" and row["n_spots"] == 12 and row["n_kept"] == keep.sum()
    assert row["removed_white"] == 2 and row["mpp"] == 0.5
    assert row["median_umi"] == pytest.approx(np.median(umi))
    assert row["median_genes"] == pytest.approx(np.median(genes))
    assert row["median_umi_kept"] == pytest.approx(np.median(umi[keep]))
    table = Q.qc_table(out)
    assert list(table["barcode"]) == ids and table["keep"].sum() == keep.sum()


def test_apply_qc_errors_and_config(tmp_path):
    a, _ = make_section()
    tsv = write_patch_table(tmp_path, list(a.obs_names)[:-1], np.zeros(11, bool))
    with pytest.raises(InputError, match=r"1 spot\(s\).*BC11-1"):
        Q.apply_qc(a, tsv, "deepspace")
    with pytest.raises(ConfigError, match="patch table"):
        Q.apply_qc(a, None, {"preset": "deepspace"})
    out = Q.apply_qc(a, None, {"preset": "deepspace", "whiteness": False, "min_umi": 10})
    assert out.uns["qc"]["min_umi"] == 10 and out.obs["pass_white"].all()
    with pytest.raises(ConfigError, match="unknown QC preset"):
        Q.QCConfig.from_config("nope")
    with pytest.raises(ConfigError, match="unknown QC setting"):
        Q.QCConfig.from_config({"min_counts": 3})
    assert Q.QC_PRESETS["deepspace"] == Q.QCConfig(1000, 1000, True)
