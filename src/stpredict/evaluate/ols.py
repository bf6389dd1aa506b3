"""Evaluation tables in the style of DeepSpaCE: cluster-type metrics and OLS baselines.

Two kinds of held-out prediction AnnData objects (one per section) are evaluated here.

* ``"clusters"`` task: ``X`` is the one-hot measured cluster, ``layers["predicted"]`` the class
  probabilities (softmax; rows sum to 1), ``obs["cluster_true"]`` / ``obs["cluster_pred"]`` the
  string labels and ``uns["stpredict"]["classes"]`` the class labels in column order.
  :func:`cluster_metrics`, :func:`cluster_overview`, :func:`confusion_table` and
  :func:`score_cluster_units` score them.
* Regression tasks: ``X`` holds the measured target values (spots x genes),
  ``layers["predicted"]`` the predictions and ``obs`` ``sample_id``, ``patient_id``, ``fold`` and
  ``total_counts`` (raw UMI total per spot). :func:`ols_inputs` joins them with the patch
  tables (colour statistics per spot) and :func:`ols_table` builds the DeepSpaCE Table 1 style
  regression table: does the CNN prediction explain the measured expression beyond trivial
  predictors such as the patch colour or the sequencing depth?

Conventions
-----------
* Labels are compared as strings, so ``1`` and ``"1"`` are the same class; labels may have gaps
  (``"1"``, ``"3"``, ``"7"``). The predicted class is the arg-max of the probabilities (the first
  column wins ties).
* Precision, recall and F1 follow :func:`sklearn.metrics.precision_recall_fscore_support` with
  ``zero_division=0`` (a class that is never predicted has precision 0). A class that is neither
  present in the true labels nor predicted has nothing to evaluate: its precision, recall, F1
  and AUROC are NaN and it is left out of the ``micro``, ``macro`` and ``weighted`` averages.
* A one-vs-rest AUROC is NaN (never 0 or 0.5) when the class is absent from the true labels or
  is the true label of every spot; NaN AUROCs are left out of the macro and weighted means.
* Regression statistics are NaN (no exception, no warning) when the measured, predicted or
  baseline values are constant over the usable spots or too few spots remain;
  ``n_spots`` is still reported.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from stpredict.errors import StpredictError
from stpredict.metrics import dense_2d

__all__ = [
    "CLUSTER_COLUMNS",
    "OVERVIEW_COLUMNS",
    "OLS_COLUMNS",
    "DEFAULT_PREDICTORS",
    "MIN_OLS_SPOTS",
    "cluster_metrics",
    "cluster_overview",
    "confusion_table",
    "score_cluster_units",
    "ols_inputs",
    "ols_table",
]

#: Columns of :func:`cluster_metrics`.
CLUSTER_COLUMNS: tuple[str, ...] = (
    "class", "precision", "recall", "f1", "auroc", "support", "n_pred",
)
#: Keys of :func:`cluster_overview` (and columns of the overview of :func:`score_cluster_units`
#: after ``unit``).
OVERVIEW_COLUMNS: tuple[str, ...] = (
    "n_spots", "n_outside", "n_classes_true", "accuracy", "majority_class", "chance_accuracy",
    "kappa", "macro_f1", "macro_auroc", "micro_auroc",
)
#: Columns of :func:`ols_table`.
OLS_COLUMNS: tuple[str, ...] = (
    "unit", "gene", "predictor", "n_spots",
    "adj_r2_baseline", "adj_r2_predicted", "adj_r2_both", "delta_adj_r2",
    "beta_predicted", "se_predicted", "p_predicted",
    "beta_baseline", "se_baseline", "p_baseline",
)
#: Baseline predictors of :func:`ols_table` (columns made by :func:`ols_inputs`).
DEFAULT_PREDICTORS: tuple[str, ...] = (
    "mean_rgb", "brightness", "log_total_umi", "mean_r", "mean_g", "mean_b",
)
#: Fewest usable spots for an OLS row (model 2 has 3 parameters and needs a residual degree of
#: freedom).
MIN_OLS_SPOTS = 4

_AVERAGES = ("micro", "macro", "weighted")
_MISSING_LABELS = frozenset({"", "nan", "none", "<na>"})


_dense = dense_2d


def _labels(y: Any) -> np.ndarray:
    return np.asarray([str(v) for v in np.asarray(y, dtype=object).ravel()], dtype=object)


def _classes(classes: Sequence[Any]) -> list[str]:
    out = [str(c) for c in classes]
    if not out:
        raise ValueError("no classes given")
    if len(set(out)) != len(out):
        raise ValueError(f"classes are not unique: {out}")
    return out


def _check_proba(proba: Any, n: int, k: int) -> np.ndarray:
    p = _dense(proba)
    if p.shape != (n, k):
        raise ValueError(f"proba has shape {p.shape}, expected ({n}, {k}) (spots x classes)")
    return p


# --------------------------------------------------------------------------- cluster task
def _binary_auroc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if y.size == 0 or y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, score))


def cluster_metrics(y_true: Any, proba: Any, classes: Sequence[Any]) -> pd.DataFrame:
    """Per-class precision, recall, F1 and one-vs-rest AUROC of a cluster-type prediction.

    Parameters
    ----------
    y_true
        ``(n,)`` true labels (any values; compared as strings). Labels that are not in
        ``classes`` (a cluster unseen in training) count as errors: they are in no class's
        ``support`` but their prediction is a false positive of the predicted class.
    proba
        ``(n, K)`` class probabilities, column ``k`` for ``classes[k]``.
    classes
        The ``K`` class labels in column order.

    Returns
    -------
    pandas.DataFrame
        One row per class (in the order of ``classes``) followed by rows ``micro``, ``macro``
        and ``weighted``; columns ``class``, ``precision``, ``recall``, ``f1``, ``auroc``,
        ``support`` (spots whose true label is the class) and ``n_pred`` (spots predicted as
        the class). The predicted class is ``classes[argmax(proba)]``. Precision, recall and F1
        are those of :func:`sklearn.metrics.precision_recall_fscore_support` with
        ``zero_division=0``; the averages are over the *active* classes (true or predicted at
        least once), and a class that is neither has NaN metrics. ``auroc`` is
        :func:`sklearn.metrics.roc_auc_score` of the class indicator against its probability
        column, NaN when the class is absent from ``y_true`` or is every spot's class. The
        ``micro`` AUROC is :func:`~sklearn.metrics.roc_auc_score` of the flattened ``(n, K)``
        indicator matrix against the flattened probabilities, the ``macro`` AUROC the mean and
        the ``weighted`` AUROC the support-weighted mean of the defined class AUROCs (NaN when
        none is defined). Average rows have ``support`` = the spots with a true label in
        ``classes`` and ``n_pred`` = all spots.
    """
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    cls = _classes(classes)
    yt = _labels(y_true)
    n, k = yt.size, len(cls)
    if n == 0:
        raise ValueError("no spots to score")
    p = _check_proba(proba, n, k)
    yp = np.asarray(cls, dtype=object)[np.argmax(p, axis=1)]
    ind = yt[:, None] == np.asarray(cls, dtype=object)[None, :]  # (n, K) true indicator
    support = ind.sum(axis=0).astype(int)
    n_pred = np.array([(yp == c).sum() for c in cls], dtype=int)
    active = (support > 0) | (n_pred > 0)
    active_labels = [c for c, a in zip(cls, active, strict=True) if a]

    prec = np.full(k, np.nan)
    rec = np.full(k, np.nan)
    f1 = np.full(k, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pa, ra, fa, _ = precision_recall_fscore_support(
            yt, yp, labels=active_labels, average=None, zero_division=0
        )
        prec[active], rec[active], f1[active] = pa, ra, fa
        avg = {
            a: precision_recall_fscore_support(
                yt, yp, labels=active_labels, average=a, zero_division=0
            )[:3]
            for a in _AVERAGES
        }
    auroc = np.array([_binary_auroc(ind[:, j], p[:, j]) for j in range(k)])
    ok = np.isfinite(auroc)
    flat = ind.ravel()
    micro_auc = (
        float(roc_auc_score(flat, p.ravel())) if flat.any() and not flat.all() else float("nan")
    )
    macro_auc = float(auroc[ok].mean()) if ok.any() else float("nan")
    weighted_auc = (
        float(np.average(auroc[ok], weights=support[ok])) if ok.any() else float("nan")
    )
    rows: list[dict[str, Any]] = [
        {
            "class": c, "precision": prec[j], "recall": rec[j], "f1": f1[j],
            "auroc": auroc[j], "support": support[j], "n_pred": n_pred[j],
        }
        for j, c in enumerate(cls)
    ]
    for a, auc in zip(_AVERAGES, (micro_auc, macro_auc, weighted_auc), strict=True):
        pr, rc, ff = avg[a]
        rows.append(
            {
                "class": a, "precision": float(pr), "recall": float(rc), "f1": float(ff),
                "auroc": auc, "support": int(support.sum()), "n_pred": int(n),
            }
        )
    df = pd.DataFrame(rows, columns=list(CLUSTER_COLUMNS))
    df["support"] = df["support"].astype(int)
    df["n_pred"] = df["n_pred"].astype(int)
    return df


def cluster_overview(y_true: Any, proba: Any, classes: Sequence[Any]) -> dict[str, Any]:
    """Overall accuracy, chance level and Cohen's kappa of a cluster-type prediction.

    Parameters
    ----------
    y_true, proba, classes
        As for :func:`cluster_metrics`.

    Returns
    -------
    dict
        ``n_spots``; ``n_outside`` (spots whose true label is not in ``classes``; they count as
        errors); ``n_classes_true`` (classes present in ``y_true``); ``accuracy`` (share of
        spots with ``classes[argmax(proba)] == y_true``); ``majority_class`` and
        ``chance_accuracy`` (the most frequent true label of *these* spots and the accuracy of
        always predicting it, an optimistic chance level since it is chosen on the evaluated
        spots; ties go to the label first in sorted order); ``kappa``
        (:func:`sklearn.metrics.cohen_kappa_score` over all labels, NaN when only one label
        occurs among true and predicted); ``macro_f1``, ``macro_auroc`` and ``micro_auroc``
        from :func:`cluster_metrics`.
    """
    from sklearn.metrics import cohen_kappa_score

    cls = _classes(classes)
    table = cluster_metrics(y_true, proba, cls)
    yt = _labels(y_true)
    p = _check_proba(proba, yt.size, len(cls))
    yp = np.asarray(cls, dtype=object)[np.argmax(p, axis=1)]
    values, counts = np.unique(yt.astype(str), return_counts=True)
    top = int(np.argmax(counts))
    kappa = float("nan")
    if len(set(yt) | set(yp)) > 1:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            kappa = float(cohen_kappa_score(yt, yp))
        if not np.isfinite(kappa):
            kappa = float("nan")
    avg = table.set_index("class")
    return {
        "n_spots": int(yt.size),
        "n_outside": int((~np.isin(yt, np.asarray(cls, dtype=object))).sum()),
        "n_classes_true": int((table["support"].to_numpy()[: len(cls)] > 0).sum()),
        "accuracy": float(np.mean(yt == yp)),
        "majority_class": str(values[top]),
        "chance_accuracy": float(counts[top] / yt.size),
        "kappa": kappa,
        "macro_f1": float(avg.loc["macro", "f1"]),
        "macro_auroc": float(avg.loc["macro", "auroc"]),
        "micro_auroc": float(avg.loc["micro", "auroc"]),
    }


def confusion_table(
    y_true: Any, y_pred: Any, classes: Sequence[Any], normalize: bool = False
) -> pd.DataFrame:
    """Confusion matrix as a labelled table.

    Parameters
    ----------
    y_true, y_pred
        ``(n,)`` true and predicted labels (compared as strings).
    classes
        Class labels, the order of the rows and columns. Spots whose true or predicted label is
        not among them are not counted (:func:`sklearn.metrics.confusion_matrix` with
        ``labels=classes``).
    normalize
        Divide each row by its total (share of the spots of a true class predicted as each
        class); rows of classes absent from ``y_true`` are NaN.

    Returns
    -------
    pandas.DataFrame
        Index ``true`` (true class), columns ``predicted``; counts (int) or row shares.
    """
    from sklearn.metrics import confusion_matrix

    cls = _classes(classes)
    yt, yp = _labels(y_true), _labels(y_pred)
    if yt.size != yp.size:
        raise ValueError(f"y_true ({yt.size}) and y_pred ({yp.size}) differ in length")
    if yt.size == 0:
        cm = np.zeros((len(cls), len(cls)), dtype=int)
    else:
        cm = confusion_matrix(yt, yp, labels=np.asarray(cls, dtype=object))
    index = pd.Index(cls, name="true")
    columns = pd.Index(cls, name="predicted")
    if not normalize:
        return pd.DataFrame(cm.astype(int), index=index, columns=columns)
    tot = cm.sum(axis=1, keepdims=True).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(tot > 0, cm / np.where(tot > 0, tot, 1.0), np.nan)
    return pd.DataFrame(share, index=index, columns=columns)


def _adata_classes(ad: Any) -> list[str]:
    try:
        return [str(c) for c in ad.uns["stpredict"]["classes"]]
    except (KeyError, TypeError):
        names = [str(v) for v in ad.var_names]
        return [v[len("cluster_"):] if v.startswith("cluster_") else v for v in names]


def score_cluster_units(
    adatas: Iterable[Any], unit: str = "sample_id"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score cluster-type predictions per unit and over all spots pooled.

    Parameters
    ----------
    adatas
        ``"clusters"`` prediction AnnData objects (``layers["predicted"]`` probabilities,
        ``obs["cluster_true"]``, ``uns["stpredict"]["classes"]``; without the latter the class
        labels are the ``var_names`` less a ``cluster_`` prefix). Files whose class lists
        differ (classes are fitted per fold) are aligned on the union of their classes, in
        first-seen order; a class a model does not know gets probability 0.
    unit
        ``obs`` column defining a unit (``"sample_id"``, ``"patient_id"`` or ``"fold"``).

    Returns
    -------
    per_class : pandas.DataFrame
        Column ``unit`` followed by the columns of :func:`cluster_metrics`, for every unit (in
        order of appearance) and the unit ``"all"`` (all spots pooled), last.
    overview : pandas.DataFrame
        One row per unit (same order): ``unit``, the keys of :func:`cluster_overview` and
        ``n_excluded``: spots left out because their true label is missing (empty, NaN) or not
        one of the classes (a cluster excluded from or unseen in training).
    """
    adatas = list(adatas)
    if not adatas:
        raise ValueError("no prediction AnnData objects given")
    classes: list[str] = []
    for ad in adatas:
        classes += [c for c in _adata_classes(ad) if c not in classes]
    col = {c: j for j, c in enumerate(classes)}
    ys, ps, us = [], [], []
    for ad in adatas:
        cls = _adata_classes(ad)
        p = _dense(ad.layers["predicted"])
        if p.shape[1] != len(cls):
            raise ValueError(
                f"predicted has {p.shape[1]} columns but the file lists {len(cls)} classes"
            )
        full = np.zeros((p.shape[0], len(classes)))
        full[:, [col[c] for c in cls]] = p
        if unit not in ad.obs:
            raise ValueError(f"obs has no column {unit!r}")
        ys.append(_labels(ad.obs["cluster_true"].astype(object).to_numpy()))
        ps.append(full)
        us.append(ad.obs[unit].astype(str).to_numpy())
    y, p, u = np.concatenate(ys), np.vstack(ps), np.concatenate(us)
    keep = np.isin(y, np.asarray(classes, dtype=object))
    missing = np.array([v.strip().lower() in _MISSING_LABELS for v in y], dtype=bool)
    keep &= ~missing
    frames, rows = [], []
    units = [(str(v), u == v) for v in pd.unique(u)] + [("all", np.ones(u.size, dtype=bool))]
    for name, sel in units:
        use = sel & keep
        if not use.any():
            continue
        df = cluster_metrics(y[use], p[use], classes)
        df.insert(0, "unit", name)
        frames.append(df)
        rows.append(
            {"unit": name, **cluster_overview(y[use], p[use], classes),
             "n_excluded": int((sel & ~keep).sum())}
        )
    if not frames:
        raise ValueError("no spot has a true cluster label among the classes")
    overview = pd.DataFrame(rows, columns=["unit", *OVERVIEW_COLUMNS, "n_excluded"])
    return pd.concat(frames, ignore_index=True), overview


# --------------------------------------------------------------------------- OLS table
_PATCH_NEEDED = ("id", "mean_r", "mean_g", "mean_b")
_PATCH_EXTRA = ("white_frac", "pad_frac")


def _shared_genes(adatas: Sequence[Any]) -> list[str]:
    genes = [str(g) for g in adatas[0].var_names]
    for ad in adatas[1:]:
        have = {str(g) for g in ad.var_names}
        genes = [g for g in genes if g in have]
    if not genes:
        raise ValueError("the prediction files share no gene")
    return genes


def ols_inputs(
    adatas: Iterable[Any], patch_tables: Mapping[Any, pd.DataFrame]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Measured values, predictions and per-spot covariates for :func:`ols_table`.

    Parameters
    ----------
    adatas
        Regression prediction AnnData objects. Genes are restricted to those all files share
        (folds may select different genes). The spot id is ``obs["spot_id"]`` when present,
        else ``obs_names``.
    patch_tables
        Patch table (``id``, ``mean_r``, ``mean_g``, ``mean_b``; optionally ``white_frac`` and
        ``pad_frac``) per ``sample_id`` (keys compared as strings). Rows are matched on
        ``id`` (compared as strings), in any order.

    Returns
    -------
    measured, predicted : pandas.DataFrame
        Spots x genes, index ``"<sample_id>:<spot_id>"``.
    covariates : pandas.DataFrame
        Same index; ``sample_id``, ``spot_id`` and, when in ``obs``, ``patient_id`` and
        ``fold`` (strings); ``mean_r``, ``mean_g``, ``mean_b`` (mean 0-255 colour of the
        patch); ``mean_rgb`` = ``(mean_r + mean_g + mean_b) / 3``; ``brightness`` = Rec. 601
        luma ``0.299 mean_r + 0.587 mean_g + 0.114 mean_b`` (of the gamma-encoded values; by
        linearity also the mean luma of the patch's pixels); ``white_frac`` and ``pad_frac``
        when in the patch table; ``total_counts`` (from ``obs``, NaN when absent) and
        ``log_total_umi`` = ``log10(total_counts)`` (NaN for totals <= 0).

    Raises
    ------
    StpredictError
        Naming the sample, when it has no patch table, its patch table lacks a column or
        repeats an id, or one of its spots has no patch row.
    """
    adatas = list(adatas)
    if not adatas:
        raise ValueError("no prediction AnnData objects given")
    genes = _shared_genes(adatas)
    tables = {str(k): v for k, v in patch_tables.items()}
    meas, pred, covs = [], [], []
    for ad in adatas:
        if "sample_id" not in ad.obs:
            raise ValueError("obs has no column 'sample_id'")
        gi = pd.Index([str(g) for g in ad.var_names]).get_indexer(genes)
        m = _dense(ad.X)[:, gi]
        p = _dense(ad.layers["predicted"])[:, gi]
        obs = ad.obs
        spot = (obs["spot_id"] if "spot_id" in obs else pd.Series(ad.obs_names, index=obs.index))
        spot = spot.astype(str).to_numpy()
        samples = obs["sample_id"].astype(str).to_numpy()
        tc = (
            obs["total_counts"].to_numpy(dtype=float)
            if "total_counts" in obs else np.full(ad.n_obs, np.nan)
        )
        for s in pd.unique(samples):
            sel = samples == s
            if s not in tables:
                raise StpredictError(
                    "no patch table for this sample", sample=s,
                    fix="pass the sample's patch table (TSV written with the patches)",
                )
            tab = tables[s]
            lack = [c for c in _PATCH_NEEDED if c not in tab.columns]
            if lack:
                raise StpredictError(
                    f"patch table lacks column(s) {', '.join(lack)}", sample=s,
                    fix="re-extract the patches to write the colour statistics",
                )
            ids = tab["id"].astype(str)
            if ids.duplicated().any():
                dup = ids[ids.duplicated()].iloc[0]
                raise StpredictError(f"patch table repeats spot id {dup!r}", sample=s)
            tab = tab.set_axis(pd.Index(ids.to_numpy(), name="id"), axis=0)
            pos = tab.index.get_indexer(spot[sel])
            if (pos < 0).any():
                miss = spot[sel][pos < 0]
                shown = ", ".join(repr(v) for v in miss[:5])
                more = f" and {miss.size - 5} more" if miss.size > 5 else ""
                raise StpredictError(
                    f"{miss.size} spot(s) have no row in the patch table: {shown}{more}",
                    sample=s, fix="use the patch table extracted for this section",
                )
            rows = tab.iloc[pos]
            cov = pd.DataFrame({"sample_id": s, "spot_id": spot[sel]})
            for c in ("patient_id", "fold"):
                if c in obs:
                    cov[c] = obs[c].astype(str).to_numpy()[sel]
            for c in ("mean_r", "mean_g", "mean_b", *_PATCH_EXTRA):
                if c in rows.columns:
                    cov[c] = rows[c].to_numpy(dtype=float)
            cov["total_counts"] = tc[sel]
            meas.append(m[sel])
            pred.append(p[sel])
            covs.append(cov)
    cov = pd.concat(covs, ignore_index=True)
    r, g, b = (cov[c].to_numpy(dtype=float) for c in ("mean_r", "mean_g", "mean_b"))
    cov["mean_rgb"] = (r + g + b) / 3.0
    cov["brightness"] = 0.299 * r + 0.587 * g + 0.114 * b
    t = cov["total_counts"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        cov["log_total_umi"] = np.where(t > 0, np.log10(np.where(t > 0, t, 1.0)), np.nan)
    index = pd.Index(
        [f"{s}:{i}" for s, i in zip(cov["sample_id"], cov["spot_id"], strict=True)], name="spot"
    )
    if index.has_duplicates:
        raise ValueError("a spot (sample_id:spot_id) occurs in more than one prediction file")
    cov.index = index
    cols = pd.Index(genes, name="gene")
    return (
        pd.DataFrame(np.vstack(meas), index=index, columns=cols),
        pd.DataFrame(np.vstack(pred), index=index, columns=cols),
        cov,
    )


def _matrix(x: Any, genes: Sequence[Any] | None, what: str) -> tuple[np.ndarray, list[Any]]:
    if isinstance(x, pd.DataFrame):
        if genes is not None:
            missing = [g for g in genes if g not in x.columns]
            if missing:
                raise ValueError(f"{what} lacks gene(s) {missing[:5]}")
            x = x[list(genes)]
        return x.to_numpy(dtype=float), list(x.columns)
    arr = _dense(x)
    names = list(genes) if genes is not None else list(range(arr.shape[1]))
    if len(names) != arr.shape[1]:
        raise ValueError(f"genes ({len(names)}) does not match the columns of {what}")
    return arr, names


def _fit(y: np.ndarray, cols: Sequence[np.ndarray]) -> Any:
    import statsmodels.api as sm

    x = sm.add_constant(np.column_stack(cols), has_constant="add")
    return sm.OLS(y, x).fit()


def _constant(v: np.ndarray) -> bool:
    return v.size == 0 or bool(np.all(v == v[0]))


def _collinear(a: np.ndarray, b: np.ndarray) -> bool:
    z = np.column_stack([(a - a.mean()) / a.std(), (b - b.mean()) / b.std()])
    return int(np.linalg.matrix_rank(z)) < 2


def _ols_row(
    y: np.ndarray, b: np.ndarray, p: np.ndarray, cache: dict[bytes, float]
) -> dict[str, float]:
    """One gene x predictor row; ``cache`` holds model 0's adjusted R² per spot mask."""
    ok = np.isfinite(y) & np.isfinite(b) & np.isfinite(p)
    y, b, p = y[ok], b[ok], p[ok]
    out: dict[str, float] = {c: np.nan for c in OLS_COLUMNS[4:]}
    out["n_spots"] = int(y.size)
    if y.size < MIN_OLS_SPOTS or _constant(y) or _constant(p) or _constant(b):
        return out
    m1 = _fit(y, [b])
    key = np.packbits(ok).tobytes()
    if key not in cache:  # model 0 does not depend on the baseline, only on the spots used
        cache[key] = float(_fit(y, [p]).rsquared_adj)
    out["adj_r2_baseline"] = float(m1.rsquared_adj)
    out["adj_r2_predicted"] = cache[key]
    out["beta_baseline"] = float(m1.params[1])
    out["se_baseline"] = float(m1.bse[1])
    out["p_baseline"] = float(m1.pvalues[1])
    if not _collinear(b, p):
        m2 = _fit(y, [b, p])
        out["adj_r2_both"] = float(m2.rsquared_adj)
        out["delta_adj_r2"] = out["adj_r2_both"] - out["adj_r2_baseline"]
        out["beta_predicted"] = float(m2.params[2])
        out["se_predicted"] = float(m2.bse[2])
        out["p_predicted"] = float(m2.pvalues[2])
    return out


def ols_table(
    measured: Any,
    predicted: Any,
    covariates: pd.DataFrame,
    genes: Sequence[Any] | None = None,
    predictors: Sequence[str] = DEFAULT_PREDICTORS,
    unit: str | None = None,
) -> pd.DataFrame:
    """DeepSpaCE Table 1 style OLS: does the prediction explain expression beyond a baseline.

    For every gene and baseline predictor ``b`` three ordinary least-squares models are fitted
    with :class:`statsmodels.regression.linear_model.OLS` (intercept added):

    * model 1, ``measured ~ 1 + b`` (the trivial predictor alone);
    * model 0, ``measured ~ 1 + predicted`` (the CNN prediction alone);
    * model 2, ``measured ~ 1 + b + predicted`` (the prediction on top of the baseline).

    All three use the same spots: those with finite measured, predicted and ``b`` values.

    Parameters
    ----------
    measured, predicted
        Spots x genes (DataFrames, or arrays with ``genes`` naming the columns).
    covariates
        One row per spot (same order; same index when ``measured`` is a DataFrame) holding the
        ``predictors`` and, when given, the ``unit`` column; see :func:`ols_inputs`.
    genes
        Genes to fit (DataFrame columns to select, or names of the array columns); default all.
    predictors
        Baseline predictor columns of ``covariates``, default :data:`DEFAULT_PREDICTORS`.
    unit
        Optional ``covariates`` column (e.g. ``"sample_id"``): also fit each unit separately.
        The pooled fit over all spots is always made, as unit ``"all"`` (last).

    Returns
    -------
    pandas.DataFrame
        One row per unit x gene x predictor with columns ``unit``, ``gene``, ``predictor``,
        ``n_spots`` (spots used), ``adj_r2_baseline`` (model 1), ``adj_r2_predicted``
        (model 0), ``adj_r2_both`` (model 2), ``delta_adj_r2`` (model 2 minus model 1),
        ``beta_predicted``, ``se_predicted``, ``p_predicted`` (coefficient of ``predicted`` in
        model 2, its standard error and two-sided t-test p value) and ``beta_baseline``,
        ``se_baseline``, ``p_baseline`` (coefficient of ``b`` in model 1). Adjusted R² is
        ``1 - (1 - R²)(n - 1)/(n - k - 1)`` with ``k`` regressors besides the intercept. All
        statistics are NaN when fewer than :data:`MIN_OLS_SPOTS` spots are usable or the
        measured, predicted or baseline values are constant over them; the model 2 values are
        also NaN when ``b`` and ``predicted`` are exactly collinear. No warnings are emitted.
    """
    m, names = _matrix(measured, genes, "measured")
    if isinstance(measured, pd.DataFrame) and genes is None:
        genes = names
    p, _ = _matrix(predicted, genes if isinstance(predicted, pd.DataFrame) else None, "predicted")
    if p.shape != m.shape:
        raise ValueError(f"measured {m.shape} and predicted {p.shape} differ in shape")
    if len(covariates) != m.shape[0]:
        raise ValueError(
            f"covariates has {len(covariates)} rows, measured has {m.shape[0]} spots"
        )
    for other, what in ((measured, "measured"), (predicted, "predicted")):
        if isinstance(other, pd.DataFrame) and not other.index.equals(covariates.index):
            raise ValueError(f"{what} and covariates differ in their index (spots)")
    predictors = list(predictors)
    lack = [c for c in predictors if c not in covariates.columns]
    if lack:
        raise ValueError(f"covariates lacks predictor column(s) {lack}")
    if unit is not None and unit not in covariates.columns:
        raise ValueError(f"covariates has no column {unit!r}")
    base = {c: covariates[c].to_numpy(dtype=float) for c in predictors}
    units: list[tuple[str, np.ndarray]] = []
    if unit is not None:
        uv = covariates[unit].astype(str).to_numpy()
        units += [(str(v), uv == v) for v in pd.unique(uv)]
    units.append(("all", np.ones(m.shape[0], dtype=bool)))
    rows = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for uname, sel in units:
            for j, g in enumerate(names):
                y, pj = m[sel, j], p[sel, j]
                cache: dict[bytes, float] = {}
                for c in predictors:
                    rows.append(
                        {"unit": uname, "gene": g, "predictor": c,
                         **_ols_row(y, base[c][sel], pj, cache)}
                    )
    df = pd.DataFrame(rows, columns=list(OLS_COLUMNS))
    df["n_spots"] = df["n_spots"].astype(int)
    return df
