"""DeepSpaCE's OLS table (stpredict.evaluate.ols) against formula fits and hand-computed R²."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from stpredict.errors import StpredictError
from stpredict.evaluate.ols import OLS_COLUMNS, ols_inputs, ols_table


# --------------------------------------------------------------------------- OLS
def _synthetic(n=400, seed=0):
    rng = np.random.default_rng(seed)
    bright = rng.uniform(120, 230, n)
    pred = rng.normal(size=n) + 0.01 * bright
    meas = 2 * pred + 0.5 * bright + rng.normal(scale=1.0, size=n)
    return meas, pred, bright


def test_ols_matches_formula_fit_and_hand_adjusted_r2():
    meas, pred, bright = _synthetic()
    n = meas.size
    const_gene = np.full(n, 3.0)
    m = pd.DataFrame({"G1": meas, "G2": const_gene})
    p = pd.DataFrame({"G1": pred, "G2": pred})
    cov = pd.DataFrame({"brightness": bright})
    tab = ols_table(m, p, cov, predictors=["brightness"])
    assert list(tab.columns) == list(OLS_COLUMNS)
    row = tab[(tab["gene"] == "G1") & (tab["unit"] == "all")].iloc[0]
    assert row["n_spots"] == n
    assert row["beta_predicted"] == pytest.approx(2.0, abs=0.15)

    df = pd.DataFrame({"y": meas, "b": bright, "p": pred})
    f2 = smf.ols("y ~ b + p", df).fit()
    f1 = smf.ols("y ~ b", df).fit()
    assert abs(row["beta_predicted"] - f2.params["p"]) < 1e-8
    assert abs(row["se_predicted"] - f2.bse["p"]) < 1e-8
    assert abs(row["p_predicted"] - f2.pvalues["p"]) < 1e-8 * max(1.0, f2.pvalues["p"])
    assert abs(row["beta_baseline"] - f1.params["b"]) < 1e-8
    assert abs(row["se_baseline"] - f1.bse["b"]) < 1e-8
    assert abs(row["p_baseline"] - f1.pvalues["b"]) < 1e-8

    def adj_r2(y, cols):
        x = np.column_stack([np.ones(y.size), *cols])
        beta = np.linalg.lstsq(x, y, rcond=None)[0]
        r2 = 1 - np.sum((y - x @ beta) ** 2) / np.sum((y - y.mean()) ** 2)
        k = len(cols)
        return 1 - (1 - r2) * (y.size - 1) / (y.size - k - 1)

    assert abs(row["adj_r2_baseline"] - adj_r2(meas, [bright])) < 1e-8
    assert abs(row["adj_r2_predicted"] - adj_r2(meas, [pred])) < 1e-8
    assert abs(row["adj_r2_both"] - adj_r2(meas, [bright, pred])) < 1e-8
    assert row["adj_r2_both"] > row["adj_r2_baseline"]
    assert row["delta_adj_r2"] == pytest.approx(row["adj_r2_both"] - row["adj_r2_baseline"])

    const_row = tab[tab["gene"] == "G2"].iloc[0]
    assert const_row["n_spots"] == n
    assert const_row[list(OLS_COLUMNS[4:])].isna().all()


def test_ols_constant_inputs_give_nan_rows_without_warnings():
    meas, pred, bright = _synthetic(n=50, seed=1)
    m = np.column_stack([meas, np.zeros(50), meas, meas])
    p = np.column_stack([pred, pred, np.ones(50), bright])  # G4: predicted == baseline
    cov = pd.DataFrame({"brightness": bright, "flat": np.full(50, 7.0)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tab = ols_table(
            m, p, cov, genes=["G1", "G2", "G3", "G4"], predictors=["brightness", "flat"]
        )
    t = tab.set_index(["gene", "predictor"])
    stats_cols = list(OLS_COLUMNS[4:])
    assert t.loc[("G1", "brightness"), stats_cols].notna().all()
    for key in [("G2", "brightness"), ("G3", "brightness"), ("G1", "flat")]:
        assert t.loc[key, stats_cols].isna().all(), key
    g4 = t.loc[("G4", "brightness")]
    assert np.isfinite(g4["adj_r2_baseline"]) and np.isnan(g4["beta_predicted"])


def test_ols_drops_nonfinite_spots_and_fits_units():
    meas, pred, bright = _synthetic(n=200, seed=2)
    bright = bright.copy()
    bright[:10] = np.nan
    unit = np.where(np.arange(200) < 100, "S1", "S2")
    cov = pd.DataFrame({"brightness": bright, "sample_id": unit})
    tab = ols_table(meas, pred, cov, genes=["G"], predictors=["brightness"], unit="sample_id")
    assert tab["unit"].tolist() == ["S1", "S2", "all"]
    assert tab["n_spots"].tolist() == [90, 100, 190]
    ok = np.isfinite(bright) & (unit == "S2")
    f = smf.ols("y ~ b + p", pd.DataFrame({"y": meas[ok], "b": bright[ok], "p": pred[ok]})).fit()
    assert abs(tab.iloc[1]["beta_predicted"] - f.params["p"]) < 1e-8


# --------------------------------------------------------------------------- ols_inputs
def _reg_adata(sample, ids, meas, pred, genes, total):
    obs = pd.DataFrame(
        {"sample_id": sample, "patient_id": f"P{sample}", "fold": "0", "total_counts": total},
        index=ids,
    )
    a = ad.AnnData(X=meas.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    a.layers["predicted"] = pred.astype(np.float32)
    return a


def _patch_table(ids, rng):
    return pd.DataFrame(
        {
            "id": ids,
            "x": rng.uniform(0, 100, len(ids)),
            "y": rng.uniform(0, 100, len(ids)),
            "pad_frac": 0.0,
            "white_frac": rng.uniform(0, 1, len(ids)),
            "mean_r": rng.uniform(0, 255, len(ids)),
            "mean_g": rng.uniform(0, 255, len(ids)),
            "mean_b": rng.uniform(0, 255, len(ids)),
            "white": False,
        }
    )


def test_ols_inputs_joins_shuffled_patch_tables():
    rng = np.random.default_rng(4)
    ids_a = [f"AAAC-{i}" for i in range(12)]
    ids_b = [str(100 + i) for i in range(8)]  # numeric-looking ids
    ma, pa = rng.normal(size=(12, 3)), rng.normal(size=(12, 3))
    mb, pb = rng.normal(size=(8, 2)), rng.normal(size=(8, 2))
    ta, tb = rng.integers(100, 5000, 12), rng.integers(100, 5000, 8)
    a = _reg_adata("A", ids_a, ma, pa, ["g1", "g2", "g3"], ta)
    b = _reg_adata("B", ids_b, mb, pb, ["g3", "g1"], tb)  # shares g1, g3 (other order)
    pt_a = _patch_table(ids_a, rng)
    pt_b = _patch_table(ids_b, rng)
    pt_b["id"] = pt_b["id"].astype(int)  # as read from a TSV without dtype
    shuffled_a = pt_a.sample(frac=1.0, random_state=0).reset_index(drop=True)
    shuffled_b = pd.concat([pt_b, _patch_table(["999"], rng)]).sample(frac=1.0, random_state=1)
    meas, pred, cov = ols_inputs([a, b], {"A": shuffled_a, "B": shuffled_b})
    assert list(meas.columns) == ["g1", "g3"]
    assert meas.shape == (20, 2) and pred.shape == (20, 2) and len(cov) == 20
    assert cov.index[0] == "A:AAAC-0" and cov.index[12] == "B:100"
    np.testing.assert_allclose(meas.loc["A:AAAC-0"].to_numpy(), ma[0, [0, 2]], rtol=1e-6)
    np.testing.assert_allclose(meas.loc["B:101", "g1"], mb[1, 1], rtol=1e-6)
    np.testing.assert_allclose(pred.loc["B:101", "g3"], pb[1, 0], rtol=1e-6)
    for i, sid in enumerate(ids_a):
        r = pt_a.iloc[i]
        row = cov.loc[f"A:{sid}"]
        assert row["mean_r"] == pytest.approx(r["mean_r"])
        assert row["mean_rgb"] == pytest.approx((r["mean_r"] + r["mean_g"] + r["mean_b"]) / 3)
        assert row["brightness"] == pytest.approx(
            0.299 * r["mean_r"] + 0.587 * r["mean_g"] + 0.114 * r["mean_b"]
        )
        assert row["white_frac"] == pytest.approx(r["white_frac"])
        assert row["log_total_umi"] == pytest.approx(np.log10(ta[i]))
    assert cov.loc["B:107", "mean_b"] == pytest.approx(pt_b.iloc[7]["mean_b"])
    assert set(cov["sample_id"]) == {"A", "B"} and cov.loc["B:100", "patient_id"] == "PB"
    tab = ols_table(meas, pred, cov, unit="sample_id")
    assert set(tab["predictor"]) == {
        "mean_rgb",
        "brightness",
        "log_total_umi",
        "mean_r",
        "mean_g",
        "mean_b",
    }
    assert len(tab) == 3 * 2 * 6


def test_ols_inputs_errors_name_the_sample():
    rng = np.random.default_rng(5)
    ids = [f"s{i}" for i in range(6)]
    a = _reg_adata(
        "SEC_7",
        ids,
        rng.normal(size=(6, 2)),
        rng.normal(size=(6, 2)),
        ["g1", "g2"],
        np.arange(1, 7),
    )
    pt = _patch_table(ids, rng).drop(index=3)
    with pytest.raises(StpredictError, match="SEC_7") as err:
        ols_inputs([a], {"SEC_7": pt})
    assert "'s3'" in str(err.value) and err.value.sample == "SEC_7"
    with pytest.raises(StpredictError, match="SEC_7"):
        ols_inputs([a], {"OTHER": _patch_table(ids, rng)})
