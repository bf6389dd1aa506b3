"""Subtype classification from pseudo-bulk, bulk and image features (ST-Net's TCGA analysis).

Labels and patients
-------------------
The slide table's ``subtype`` column (empty = unlabelled, left out) and ``patient_id`` (empty =
the slide is its own patient). Two classes give one binary classifier (positive class: the
second label in sorted order; AUROC of its probability); more classes one multinomial logistic
regression, scored one-vs-rest per class and as the macro mean. Parse time refuses
(:func:`check_labels`) a table with labels of fewer than two classes or a class held by fewer
than three patients (one for the test side, two for the cross-validation).

Protocol (:func:`classify`)
---------------------------
1. **Patient split** (:func:`patient_split`): each patient (its label = its slides' most common
   label) goes wholly to the training or the test side; per class, ``round(test_frac * n)``
   (at least one) of its patients are drawn for the test side (seeded). No patient is on both
   sides.
2. **C by cross-validation on the training side only** (:func:`choose_c`): stratified group
   k-fold by patient (``cv_folds``, fewer when a class has fewer training patients), every C of
   ``wsi.subtype.C``; each fold fits the scaler (:class:`~sklearn.preprocessing.StandardScaler`)
   and the L2 logistic regression on its training part only (one pipeline); the score is the
   AUROC of the held-out probabilities pooled over the folds (a fold of a few slides has no
   AUROC of its own); ties go to the smaller C.
3. **Refit and test**: the pipeline with the chosen C is refitted on the whole training side
   (scaler included) and scores the held-out slides: AUROC with a percentile bootstrap CI over
   the test slides (``n_boot`` resamples, seeded; resamples with one class are redrawn). The test
   side's features never reach a fit.

Feature sets: ``pseudobulk`` (the mean predicted target per slide, :mod:`stpredict.wsi.bulk`),
``bulk`` (the bulk table on its log scale, the same genes), ``image`` (the per-slide mean of
``obsm["embedding"]``: the penultimate-layer features of the first fold model, TTA-averaged).
All three use the same split and the same slides (those holding every feature set).

Table (``results/wsi/subtype.tsv``): one row per feature set (and class, for more than two):
``features, positive, n_features, n_train, n_test, n_train_patients, n_test_patients, C,
cv_auroc, auroc, ci_low, ci_high, n_boot``. Scores of the test slides (the ROC curves):
``results/wsi/subtype_scores.tsv`` (``features, slide_id, patient_id, subtype, score``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from stpredict.errors import ConfigError, InputError

__all__ = [
    "C_GRID",
    "check_labels",
    "patient_groups",
    "patient_split",
    "make_model",
    "choose_c",
    "auroc",
    "bootstrap_ci",
    "classify",
]

log = logging.getLogger(__name__)

#: ST-Net's grid of inverse regularisation strengths
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
#: fewest patients per class (one for the test side, two for the cross-validation)
MIN_PATIENTS = 3


def patient_groups(table: pd.DataFrame) -> pd.Series:
    """Patient of each labelled slide (``patient_id``; empty = the slide itself)."""
    pid = table["patient_id"].astype(str) if "patient_id" in table else pd.Series("", table.index)
    return pid.where(pid != "", "slide:" + table.index.astype(str))


def check_labels(table: pd.DataFrame, path: str = "") -> pd.DataFrame:
    """Refuse a slide table whose subtype labels cannot train and test a classifier.

    Returns the labelled rows (``subtype`` not empty); an unlabelled table returns none.
    """
    lab = table[table.get("subtype", pd.Series("", table.index)).astype(str) != ""]
    if lab.empty:
        return lab
    patients = patient_groups(lab)
    per_class = patients.groupby(lab["subtype"]).nunique()
    if len(per_class) < 2:
        raise ConfigError(
            f"the slide table's subtype column holds one class ({per_class.index[0]})",
            file=path,
            fix="label slides of at least two subtypes, or leave the column empty",
        )
    few = per_class[per_class < MIN_PATIENTS]
    if len(few):
        raise ConfigError(
            f"subtype {few.index[0]} is held by {int(few.iloc[0])} patient(s); the classifier "
            f"needs {MIN_PATIENTS} per class (a test patient and two for the cross-validation)",
            file=path,
            fix="add slides of more patients, or leave the subtype column empty",
        )
    mixed = lab.groupby(patients)["subtype"].nunique()
    if (mixed > 1).any():
        log.warning("patients with slides of several subtypes: %s", list(mixed[mixed > 1].index))
    return lab


def patient_split(
    labels: pd.Series, patients: pd.Series, test_frac: float, seed: int
) -> tuple[list[str], list[str]]:
    """Seeded, per-class stratified 70/30 split of the slides by patient (module notes)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1_1]))
    plabel = labels.groupby(patients).agg(lambda s: s.value_counts().sort_index().idxmax())
    test_patients: set[str] = set()
    for cls in sorted(plabel.unique()):
        members = sorted(plabel.index[plabel == cls])
        n = max(1, int(round(test_frac * len(members))))
        n = min(n, len(members) - 1) if len(members) > 1 else 0
        test_patients |= set(rng.permutation(members)[:n])
    is_test = patients.isin(test_patients)
    return list(labels.index[~is_test]), list(labels.index[is_test])


def make_model(c: float) -> Any:
    """Return standard scaling + L2 logistic regression as one pipeline (fitted together)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=float(c), max_iter=5000))


def _cv_splits(y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> list:
    from sklearn.model_selection import StratifiedGroupKFold

    per_class = pd.Series(groups).groupby(y).nunique().min()
    k = int(min(n_folds, per_class))
    if k < 2:
        raise InputError(
            f"a subtype has {per_class} training patient(s): no cross-validation is possible",
            fix="label slides of more patients (3 per subtype at least)",
        )
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed))
    return list(cv.split(np.zeros(len(y)), y, groups))


def choose_c(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    cs: Sequence[float] = C_GRID,
    n_folds: int = 5,
    seed: int = 0,
) -> tuple[float, pd.DataFrame]:
    """C of the best pooled out-of-fold AUROC over patient-grouped folds (training side only).

    Each fold's pipeline (scaler + logistic regression) is fitted on the fold's training part;
    its held-out slides' probabilities are pooled over the folds and scored once (macro
    one-vs-rest for more than two classes); ties go to the smaller C (the stronger penalty).
    """
    classes = np.unique(y)
    splits = _cv_splits(y, groups, n_folds, seed)
    rows = []
    for c in cs:
        oof = np.zeros((len(y), len(classes)))
        for tr, va in splits:
            model = make_model(c).fit(x[tr], y[tr])
            cols = [list(classes).index(k) for k in model.classes_]
            oof[np.ix_(va, cols)] = model.predict_proba(x[va])
        score = _macro_auroc(y, oof, classes)
        rows.append({"C": float(c), "cv_auroc": score, "n_folds": len(splits)})
    table = pd.DataFrame(rows)
    best = table.assign(neg=-table["cv_auroc"].fillna(-1.0)).sort_values(
        ["neg", "C"], kind="stable"
    )
    return float(best["C"].iloc[0]), table


def _macro_auroc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """AUROC of the positive class (two classes) or the macro one-vs-rest mean (more)."""
    if len(classes) == 2:
        return auroc(y == classes[1], proba[:, 1])
    return float(np.nanmean([auroc(y == k, proba[:, i]) for i, k in enumerate(classes)]))


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """AUROC of ``score`` for the binary labels ``y`` (Mann-Whitney, ties half; NaN with one class)."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.nan
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_ci(
    y: np.ndarray, score: np.ndarray, n_boot: int, seed: int, ci: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUROC over the test slides (one-class resamples redrawn)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2_2]))
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return np.nan, np.nan
    vals = []
    tries = 0
    while len(vals) < n_boot and tries < 100 * n_boot:
        idx = rng.integers(0, len(y), len(y))
        tries += 1
        if y[idx].all() or not y[idx].any():
            continue
        vals.append(auroc(y[idx], score[idx]))
    lo, hi = np.percentile(vals, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return float(lo), float(hi)


def _one_set(
    name: str,
    x: pd.DataFrame,
    labels: pd.Series,
    groups: pd.Series,
    split: tuple[list[str], list[str]],
    settings: Mapping[str, Any],
) -> tuple[list[dict], pd.DataFrame]:
    train, test = split
    xtr, ytr = x.loc[train].to_numpy(np.float64), labels.loc[train].to_numpy()
    c, cv = choose_c(
        xtr,
        ytr,
        groups.loc[train].to_numpy(),
        settings["C"],
        settings["cv_folds"],
        settings["seed"],
    )
    model = make_model(c).fit(xtr, ytr)
    proba = model.predict_proba(x.loc[test].to_numpy(np.float64))
    classes = list(model.classes_)
    yte = labels.loc[test].to_numpy()
    positives = classes[1:] if len(classes) == 2 else classes
    base = {
        "features": name,
        "n_features": x.shape[1],
        "n_train": len(train),
        "n_test": len(test),
        "n_train_patients": groups.loc[train].nunique(),
        "n_test_patients": groups.loc[test].nunique(),
        "C": c,
        "cv_auroc": float(cv.set_index("C").loc[c, "cv_auroc"]),
        "n_boot": int(settings["n_boot"]),
    }
    rows, scores = [], []
    for pos in positives:
        s = proba[:, classes.index(pos)]
        lo, hi = bootstrap_ci(yte == pos, s, int(settings["n_boot"]), int(settings["seed"]))
        rows.append(base | {"positive": pos, "auroc": auroc(yte == pos, s)} | _ci(lo, hi))
        scores.append(
            pd.DataFrame(
                {
                    "features": name,
                    "positive": pos,
                    "slide_id": test,
                    "patient_id": groups.loc[test].to_numpy(),
                    "subtype": yte,
                    "score": s,
                }
            )
        )
    if len(positives) > 2:
        rows.append(
            base
            | {"positive": "macro", "auroc": float(np.nanmean([r["auroc"] for r in rows]))}
            | _ci(np.nan, np.nan)
        )
    return rows, pd.concat(scores, ignore_index=True)


def _ci(lo: float, hi: float) -> dict[str, float]:
    return {"ci_low": lo, "ci_high": hi}


COLUMNS = [
    "features",
    "positive",
    "n_features",
    "n_train",
    "n_test",
    "n_train_patients",
    "n_test_patients",
    "C",
    "cv_auroc",
    "auroc",
    "ci_low",
    "ci_high",
    "n_boot",
]


def classify(
    features: Mapping[str, pd.DataFrame],
    table: pd.DataFrame,
    settings: Mapping[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, list[str]]]:
    """Run the protocol (module notes) for every feature set on one patient split.

    Parameters
    ----------
    features
        ``{name: slides x features}`` (pseudobulk, bulk, image).
    table
        The slide table (index ``slide_id``; columns ``subtype``, ``patient_id``).
    settings
        ``wsi.subtype``: ``test_frac, cv_folds, C, n_boot, seed``.

    Returns
    -------
    results, scores : pandas.DataFrame
        The subtype table and the test slides' scores (module notes).
    split : dict
        ``{"train": slides, "test": slides}``.
    """
    lab = check_labels(table)
    slides = [s for s in lab.index if all(s in f.index for f in features.values())]
    left = sorted(set(lab.index) - set(slides))
    if left:
        log.info("%d labelled slide(s) without every feature set left out: %s", len(left), left)
    labels = lab.loc[slides, "subtype"].astype(str)
    groups = patient_groups(lab.loc[slides])
    split = patient_split(labels, groups, float(settings["test_frac"]), int(settings["seed"]))
    rows, scores = [], []
    for name, x in features.items():
        r, s = _one_set(name, x.loc[slides], labels, groups, split, settings)
        rows += r
        scores.append(s)
        log.info("%s: AUROC %s", name, ", ".join(f"{d['positive']} {d['auroc']:.3f}" for d in r))
    return (
        pd.DataFrame(rows)[COLUMNS],
        pd.concat(scores, ignore_index=True),
        {"train": split[0], "test": split[1]},
    )
