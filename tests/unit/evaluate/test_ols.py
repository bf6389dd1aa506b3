"""Tests of stpredict.evaluate.ols against hand-computed values and independent fits."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from sklearn.metrics import (
    classification_report,
    cohen_kappa_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from stpredict.errors import StpredictError
from stpredict.evaluate.metrics import (
    CLUSTER_COLUMNS,
    cluster_metrics,
    cluster_overview,
    confusion_table,
    score_cluster_units,
)
from stpredict.evaluate.ols import OLS_COLUMNS, ols_inputs, ols_table


# --------------------------------------------------------------------------- cluster fixtures
def _onehotish(labels, classes, rng, strength=2.0):
    """Probabilities peaked on ``labels`` (softmax of noise + strength at the given label)."""
    k = len(classes)
    logits = rng.normal(size=(len(labels), k))
    for i, lab in enumerate(labels):
        logits[i, classes.index(lab)] += strength
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


# Hand example: 3 classes, 8 spots; probabilities chosen so the arg-max is y_pred below.
HAND_CLASSES = ["a", "b", "c"]
HAND_TRUE = ["a", "a", "a", "b", "b", "c", "c", "c"]
HAND_PRED = ["a", "a", "b", "b", "c", "c", "c", "a"]
HAND_PROBA = np.array(
    [
        [0.7, 0.2, 0.1],  # a -> a
        [0.6, 0.3, 0.1],  # a -> a
        [0.3, 0.5, 0.2],  # a -> b
        [0.1, 0.8, 0.1],  # b -> b
        [0.2, 0.35, 0.45],  # b -> c
        [0.1, 0.1, 0.8],  # c -> c
        [0.2, 0.2, 0.6],  # c -> c
        [0.5, 0.1, 0.4],  # c -> a
    ]
)


def test_cluster_metrics_hand_example():
    df = cluster_metrics(HAND_TRUE, HAND_PROBA, HAND_CLASSES).set_index("class")
    assert list(df.reset_index().columns) == list(CLUSTER_COLUMNS)
    assert list(df.index) == ["a", "b", "c", "micro", "macro", "weighted"]
    # a: TP 2, predicted 3 (2 a + 1 c), true 3 -> P 2/3, R 2/3
    # b: TP 1, predicted 2, true 2 -> P 1/2, R 1/2
    # c: TP 2, predicted 3, true 3 -> P 2/3, R 2/3
    exp_p = {"a": 2 / 3, "b": 1 / 2, "c": 2 / 3}
    for c, v in exp_p.items():
        assert df.loc[c, "precision"] == pytest.approx(v)
        assert df.loc[c, "recall"] == pytest.approx(v)
        assert df.loc[c, "f1"] == pytest.approx(v)
    assert df.loc[["a", "b", "c"], "support"].tolist() == [3, 2, 3]
    assert df.loc[["a", "b", "c"], "n_pred"].tolist() == [3, 2, 3]
    # micro P = R = accuracy = 5/8
    assert df.loc["micro", "precision"] == pytest.approx(5 / 8)
    assert df.loc["micro", "recall"] == pytest.approx(5 / 8)
    assert df.loc["macro", "f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert df.loc["weighted", "f1"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2 + 3 * 2 / 3) / 8)
    assert df.loc["macro", "support"] == 8 and df.loc["macro", "n_pred"] == 8
    # AUROC of class b by hand: positives (b) scores 0.8, 0.35; negatives 0.2,0.3,0.5,0.1,0.2,0.1
    # pairs won: 0.8 beats 6; 0.35 beats 5 (0.2,0.3,0.1,0.2,0.1) -> 11/12
    assert df.loc["b", "auroc"] == pytest.approx(11 / 12)
    ov = cluster_overview(HAND_TRUE, HAND_PROBA, HAND_CLASSES)
    assert ov["accuracy"] == pytest.approx(5 / 8)
    assert ov["chance_accuracy"] == pytest.approx(3 / 8)
    assert ov["majority_class"] == "a"  # a and c tie at 3; the first in sorted order
    assert ov["kappa"] == pytest.approx(cohen_kappa_score(HAND_TRUE, HAND_PRED))
    # kappa by hand: p_o = 5/8, p_e = (3*3 + 2*2 + 3*3)/64 = 22/64
    assert ov["kappa"] == pytest.approx((5 / 8 - 22 / 64) / (1 - 22 / 64))
    assert ov["n_spots"] == 8 and ov["n_outside"] == 0 and ov["n_classes_true"] == 3


def test_cluster_metrics_matches_sklearn_report_and_auroc():
    rng = np.random.default_rng(0)
    classes = ["1", "2", "3", "4"]
    y = rng.choice(classes, size=300, p=[0.4, 0.3, 0.2, 0.1]).tolist()
    proba = _onehotish(y, classes, rng, strength=1.0)
    y_pred = np.asarray(classes)[proba.argmax(1)]
    rep = classification_report(y, y_pred, labels=classes, output_dict=True, zero_division=0)
    df = cluster_metrics(y, proba, classes).set_index("class")
    for c in classes:
        assert df.loc[c, "precision"] == pytest.approx(rep[c]["precision"])
        assert df.loc[c, "recall"] == pytest.approx(rep[c]["recall"])
        assert df.loc[c, "f1"] == pytest.approx(rep[c]["f1-score"])
        assert df.loc[c, "support"] == rep[c]["support"]
    for a in ("macro", "weighted"):
        assert df.loc[a, "f1"] == pytest.approx(rep[f"{a} avg"]["f1-score"])
        assert df.loc[a, "precision"] == pytest.approx(rep[f"{a} avg"]["precision"])
    assert df.loc["micro", "f1"] == pytest.approx(rep["accuracy"])
    assert df.loc["macro", "auroc"] == pytest.approx(
        roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes)
    )
    assert df.loc["weighted", "auroc"] == pytest.approx(
        roc_auc_score(y, proba, multi_class="ovr", average="weighted", labels=classes)
    )
    ind = (np.asarray(y)[:, None] == np.asarray(classes)[None, :]).astype(int)
    assert df.loc["micro", "auroc"] == pytest.approx(roc_auc_score(ind, proba, average="micro"))
    for j, c in enumerate(classes):
        assert df.loc[c, "auroc"] == pytest.approx(roc_auc_score(ind[:, j], proba[:, j]))


def test_class_absent_from_truth_gives_nan_auroc_and_is_not_averaged():
    rng = np.random.default_rng(1)
    classes = ["1", "3", "7"]
    y = rng.choice(["1", "3"], size=60).tolist()  # "7" never true
    proba = _onehotish(y, classes, rng, strength=1.0)
    proba[:5] = [0.1, 0.1, 0.8]  # a few spots predicted "7"
    y_pred = np.asarray(classes)[proba.argmax(1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = cluster_metrics(y, proba, classes).set_index("class")
    assert np.isnan(df.loc["7", "auroc"])
    assert df.loc["7", "support"] == 0 and df.loc["7", "n_pred"] >= 5
    assert df.loc["7", "precision"] == 0.0  # all its predictions are wrong
    assert df.loc["7", "recall"] == 0.0  # zero_division=0
    exp = np.mean([roc_auc_score(np.asarray(y) == c, proba[:, j]) for j, c in enumerate(classes)
                   if c != "7"])
    assert df.loc["macro", "auroc"] == pytest.approx(exp)
    # macro F1 over active classes = sklearn's default labels (union of true and predicted)
    f1 = precision_recall_fscore_support(y, y_pred, average="macro", zero_division=0)[2]
    assert df.loc["macro", "f1"] == pytest.approx(f1)

    # a class neither true nor predicted: NaN metrics, out of every average
    proba2 = _onehotish(y, classes, rng, strength=5.0)
    proba2[:, 2] = 0.0
    proba2 /= proba2.sum(1, keepdims=True)
    df2 = cluster_metrics(y, proba2, classes).set_index("class")
    assert df2.loc["7", ["precision", "recall", "f1", "auroc"]].isna().all()
    y_pred2 = np.asarray(classes)[proba2.argmax(1)]
    assert df2.loc["macro", "f1"] == pytest.approx(
        precision_recall_fscore_support(y, y_pred2, average="macro", zero_division=0)[2]
    )


def test_class_present_everywhere_gives_nan_auroc():
    y = ["2"] * 10
    proba = np.tile([0.2, 0.8], (10, 1))
    df = cluster_metrics(y, proba, ["1", "2"]).set_index("class")
    assert df.loc[["1", "2", "macro", "weighted"], "auroc"].isna().all()
    # micro pools the indicator matrix: class-2 column (all 1, score 0.8) vs class-1 (0, 0.2)
    assert df.loc["micro", "auroc"] == 1.0
    ov = cluster_overview(y, proba, ["1", "2"])
    assert ov["accuracy"] == 1.0 and np.isnan(ov["kappa"])


def test_confusion_table_hand_example_and_normalize():
    tab = confusion_table(HAND_TRUE, HAND_PRED, HAND_CLASSES)
    exp = np.array([[2, 1, 0], [0, 1, 1], [1, 0, 2]])
    np.testing.assert_array_equal(tab.to_numpy(), exp)
    assert tab.to_numpy().sum() == len(HAND_TRUE)
    assert tab.index.name == "true" and tab.columns.name == "predicted"
    assert list(tab.index) == HAND_CLASSES and list(tab.columns) == HAND_CLASSES
    norm = confusion_table(HAND_TRUE, HAND_PRED, HAND_CLASSES + ["d"], normalize=True)
    np.testing.assert_allclose(norm.loc[HAND_CLASSES, HAND_CLASSES].to_numpy(),
                               exp / exp.sum(1, keepdims=True))
    assert norm.loc["d"].isna().all()


def test_gapped_string_labels_and_integer_labels():
    classes = ["1", "3", "7"]
    y_int = [1, 1, 3, 7, 7, 3]
    proba = np.array(
        [[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1],
         [0.1, 0.1, 0.8], [0.2, 0.2, 0.6], [0.7, 0.2, 0.1]]
    )
    df = cluster_metrics(y_int, proba, classes).set_index("class")
    assert list(df.index[:3]) == classes
    assert df.loc["7", "recall"] == 1.0 and df.loc["1", "recall"] == 0.5
    tab = confusion_table([str(v) for v in y_int], ["1", "3", "3", "7", "7", "1"], classes)
    assert tab.loc["3", "1"] == 1 and tab.loc["1", "3"] == 1 and tab.to_numpy().sum() == 6


def _cluster_adata(sample, patient, y_true, proba, classes):
    n = len(y_true)
    obs = pd.DataFrame(
        {"sample_id": sample, "patient_id": patient, "fold": "0",
         "cluster_true": list(y_true)},
        index=[f"s{i}" for i in range(n)],
    )
    lut = {c: j for j, c in enumerate(classes)}
    x = np.zeros((n, len(classes)), np.float32)
    for i, c in enumerate(y_true):
        if c in lut:
            x[i, lut[c]] = 1
    a = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"cluster_{c}" for c in classes]))
    a.layers["predicted"] = proba.astype(np.float32)
    a.obs["cluster_pred"] = np.asarray(classes)[proba.argmax(1)]
    a.uns["stpredict"] = {"classes": list(classes)}
    return a


def test_score_cluster_units_pooled_and_missing_classes():
    rng = np.random.default_rng(2)
    classes = ["1", "3", "7"]
    y1 = rng.choice(["1", "3"], size=40).tolist()  # "7" unseen in section A
    y2 = rng.choice(classes, size=50).tolist()
    y2[:3] = ["", "nan", "9"]  # missing labels and a cluster outside the classes
    p1 = _onehotish(y1, classes, rng)
    p2 = _onehotish([c if c in classes else "1" for c in y2], classes, rng)
    a1 = _cluster_adata("A", "P1", y1, p1, classes)
    a2 = _cluster_adata("B", "P2", y2, p2, classes)
    per, ov = score_cluster_units([a1, a2], unit="sample_id")
    assert list(per.columns) == ["unit", *CLUSTER_COLUMNS]
    assert per["unit"].unique().tolist() == ["A", "B", "all"]
    assert ov["unit"].tolist() == ["A", "B", "all"]
    ov = ov.set_index("unit")
    assert ov.loc["A", "n_spots"] == 40 and ov.loc["A", "n_excluded"] == 0
    assert ov.loc["B", "n_spots"] == 47 and ov.loc["B", "n_excluded"] == 3
    assert ov.loc["all", "n_spots"] == 87
    a_rows = per[per["unit"] == "A"].set_index("class")
    assert np.isnan(a_rows.loc["7", "auroc"])
    # pooled row equals a direct computation on the concatenated kept spots
    y_all = np.array(y1 + y2[3:])
    p_all = np.vstack([p1, p2[3:]])
    direct = cluster_metrics(y_all, p_all, classes)
    pooled = per[per["unit"] == "all"].drop(columns="unit").reset_index(drop=True)
    pd.testing.assert_frame_equal(pooled, direct, check_dtype=False, atol=1e-6)
    assert ov.loc["all", "accuracy"] == pytest.approx(
        np.mean(y_all == np.asarray(classes)[p_all.argmax(1)])
    )


def test_score_cluster_units_aligns_differing_class_lists():
    rng = np.random.default_rng(3)
    y1 = rng.choice(["1", "2"], size=30).tolist()
    y2 = rng.choice(["2", "5"], size=30).tolist()
    a1 = _cluster_adata("A", "P1", y1, _onehotish(y1, ["1", "2"], rng), ["1", "2"])
    a2 = _cluster_adata("B", "P2", y2, _onehotish(y2, ["2", "5"], rng), ["2", "5"])
    per, ov = score_cluster_units([a1, a2], unit="patient_id")
    assert per[per["unit"] == "all"]["class"].tolist()[:3] == ["1", "2", "5"]
    assert ov.set_index("unit").loc["all", "n_spots"] == 60


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
        tab = ols_table(m, p, cov, genes=["G1", "G2", "G3", "G4"],
                        predictors=["brightness", "flat"])
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
        {"sample_id": sample, "patient_id": f"P{sample}", "fold": "0",
         "total_counts": total},
        index=ids,
    )
    a = ad.AnnData(X=meas.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    a.layers["predicted"] = pred.astype(np.float32)
    return a


def _patch_table(ids, rng):
    return pd.DataFrame(
        {"id": ids, "x": rng.uniform(0, 100, len(ids)), "y": rng.uniform(0, 100, len(ids)),
         "pad_frac": 0.0, "white_frac": rng.uniform(0, 1, len(ids)),
         "mean_r": rng.uniform(0, 255, len(ids)), "mean_g": rng.uniform(0, 255, len(ids)),
         "mean_b": rng.uniform(0, 255, len(ids)), "white": False}
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
    assert set(tab["predictor"]) == {"mean_rgb", "brightness", "log_total_umi",
                                     "mean_r", "mean_g", "mean_b"}
    assert len(tab) == 3 * 2 * 6


def test_ols_inputs_errors_name_the_sample():
    rng = np.random.default_rng(5)
    ids = [f"s{i}" for i in range(6)]
    a = _reg_adata("SEC_7", ids, rng.normal(size=(6, 2)), rng.normal(size=(6, 2)),
                   ["g1", "g2"], np.arange(1, 7))
    pt = _patch_table(ids, rng).drop(index=3)
    with pytest.raises(StpredictError, match="SEC_7") as err:
        ols_inputs([a], {"SEC_7": pt})
    assert "'s3'" in str(err.value) and err.value.sample == "SEC_7"
    with pytest.raises(StpredictError, match="SEC_7"):
        ols_inputs([a], {"OTHER": _patch_table(ids, rng)})
