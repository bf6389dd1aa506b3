"""Self-contained result AnnData (stpredict.outputs): held-out scores in var, cluster columns on
one category list, the one units key and the checks of what a result file must carry."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from stpredict.outputs import (
    SCORE_COLUMNS,
    attach_gene_ids,
    categorical_clusters,
    check_result,
    cluster_categories,
    finish_result,
    held_out_scores,
)
from stpredict.vocab import SMOOTHNESS_NOTE, SMOOTHNESS_NOTE_KEY, UNITS_KEY, units_of


def _result(n=60, genes=("A", "B", "C", "D"), seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, len(genes)))
    p = np.column_stack(
        [
            m[:, 0] + 0.3 * rng.normal(size=n),  # well predicted
            -m[:, 1] + 2.0 * rng.normal(size=n),  # weakly, negatively
            rng.normal(size=n),  # unrelated
            np.full(n, 1.5),  # a constant prediction: no correlation
        ]
    )
    a = ad.AnnData(X=m.astype(np.float32), var=pd.DataFrame(index=list(genes)))
    a.layers["predicted"] = p.astype(np.float32)
    a.obs["sample_id"] = "S1"
    a.obs["qc_failed"] = np.arange(n) >= n - 5
    a.X[n - 5 :] = np.nan  # QC-failed spots: predicted, not measured
    a.layers["predicted"][n - 5 :, 0] = 1e6  # a wild prediction that must not count
    a.obsm["spatial"] = rng.uniform(0, 500, (n, 2))
    return a


def test_held_out_scores_are_pearson_r_its_p_and_bh_q_over_the_scored_spots():
    a = _result()
    scores = held_out_scores(a)
    assert list(scores.columns) == list(SCORE_COLUMNS)
    keep = ~a.obs["qc_failed"].to_numpy()
    for j, g in enumerate(a.var_names[:3]):
        r, p = stats.pearsonr(a.X[keep, j], a.layers["predicted"][keep, j])
        assert scores.loc[g, "held_out_r"] == pytest.approx(r, abs=1e-6)
        assert scores.loc[g, "held_out_p"] == pytest.approx(p, rel=1e-4)
        assert scores.loc[g, "held_out_n_spots"] == keep.sum()
    assert scores.loc["A", "held_out_r"] > 0.9 and scores.loc["B", "held_out_r"] < 0
    assert np.isnan(scores.loc["D", ["held_out_r", "held_out_p", "held_out_q_bh"]]).all()
    q = multipletests(scores["held_out_p"].iloc[:3], method="fdr_bh")[1]
    np.testing.assert_allclose(scores["held_out_q_bh"].iloc[:3], q)


def test_cluster_columns_share_one_category_list_and_colours():
    assert cluster_categories(["10", "2", ""], ["1", "x"], ["2"]) == ["1", "2", "10", "x"]
    a = ad.AnnData(X=np.zeros((4, 2), np.float32))
    a.obs["cluster"] = ["3", "1", "", "3"]
    a.obs["cluster_true"] = ["3", "1", "1", "3"]
    a.obs["cluster_pred"] = ["1", "1", "1", "1"]
    cats = cluster_categories(["1", "2", "3"], a.obs["cluster"])
    categorical_clusters(a, cats)
    for col in ("cluster", "cluster_true", "cluster_pred"):
        assert isinstance(a.obs[col].dtype, pd.CategoricalDtype), col
        assert list(a.obs[col].cat.categories) == ["1", "2", "3"]  # "2" is absent but listed
        assert len(a.uns[f"{col}_colors"]) == 3
    assert a.obs["cluster"].isna().tolist() == [False, False, True, False]  # "" is missing
    np.testing.assert_array_equal(a.uns["cluster_true_colors"], a.uns["cluster_pred_colors"])
    b = a.copy()
    b.obs["cluster_pred"] = ["9", "1", "1", "1"]
    with pytest.raises(ValueError, match="not among the categories"):
        categorical_clusters(b, cats)


def test_check_result_names_what_a_file_lacks():
    a = _result()
    a.uns["stpredict"] = {"task": "regression", "target_transform": {"name": "log1p", "units": "u"}}
    problems = check_result(a)
    assert any("uns['spatial'] has no entry 'S1'" in p for p in problems)
    assert any("gene_ids" in p for p in problems)
    assert any("second key" in p for p in problems)
    a.uns["spatial"] = {
        "S1": {
            "images": {"lowres": np.zeros((10, 10, 3), np.uint8)},
            "scalefactors": {"tissue_lowres_scalef": 0.1, "spot_diameter_fullres": 30.0},
            "metadata": {},
        }
    }
    sec_var = pd.DataFrame({"gene_ids": ["ENSG1", "ENSG2", "ENSG3"]}, index=["A", "B", "C"])
    attach_gene_ids(a, [sec_var])
    assert a.var["gene_ids"].tolist() == ["ENSG1", "ENSG2", "ENSG3", ""]  # D: not in the section
    finish_result(a, "log1p units")
    assert check_result(a) == []
    assert units_of(a) == "log1p units" and a.uns["stpredict"][UNITS_KEY] == "log1p units"
    assert "units" not in a.uns["stpredict"]["target_transform"]
    assert a.uns["stpredict"][SMOOTHNESS_NOTE_KEY] == SMOOTHNESS_NOTE
    del a.uns["spatial"]["S1"]["scalefactors"]["spot_diameter_fullres"]
    assert check_result(a) == ["uns['spatial']['S1'] lacks spot_diameter_fullres"]
