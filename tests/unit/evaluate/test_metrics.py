"""Tests of stpredict.evaluate.metrics against independent computations."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from stpredict.errors import InputError
from stpredict.evaluate.metrics import (
    auroc_extremes,
    gene_metrics,
    pearson_columns,
    pooled_metrics,
    score_units,
    smooth_measurements,
    summarise,
    summarise_strata,
    table1,
)


# --------------------------------------------------------------------------- smoothing
def test_smooth_st_square_grid_by_hand():
    # 3x3 grid with the (2, 2) corner missing; values = 10*row + col
    coords = [(r, c) for r in range(3) for c in range(3) if (r, c) != (2, 2)]
    rows = np.array([r for r, _ in coords])
    cols = np.array([c for _, c in coords])
    grid = np.full((3, 3), np.nan)
    for r, c in coords:
        grid[r, c] = 10 * r + c
    x = np.array([grid[r, c] for r, c in coords])
    got = smooth_measurements(x, rows, cols, "st")[:, 0]
    for i, (r, c) in enumerate(coords):
        win = grid[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
        assert got[i] == pytest.approx(np.nanmean(win))
    # explicit: corner (0,0) averages 4 spots; centre averages 8 (corner missing)
    assert got[0] == pytest.approx((0 + 1 + 10 + 11) / 4)
    assert got[coords.index((1, 1))] == pytest.approx((0 + 1 + 2 + 10 + 11 + 12 + 20 + 21) / 8)


def test_smooth_visium_hex_by_hand():
    # centre (2, 2) with its six hex neighbours, plus a far spot (0, 6) with none
    coords = [(2, 2), (2, 0), (2, 4), (1, 1), (1, 3), (3, 1), (3, 3), (0, 6)]
    rows = np.array([r for r, _ in coords])
    cols = np.array([c for _, c in coords])
    x = np.column_stack([np.arange(8, dtype=float), np.arange(8, dtype=float) ** 2])
    got = smooth_measurements(x, rows, cols, "visium")
    np.testing.assert_allclose(got[0], x[:7].mean(axis=0))
    np.testing.assert_allclose(got[7], x[7])  # isolated: itself only
    # (2, 0): neighbours present are (1, 1) and (3, 1) and the centre is 2 cols away
    np.testing.assert_allclose(got[1], x[[0, 1, 3, 5]].mean(axis=0))
    # (1, 3): neighbours (2, 2), (2, 4), (1, 1)
    np.testing.assert_allclose(got[4], x[[0, 2, 3, 4]].mean(axis=0))


def test_smooth_rejects_unknown_platform():
    with pytest.raises(ValueError):
        smooth_measurements(np.zeros((1, 1)), [0], [0], "hd")


# --------------------------------------------------------------------------- gene metrics
def test_gene_metrics_match_scipy_sklearn():
    rng = np.random.default_rng(0)
    m = rng.poisson(3.0, size=(40, 3)).astype(float)  # ties at quartiles
    p = m + rng.normal(0, 2.0, size=m.shape)
    df = gene_metrics(m, p, ["a", "b", "c"])
    for j, g in enumerate("abc"):
        assert df.loc[g, "pearson"] == pytest.approx(stats.pearsonr(m[:, j], p[:, j])[0])
        assert df.loc[g, "spearman"] == pytest.approx(stats.spearmanr(m[:, j], p[:, j])[0])
        assert df.loc[g, "rmse"] == pytest.approx(np.sqrt(np.mean((m[:, j] - p[:, j]) ** 2)))
        q25, q75 = np.quantile(m[:, j], [0.25, 0.75])
        lo = m[:, j] <= q25
        hi = (m[:, j] >= q75) & ~lo
        keep = lo | hi
        ref = roc_auc_score(hi[keep].astype(int), p[keep, j])
        assert df.loc[g, "auroc"] == pytest.approx(ref)
        assert df.loc[g, "n_spots"] == 40


def test_auroc_ignores_middle_spots_and_is_deterministic_on_ties():
    m = np.array([0.0, 0, 0, 0, 1, 2, 3, 4])  # q25 = 0 (tied), q75 = 2.5
    p = np.array([0.1, 0.2, 0.3, 0.4, 100, -100, 5, 6])  # middle spots would break a perfect AUC
    assert auroc_extremes(m, p) == pytest.approx(1.0)
    # q25 == q75: positives are the spots strictly above
    m2 = np.array([0.0, 0, 0, 0, 0, 0, 0, 2])
    assert np.quantile(m2, 0.25) == np.quantile(m2, 0.75)
    p2 = np.array([1.0, 2, 3, 4, 5, 6, 9, 7])
    ref = roc_auc_score((m2 > 0).astype(int), p2)
    assert auroc_extremes(m2, p2) == pytest.approx(ref)


def test_constant_gene_nan_without_warnings():
    m = np.column_stack([np.ones(10), np.arange(10.0), np.arange(10.0)])
    p = np.column_stack([np.arange(10.0), np.full(10, 2.0), np.arange(10.0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = gene_metrics(m, p)
        few = gene_metrics(m[:2], p[:2])
    assert df.loc[0, ["pearson", "spearman", "auroc"]].isna().all()
    assert df.loc[1, ["pearson", "spearman", "auroc"]].isna().all()
    assert df.loc[0, "rmse"] == pytest.approx(np.sqrt(np.mean((1 - np.arange(10.0)) ** 2)))
    assert df.loc[2, "pearson"] == pytest.approx(1.0)
    assert df.loc[2, "auroc"] == pytest.approx(1.0)
    assert few[["pearson", "spearman", "auroc"]].isna().all().all()
    assert few["rmse"].notna().all()


# --------------------------------------------------------------------------- AnnData pipeline
def _section(sample, patient, meas, pred, n_side=6, ann=None):
    rows, cols = np.divmod(np.arange(n_side * n_side), n_side)
    obs = pd.DataFrame(
        {
            "sample_id": sample,
            "patient_id": patient,
            "fold": 0,
            "array_row": rows,
            "array_col": cols,
            "annotation": ann if ann is not None else [""] * len(rows),
        },
        index=[f"{sample}_{i}" for i in range(len(rows))],
    )
    a = ad.AnnData(X=meas, obs=obs, var=pd.DataFrame(index=["perfect", "noisy", "flat"]))
    a.layers["predicted"] = pred
    a.obsm["spatial"] = np.column_stack([cols * 10.0, rows * 10.0])
    a.uns["stpredict"] = {"target_transform": {"name": "log1p"}}
    return a


def _dataset():
    rng = np.random.default_rng(1)
    sections = []
    for k, patient in enumerate(["P1", "P1", "P2", "P3"]):
        n = 36
        perfect = rng.normal(size=n)
        noisy = rng.normal(size=n)
        flat = rng.normal(size=n) if patient != "P2" else np.full(n, 3.0)
        meas = np.column_stack([perfect, noisy, flat])
        pred = np.column_stack([perfect, noisy + rng.normal(0, 3, n), flat + rng.normal(0, 1, n)])
        ann = ["tumor"] * 18 + ["non"] * 12 + [""] * 6 if k == 0 else None
        sections.append(_section(f"S{k}", patient, meas, pred, ann=ann))
    return sections


def test_score_units_rows_and_values():
    adatas = _dataset()
    per = score_units(adatas, "st", unit="patient_id")
    assert set(per["unit"]) == {"P1", "P2", "P3"}
    assert set(per["target"]) == {"raw", "smoothed"}
    # P1 has annotations: tumor 18 and normal 12 spots (both >= 10)
    p1 = per[(per["unit"] == "P1") & (per["target"] == "raw")]
    assert set(p1["stratum"]) == {"all", "tumor", "normal"}
    assert set(per.loc[per["unit"] != "P1", "stratum"]) == {"all"}
    assert p1.loc[p1["stratum"] == "all", "n_spots"].tolist() == [72, 72, 72]
    assert p1.loc[p1["stratum"] == "tumor", "n_spots"].tolist() == [18, 18, 18]
    # values against an independent pearson over the pooled P1 spots
    meas = np.vstack([a.X for a in adatas[:2]])
    pred = np.vstack([a.layers["predicted"] for a in adatas[:2]])
    row = p1[(p1["stratum"] == "all") & (p1["gene"] == "noisy")].iloc[0]
    assert row["pearson"] == pytest.approx(stats.pearsonr(meas[:, 1], pred[:, 1])[0])
    # smoothed target: per section smoothing then pooled
    sm = np.vstack(
        [smooth_measurements(a.X, a.obs["array_row"], a.obs["array_col"], "st") for a in adatas[:2]]
    )
    srow = per[
        (per["unit"] == "P1")
        & (per["target"] == "smoothed")
        & (per["stratum"] == "all")
        & (per["gene"] == "noisy")
    ].iloc[0]
    assert srow["pearson"] == pytest.approx(stats.pearsonr(sm[:, 1], pred[:, 1])[0])
    # perfectly predicted gene
    perfect = per[(per["gene"] == "perfect") & (per["target"] == "raw")]
    np.testing.assert_allclose(perfect["pearson"], 1.0)
    np.testing.assert_allclose(perfect["auroc"], 1.0)
    # constant gene in P2 is NaN there
    flat_p2 = per[(per["gene"] == "flat") & (per["unit"] == "P2") & (per["target"] == "raw")]
    assert flat_p2["pearson"].isna().all()
    assert (per["transform"] == "log1p").all()
    by_sample = score_units(adatas, "st", unit="sample_id", strata=False)
    assert set(by_sample["unit"]) == {"S0", "S1", "S2", "S3"}
    assert set(by_sample["stratum"]) == {"all"}


def test_summarise_against_independent_tests():
    adatas = _dataset()
    per = score_units(adatas, "st")
    pooled = pooled_metrics(adatas, platform="st")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summ = summarise(per, pooled)
    raw = summ[summ["target"] == "raw"].set_index("gene")
    # flat gene: P2's r is undefined: a trial that is not positive, reported, not dropped
    assert raw.loc["flat", "n_units"] == 3
    assert raw.loc["flat", "n_undefined"] == 1
    assert raw.loc["perfect", "n_units"] == 3
    assert raw.loc["perfect", "n_undefined"] == 0
    assert raw.loc["perfect", "n_positive"] == 3
    assert raw[["n_units", "n_positive", "p_binom", "p_holm", "q_bh"]].notna().all().all()
    # independent recomputation
    sub = per[(per["target"] == "raw") & (per["stratum"] == "all")]
    ps = []
    for g in ["perfect", "noisy", "flat"]:
        r_all = sub.loc[sub["gene"] == g, "pearson"].to_numpy()
        r = r_all[np.isfinite(r_all)]
        k = int((r > 0).sum())
        assert raw.loc[g, "n_positive"] == k
        assert raw.loc[g, "median_pearson"] == pytest.approx(np.median(r))
        p = stats.binomtest(k, len(r_all), 0.5, alternative="greater").pvalue
        assert raw.loc[g, "p_binom"] == pytest.approx(p)
        ps.append(p)
    np.testing.assert_allclose(
        raw.loc[["perfect", "noisy", "flat"], "p_holm"], multipletests(ps, method="holm")[1]
    )
    np.testing.assert_allclose(
        raw.loc[["perfect", "noisy", "flat"], "q_bh"], multipletests(ps, method="fdr_bh")[1]
    )
    assert (raw["significant"] == (raw["p_holm"] < 0.05)).all()
    # pooled (HEST) pearson over all spots
    meas = np.vstack([a.X for a in adatas])
    pred = np.vstack([a.layers["predicted"] for a in adatas])
    assert raw.loc["noisy", "pooled_pearson"] == pytest.approx(
        stats.pearsonr(meas[:, 1], pred[:, 1])[0]
    )
    assert set(summ["target"]) == {"raw", "smoothed"}


def test_summarise_undefined_units_are_trials_that_are_not_positive():
    per = pd.DataFrame(
        {
            "gene": ["a", "a", "b", "b", "c", "c"],
            "unit": ["u1", "u2"] * 3,
            "target": "raw",
            "stratum": "all",
            "pearson": [0.5, 0.4, np.nan, np.nan, -0.2, 0.3],
        }
    )
    summ = summarise(per).set_index("gene")
    # b: both units undefined: 0 of 2 positive (p = 1), not a dropped gene
    assert summ.loc["b", "n_units"] == 2 and summ.loc["b", "n_undefined"] == 2
    assert summ.loc["b", "n_positive"] == 0 and np.isnan(summ.loc["b", "median_pearson"])
    assert not summ.loc["b", "significant"]
    ps = [stats.binomtest(k, 2, alternative="greater").pvalue for k in (2, 0, 1)]
    np.testing.assert_allclose(summ.loc[["a", "b", "c"], "p_binom"], ps)
    np.testing.assert_allclose(
        summ.loc[["a", "b", "c"], "p_holm"], multipletests(ps, method="holm")[1]
    )
    np.testing.assert_allclose(
        summ.loc[["a", "b", "c"], "q_bh"], multipletests(ps, method="fdr_bh")[1]
    )
    assert summ.loc["a", "n_positive"] == 2 and summ.loc["c", "n_positive"] == 1


def test_summarise_gene_absent_from_every_unit_gets_nan_p():
    per = pd.DataFrame(
        {
            "gene": ["a", "a"],
            "unit": ["u1", "u2"],
            "target": "raw",
            "stratum": "tumor",
            "pearson": [0.5, 0.4],
        }
    )
    summ = summarise(per)
    assert summ.empty  # no stratum-"all" rows: nothing scored


def test_headline_significance_is_holm_not_bh():
    """ST-Net counts genes by Holm; BH would call more genes significant on the same p values."""
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(40)]
    rows = []
    for i, g in enumerate(genes):
        # 12 genes positive in all 16 units, 6 in 14 of 16, the rest at chance
        n_pos = 16 if i < 12 else 14 if i < 18 else int(rng.integers(5, 11))
        for u in range(16):
            rows.append(
                {
                    "gene": g,
                    "unit": f"u{u}",
                    "target": "raw",
                    "stratum": "all",
                    "pearson": 0.3 if u < n_pos else -0.1,
                }
            )
    summ = summarise(pd.DataFrame(rows))
    holm = multipletests(summ["p_binom"], method="holm")[1] < 0.05
    bh = multipletests(summ["p_binom"], method="fdr_bh")[1] < 0.05
    assert holm.sum() < bh.sum()  # the two corrections disagree on this table
    assert summ["significant"].sum() == holm.sum()
    assert (summ["significant"].to_numpy() == holm).all()
    loose = summarise(pd.DataFrame(rows), alpha=0.5)
    assert loose["significant"].sum() >= summ["significant"].sum()


def test_summarise_strata_counts_tumour_and_normal_units():
    adatas = _dataset()
    per = score_units(adatas, "st")
    strata = summarise_strata(per)
    assert set(strata["stratum"]) <= {"tumor", "normal"} and len(strata)
    for (stratum, target, gene), g in strata.groupby(["stratum", "target", "gene"]):
        sub = per[(per.stratum == stratum) & (per.target == target) & (per.gene == gene)]
        assert g["n_units"].item() == len(sub)
        assert g["n_positive"].item() == int((sub["pearson"] > 0).sum())
    empty = summarise_strata(per[per.stratum == "all"])
    assert empty.empty and "significant" in empty.columns


def test_table1_order_and_columns():
    summ = pd.DataFrame(
        {
            "target": ["raw"] * 3 + ["smoothed"] * 3,
            "gene": ["a", "b", "c"] * 2,
            "median_pearson": [0.2, 0.5, 0.9, 0.3, 0.6, 0.95],
            "n_positive": [5, 5, 3, 5, 5, 4],
            "n_units": 5,
            "p_holm": [0.1, 0.1, 0.5, 0.1, 0.1, 0.3],
        }
    )
    tab = table1(summ, n=2)
    assert list(tab.columns) == [
        "gene",
        "median_r",
        "n_consistent",
        "n_units",
        "p_holm",
        "median_r_smoothed",
    ]
    # ST-Net's Table 1 ranks by median r: c (0.9, only 3 consistent units) comes first
    assert tab["gene"].tolist() == ["c", "b"]
    assert tab["median_r_smoothed"].tolist() == [0.95, 0.6]


def test_units_with_fold_specific_genes():
    """Folds fit their own gene sets: each unit is scored on its genes, pooling on the shared ones."""
    secs = _dataset()
    secs[3] = secs[3][:, ["perfect", "noisy"]].copy()  # patient P3's fold selected two genes
    per = score_units(secs, "st", unit="patient_id", strata=False)
    p3 = per[(per.unit == "P3") & (per.target == "raw")]
    assert sorted(p3.gene) == ["noisy", "perfect"]
    assert set(per[per.unit == "P1"].gene) == {"perfect", "noisy", "flat"}
    pooled = pooled_metrics(secs)
    assert sorted(pooled.gene.unique()) == ["noisy", "perfect"]
    bad = _dataset()
    bad[1] = bad[1][:, ["perfect", "noisy"]].copy()  # two sections of P1 disagree: refused
    with pytest.raises(InputError, match="unit .P1."):
        score_units(bad, "st", unit="patient_id")


def test_score_folds_mean_and_sd_over_folds_of_a_section():
    from stpredict.evaluate.metrics import score_folds

    adatas = _dataset()[:1]
    a = adatas[0]
    a.obs["fold"] = [str(i % 3) for i in range(a.n_obs)]
    per, folds = score_folds(adatas, {"S0": "st"})
    assert set(per["fold"]) == {"0", "1", "2"} and set(per["sample_id"]) == {"S0"}
    row = folds[(folds.target == "raw") & (folds.gene == "noisy")].iloc[0]
    rs = [
        stats.pearsonr(a.X[a.obs["fold"] == f, 1], a.layers["predicted"][a.obs["fold"] == f, 1])[0]
        for f in "012"
    ]
    assert row["n_folds"] == 3
    assert row["mean_pearson"] == pytest.approx(np.mean(rs))
    assert row["sd_pearson"] == pytest.approx(np.std(rs, ddof=1))


def test_smoothed_layer_is_used_when_present():
    a = _dataset()[0]
    a.layers["measured_smoothed"] = a.layers[
        "predicted"
    ].copy()  # a smoothing that is the prediction
    per = score_units([a], "st", unit="sample_id", strata=False)
    sm = per[per.target == "smoothed"]
    assert np.allclose(sm["pearson"], 1.0)


# --------------------------------------------------------------------------- the one correlation
def test_pearson_columns_nan_convention():
    x = np.arange(10.0)
    r = pearson_columns(np.stack([x, -x, np.ones(10)], 1), np.stack([x, x, x], 1))
    np.testing.assert_allclose(r[:2], [1.0, -1.0])
    assert np.isnan(r[2])  # a constant column is undefined, never 0
    # only the finite pairs count; fewer than 3 of them: NaN
    a = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    b = np.array([2.0, 4.0, 6.0, np.inf, 10.0])
    assert pearson_columns(a, b)[0] == pytest.approx(1.0)
    assert np.isnan(pearson_columns(a[:3], b[:3])[0])
    assert np.isnan(pearson_columns([1.0, 2.0], [2.0, 1.0])[0])


def test_pearson_columns_is_the_per_gene_pearson_of_the_metrics():
    rng = np.random.default_rng(3)
    m = rng.normal(size=(40, 6))
    p = m + rng.normal(size=(40, 6))
    m[:, 4] = 2.0  # constant gene
    p[:5, 5] = np.nan
    per_gene = gene_metrics(m, p)["pearson"].to_numpy()
    r = pearson_columns(m, p)
    np.testing.assert_array_equal(np.isnan(r), np.isnan(per_gene))
    np.testing.assert_array_equal(r[~np.isnan(r)], per_gene[~np.isnan(per_gene)])
    ok = np.isfinite(p[:, 5])
    assert r[5] == pytest.approx(stats.pearsonr(m[ok, 5], p[ok, 5])[0], abs=1e-15)
