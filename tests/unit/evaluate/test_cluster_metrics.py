"""Cluster-task metrics (DeepSpaCE's tables) against hand-computed values and scikit-learn."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    classification_report,
    cohen_kappa_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from stpredict.evaluate.metrics import (
    CLUSTER_COLUMNS,
    cluster_metrics,
    cluster_overview,
    confusion_table,
    score_cluster_units,
)

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


# --------------------------------------------------------------------------- cluster fixtures
def _onehotish(labels, classes, rng, strength=2.0):
    """Probabilities peaked on ``labels`` (softmax of noise + strength at the given label)."""
    k = len(classes)
    logits = rng.normal(size=(len(labels), k))
    for i, lab in enumerate(labels):
        logits[i, classes.index(lab)] += strength
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


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
    exp = np.mean(
        [roc_auc_score(np.asarray(y) == c, proba[:, j]) for j, c in enumerate(classes) if c != "7"]
    )
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
    np.testing.assert_allclose(
        norm.loc[HAND_CLASSES, HAND_CLASSES].to_numpy(), exp / exp.sum(1, keepdims=True)
    )
    assert norm.loc["d"].isna().all()


def test_gapped_string_labels_and_integer_labels():
    classes = ["1", "3", "7"]
    y_int = [1, 1, 3, 7, 7, 3]
    proba = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.4, 0.5, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.1, 0.8],
            [0.2, 0.2, 0.6],
            [0.7, 0.2, 0.1],
        ]
    )
    df = cluster_metrics(y_int, proba, classes).set_index("class")
    assert list(df.index[:3]) == classes
    assert df.loc["7", "recall"] == 1.0 and df.loc["1", "recall"] == 0.5
    tab = confusion_table([str(v) for v in y_int], ["1", "3", "3", "7", "7", "1"], classes)
    assert tab.loc["3", "1"] == 1 and tab.loc["1", "3"] == 1 and tab.to_numpy().sum() == 6


def _cluster_adata(sample, patient, y_true, proba, classes):
    n = len(y_true)
    obs = pd.DataFrame(
        {"sample_id": sample, "patient_id": patient, "fold": "0", "cluster_true": list(y_true)},
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


# Hand example: 3 classes, 8 spots; probabilities chosen so the arg-max is y_pred below.
