"""Evaluation metrics for held-out predictions: per-gene scores (ST-Net and HEST style) and clusters.

Inputs are prediction AnnData objects, one per held-out section: ``X`` holds the measured
target values (spots x genes), ``layers["predicted"]`` the predictions, ``obs`` the columns
``sample_id``, ``patient_id``, ``fold``, ``array_row``, ``array_col`` and ``annotation``
(``"tumor"``, ``"non"`` or ``""``).

Conventions
-----------
* A correlation or AUROC is NaN (never 0) when the measured or predicted values of a gene are
  constant over the evaluated spots or fewer than 3 spots are left; RMSE is still reported.
  No warnings are emitted for these cases.
* Spots marked ``obs["qc_failed"]`` (the spots of an imputed section whose measurement failed
  QC on tissue, predicted but not measured: :func:`stpredict.learn.folds.predict_fold`) are left
  out of every score (:func:`scored_spots`, applied by every scoring entry point).
* ``"smoothed"`` targets replace the *measured* values by the ST-Net neighbourhood mean
  (:func:`smooth_measurements`, computed per section); predictions are left as they are.
* In :func:`summarise` every scored unit is a trial of the sign test: a unit whose correlation
  is undefined (NaN) counts as a trial that is not positive (ST-Net's consistency count), and is
  reported in ``n_undefined``; it is not dropped. ``median_pearson`` is the median over the
  units with a defined correlation.
* The headline significance is ST-Net's: Holm-adjusted one-sided binomial p below ``alpha``
  (``significant``); Benjamini-Hochberg q values are reported beside it (``q_bh``).
* :func:`pearson_columns` is the one Pearson correlation of the package (metrics, training's
  validation r, the latent-space neighbour test, the figures): per column, over the rows where
  both values are finite; NaN (no warning) when fewer than 3 such rows remain or either column
  is constant over them.

Cluster task
------------
Prediction files of a ``clusters`` experiment hold the one-hot measured cluster in ``X``, the
class probabilities (softmax; rows sum to 1) in ``layers["predicted"]``, the string labels in
``obs["cluster_true"]`` / ``obs["cluster_pred"]`` and the class labels in column order in
``uns["stpredict"]["classes"]``; :func:`cluster_metrics`, :func:`cluster_overview`,
:func:`confusion_table` and :func:`score_cluster_units` score them (DeepSpaCE's tables).

* Labels are compared as strings, so ``1`` and ``"1"`` are the same class; labels may have gaps
  (``"1"``, ``"3"``, ``"7"``). The predicted class is the arg-max of the probabilities (the first
  column wins ties).
* Precision, recall and F1 follow :func:`sklearn.metrics.precision_recall_fscore_support` with
  ``zero_division=0`` (a class that is never predicted has precision 0). A class that is neither
  present in the true labels nor predicted has nothing to evaluate: its precision, recall, F1
  and AUROC are NaN and it is left out of the ``micro``, ``macro`` and ``weighted`` averages.
* A one-vs-rest AUROC is NaN (never 0 or 0.5) when the class is absent from the true labels or
  is the true label of every spot; NaN AUROCs are left out of the macro and weighted means.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse, stats

from stpredict.errors import InputError
from stpredict.ingest.geometry import hex_neighbors, square_neighbors
from stpredict.ingest.section import sample_id_of
from stpredict.vocab import STRATA, annotations

__all__ = [
    "scored_spots",
    "METRIC_COLUMNS",
    "MIN_STRATUM_SPOTS",
    "smooth_measurements",
    "auroc_extremes",
    "gene_metrics",
    "score_units",
    "pooled_metrics",
    "summarise",
    "summarise_strata",
    "table1",
    "dense_2d",
    "pearson_columns",
    "score_experiment",
    "score_folds",
    "compare_methods",
    "method_overview",
    "COMPARISON_COLUMNS",
    "CLUSTER_COLUMNS",
    "OVERVIEW_COLUMNS",
    "cluster_metrics",
    "cluster_overview",
    "confusion_table",
    "score_cluster_units",
]

#: Per-gene metric columns produced by :func:`gene_metrics`.
METRIC_COLUMNS: tuple[str, ...] = ("pearson", "spearman", "rmse", "auroc", "n_spots")
#: Smallest number of spots for a tumour / normal stratum to be scored.
MIN_STRATUM_SPOTS = 10


def scored_spots(adata: Any) -> Any:
    """Return the spots a score may use: all but those marked ``obs["qc_failed"]``.

    QC-failed spots of an imputed section carry a prediction but no valid measurement (NaN in
    ``X``); metrics, baselines, the OLS table, the latent space and the attributions leave them
    out. Returns ``adata`` itself when no spot is marked (or the column is absent), else a copy.
    """
    if "qc_failed" not in adata.obs:
        return adata
    failed = adata.obs["qc_failed"].to_numpy(dtype=bool)
    return adata[~failed].copy() if failed.any() else adata


def dense_2d(x: Any) -> np.ndarray:
    """Return ``x`` (dense or scipy sparse) as a float64 2-D array (a vector becomes a column)."""
    if sparse.issparse(x):
        x = x.toarray()
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    return arr


# --------------------------------------------------------------------------- smoothing
def smooth_measurements(
    X: Any,
    array_rows: Sequence[float] | np.ndarray,
    array_cols: Sequence[float] | np.ndarray,
    platform: str,
) -> np.ndarray:
    """ST-Net smoothing of measured values over each spot's neighbourhood.

    Parameters
    ----------
    X
        ``(n_spots, n_genes)`` measured values (dense or sparse; a 1-D vector is one gene).
    array_rows, array_cols
        Integer array coordinates of the spots of one section.
    platform
        ``"st"``: mean of the spot and its existing neighbours in the 3x3 square window
        (up to 9 spots). ``"visium"``: mean of the spot and its existing six hexagonal
        neighbours (up to 7 spots). Only spots present in ``X`` count, so edge spots average
        over fewer values.

    Returns
    -------
    numpy.ndarray
        ``(n_spots, n_genes)`` smoothed values.
    """
    arr = dense_2d(X)
    if platform == "st":
        nbrs = square_neighbors(array_rows, array_cols, connectivity=8)
    elif platform == "visium":
        nbrs = hex_neighbors(array_rows, array_cols)
    else:
        raise ValueError(f"unknown platform {platform!r} (visium | st)")
    n = arr.shape[0]
    if len(nbrs) != n:
        raise ValueError("X and the array coordinates differ in the number of spots")
    if n == 0:
        return arr.copy()
    rows = np.concatenate([np.arange(n)] + [np.full(len(nb), i) for i, nb in enumerate(nbrs)])
    cols = np.concatenate([np.arange(n)] + list(nbrs))
    w = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    counts = np.asarray(w.sum(axis=1)).ravel()
    return np.asarray(w @ arr) / counts[:, None]


# --------------------------------------------------------------------------- per-gene metrics
def _is_constant(v: np.ndarray) -> bool:
    return v.size == 0 or bool(np.all(v == v[0]))


def _pearson(m: np.ndarray, p: np.ndarray) -> float:
    """Pearson r of two 1-D vectors over their finite pairs (NaN convention of :func:`pearson_columns`)."""
    ok = np.isfinite(m) & np.isfinite(p)
    m, p = m[ok], p[ok]
    if m.size < 3 or _is_constant(m) or _is_constant(p):
        return float("nan")
    with warnings.catch_warnings():  # nearly constant values: r as computed, no warning
        warnings.simplefilter("ignore", stats.NearConstantInputWarning)
        return float(stats.pearsonr(m, p)[0])


def pearson_columns(a: Any, b: Any) -> np.ndarray:
    """Pearson r of each column of ``a`` with the same column of ``b``: the package's one correlation.

    Parameters
    ----------
    a, b
        ``(n, k)`` arrays of the same shape (dense or sparse; a 1-D vector is one column).

    Returns
    -------
    numpy.ndarray
        ``(k,)`` float64. Each column is correlated over the rows where both values are finite;
        NaN (never 0, no warning) when fewer than 3 such rows remain or either column is
        constant over them (:func:`scipy.stats.pearsonr` otherwise).
    """
    x, y = dense_2d(a), dense_2d(b)
    if x.shape != y.shape:
        raise ValueError(f"pearson_columns: shapes {x.shape} and {y.shape} differ")  # internal
    return np.array([_pearson(x[:, j], y[:, j]) for j in range(x.shape[1])], dtype=np.float64)


def auroc_extremes(measured: np.ndarray, predicted: np.ndarray) -> float:
    """AUROC of ``predicted`` separating the top from the bottom quarter of ``measured``.

    Parameters
    ----------
    measured, predicted
        1-D arrays of equal length (finite values).

    Returns
    -------
    float
        Area under the ROC curve (ties in ``predicted`` count one half). Negatives are the
        spots with ``measured <= q25``, positives those with ``measured >= q75`` that are not
        negatives (``q25``/``q75`` from :func:`numpy.quantile`, linear interpolation); spots in
        between are ignored. Spots tied at a threshold are therefore always included, and when
        ``q25 == q75`` the positives are the spots strictly above it. NaN when either class is
        empty or either input is constant.
    """
    m = np.asarray(measured, dtype=float)
    p = np.asarray(predicted, dtype=float)
    if m.size < 2 or _is_constant(m) or _is_constant(p):
        return float("nan")
    q25, q75 = np.quantile(m, [0.25, 0.75])
    neg = m <= q25
    pos = (m >= q75) & ~neg
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(np.concatenate([p[pos], p[neg]]))
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _one_gene(m: np.ndarray, p: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(m) & np.isfinite(p)
    m, p = m[ok], p[ok]
    n = int(m.size)
    rmse = float(np.sqrt(np.mean((m - p) ** 2))) if n else float("nan")
    out = {"pearson": np.nan, "spearman": np.nan, "rmse": rmse, "auroc": np.nan, "n_spots": n}
    if n < 3 or _is_constant(m) or _is_constant(p):
        return out
    out["pearson"] = _pearson(m, p)
    rm, rp = stats.rankdata(m), stats.rankdata(p)
    out["spearman"] = float(np.corrcoef(rm, rp)[0, 1])
    out["auroc"] = auroc_extremes(m, p)
    return out


def gene_metrics(
    measured: Any, predicted: Any, genes: Sequence[str] | pd.Index | None = None
) -> pd.DataFrame:
    """Per-gene agreement between measured and predicted values.

    Parameters
    ----------
    measured, predicted
        ``(n_spots, n_genes)`` arrays of the same shape (dense or sparse).
    genes
        Gene names for the index (default ``0..n_genes-1``).

    Returns
    -------
    pandas.DataFrame
        Indexed by gene, columns ``pearson``, ``spearman``, ``rmse``, ``auroc`` (see
        :func:`auroc_extremes`) and ``n_spots`` (spots with finite measured and predicted
        values). Correlations and AUROC are NaN when a gene is constant in the measured or
        predicted values or fewer than 3 spots remain; ``rmse`` is always defined for at
        least one spot. No warnings are emitted.
    """
    m = dense_2d(measured)
    p = dense_2d(predicted)
    if m.shape != p.shape:
        raise ValueError(f"measured {m.shape} and predicted {p.shape} differ in shape")
    idx = pd.Index(genes if genes is not None else range(m.shape[1]), name="gene")
    if len(idx) != m.shape[1]:
        raise ValueError("genes does not match the number of columns")
    rows = [_one_gene(m[:, j], p[:, j]) for j in range(m.shape[1])]
    df = pd.DataFrame(rows, index=idx, columns=list(METRIC_COLUMNS))
    df["n_spots"] = df["n_spots"].astype(int)
    return df


# --------------------------------------------------------------------------- AnnData scoring
#: fix of an inconsistent set of prediction files (a run interrupted between two versions)
_RERUN_FIX = "rerun snakemake, which rebuilds the experiment's prediction files from one run"


def _genes(adatas: Sequence[Any]) -> pd.Index:
    if not adatas:
        raise ValueError("no prediction AnnData objects given")
    genes = pd.Index(adatas[0].var_names)
    for ad in adatas[1:]:
        if not pd.Index(ad.var_names).equals(genes):
            raise InputError(
                "prediction files differ in their genes (var_names): they come from different runs",
                sample=sample_id_of(ad) or None,
                fix=_RERUN_FIX,
            )
    return genes


def _shared_genes(adatas: Sequence[Any]) -> list[Any]:
    """Restrict prediction files to the genes they all have (folds may select different genes)."""
    if not adatas:
        raise ValueError("no prediction AnnData objects given")
    shared = pd.Index(adatas[0].var_names)
    for ad in adatas[1:]:
        shared = shared.intersection(pd.Index(ad.var_names), sort=False)
    return [ad if pd.Index(ad.var_names).equals(shared) else ad[:, shared] for ad in adatas]


def _transform_name(ad: Any) -> str | None:
    try:
        return str(ad.uns["stpredict"]["target_transform"]["name"])
    except (KeyError, TypeError):
        return None


def _section_targets(ad: Any, platform: str | None) -> dict[str, np.ndarray]:
    """Measured targets: raw, and smoothed (``layers["measured_smoothed"]`` when the file has it).

    Prediction files carry the smoothed measurements computed from every kept spot of the
    section (:func:`stpredict.learn.folds.smoothed_targets`); without that layer the smoothing is
    over the spots of ``ad``.
    """
    out = {"raw": dense_2d(ad.X)}
    if platform is not None:
        if "measured_smoothed" in getattr(ad, "layers", {}):
            out["smoothed"] = dense_2d(ad.layers["measured_smoothed"])
        else:
            out["smoothed"] = smooth_measurements(
                out["raw"],
                ad.obs["array_row"].to_numpy(),
                ad.obs["array_col"].to_numpy(),
                platform,
            )
    return out


#: held-out units :func:`score_units` can score
UNITS: tuple[str, ...] = ("patient_id", "sample_id", "sample_fold")


def _unit_labels(ad: Any, unit: str) -> np.ndarray:
    if unit == "sample_fold":
        return (ad.obs["sample_id"].astype(str) + "/" + ad.obs["fold"].astype(str)).to_numpy()
    return ad.obs[unit].astype(str).to_numpy()


def score_units(
    adatas: Iterable[Any],
    platform: str,
    unit: str = "patient_id",
    strata: bool = True,
) -> pd.DataFrame:
    """Score every held-out unit (patient or section) gene by gene.

    Parameters
    ----------
    adatas
        Prediction AnnData objects (one per held-out section, same genes).
    platform
        ``"st"`` or ``"visium"``; sets the smoothing neighbourhood.
    unit
        ``obs`` column defining a unit, ``"patient_id"`` or ``"sample_id"``, or
        ``"sample_fold"``: a section within one fold (``"{sample_id}/{fold}"``; DeepSpaCE's
        per-fold scores of a within-section cross-validation). Spots of all sections of a unit
        are pooled (smoothing is done per section first).
    strata
        Also score the ``"tumor"`` (annotation ``"tumor"``) and ``"normal"`` (annotation
        ``"non"``) spots of a unit, when it has annotations and the stratum has at least
        :data:`MIN_STRATUM_SPOTS` spots.

    Returns
    -------
    pandas.DataFrame
        One row per gene x unit x ``target`` (``"raw"`` | ``"smoothed"``) x ``stratum``
        (``"all"`` | ``"tumor"`` | ``"normal"``), with columns ``gene``, ``unit``,
        ``unit_by``, ``target``, ``stratum``, ``transform``, the metric columns of
        :func:`gene_metrics` (``n_spots`` included).
    """
    adatas = [scored_spots(a) for a in adatas]
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if not adatas:
        raise ValueError("no prediction AnnData objects given")
    # genes are fitted per fold, so units may differ in their genes; within a unit they agree
    pieces: dict[
        str, list[tuple[str, dict[str, np.ndarray], np.ndarray, np.ndarray, pd.Index]]
    ] = {}
    for ad in adatas:
        targets = _section_targets(ad, platform)
        pred = dense_2d(ad.layers["predicted"])
        ann = annotations(ad)
        transform = _transform_name(ad) or ""
        units = _unit_labels(ad, unit)
        for u in pd.unique(units):
            sel = units == u
            pieces.setdefault(u, []).append(
                (
                    transform,
                    {k: v[sel] for k, v in targets.items()},
                    pred[sel],
                    ann[sel],
                    pd.Index(ad.var_names),
                )
            )
    frames = []
    for u, parts in pieces.items():
        genes = parts[0][4]
        if any(not pt[4].equals(genes) for pt in parts[1:]):
            raise InputError(
                f"prediction files of unit {u!r} differ in their genes (var_names): "
                "they come from different runs",
                fix=_RERUN_FIX,
            )
        pred = np.vstack([pt[2] for pt in parts])
        ann = np.concatenate([pt[3] for pt in parts])
        transforms = sorted({pt[0] for pt in parts if pt[0]})
        masks: dict[str, np.ndarray] = {"all": np.ones(len(ann), dtype=bool)}
        if strata and np.any(ann != ""):
            for name, label in STRATA.items():
                sel = ann == label
                if sel.sum() >= MIN_STRATUM_SPOTS:
                    masks[name] = sel
        for target in parts[0][1]:
            meas = np.vstack([pt[1][target] for pt in parts])
            for stratum, sel in masks.items():
                df = gene_metrics(meas[sel], pred[sel], genes).reset_index()
                df.insert(1, "unit", u)
                df.insert(2, "unit_by", unit)
                df.insert(3, "target", target)
                df.insert(4, "stratum", stratum)
                df.insert(5, "transform", ",".join(transforms))
                frames.append(df)
    return pd.concat(frames, ignore_index=True)


def pooled_metrics(adatas: Iterable[Any], platform: str | None = None) -> pd.DataFrame:
    """Metrics over all test spots pooled across sections (HEST style).

    Parameters
    ----------
    adatas
        Prediction AnnData objects (same genes).
    platform
        When given (``"st"`` | ``"visium"``), smoothed targets are scored as well.

    Returns
    -------
    pandas.DataFrame
        Columns ``gene``, ``target`` and the metric columns of :func:`gene_metrics`.
    """
    adatas = _shared_genes([scored_spots(a) for a in adatas])
    genes = _genes(adatas)
    per = [_section_targets(ad, platform) for ad in adatas]
    pred = np.vstack([dense_2d(ad.layers["predicted"]) for ad in adatas])
    frames = []
    for target in per[0]:
        meas = np.vstack([t[target] for t in per])
        df = gene_metrics(meas, pred, genes).reset_index()
        df.insert(1, "target", target)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- aggregates
def _binom_p(k: int, n: int) -> float:
    if n == 0:
        return float("nan")
    return float(stats.binomtest(k, n, 0.5, alternative="greater").pvalue)


def _adjust(p: pd.Series, method: str) -> pd.Series:
    from statsmodels.stats.multitest import multipletests

    out = pd.Series(np.nan, index=p.index, dtype=float)
    ok = p.notna()
    if ok.any():
        out[ok] = multipletests(p[ok].to_numpy(), method=method)[1]
    return out


def _sign_tests(df: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per target x gene sign tests of the units' correlations (see the module conventions)."""
    rows = []
    for (target, gene), g in df.groupby(["target", "gene"], sort=False):
        r_all = g["pearson"].to_numpy(dtype=float)
        r = r_all[np.isfinite(r_all)]
        n_units, n_pos = int(r_all.size), int((r > 0).sum())
        rows.append(
            {
                "target": target,
                "gene": gene,
                "median_pearson": float(np.median(r)) if r.size else float("nan"),
                "n_units": n_units,
                "n_positive": n_pos,
                "n_undefined": int(r_all.size - r.size),
                "p_binom": _binom_p(n_pos, n_units),
            }
        )
    out = pd.DataFrame(
        rows,
        columns=[
            "target",
            "gene",
            "median_pearson",
            "n_units",
            "n_positive",
            "n_undefined",
            "p_binom",
        ],
    )
    out["p_holm"] = np.nan
    out["q_bh"] = np.nan
    for _, idx in out.groupby("target", sort=False).groups.items():
        out.loc[idx, "p_holm"] = _adjust(out.loc[idx, "p_binom"], "holm")
        out.loc[idx, "q_bh"] = _adjust(out.loc[idx, "p_binom"], "fdr_bh")
    out["significant"] = (out["p_holm"] < alpha).to_numpy(dtype=bool)
    return out


def summarise(
    per_gene: pd.DataFrame, pooled: pd.DataFrame | None = None, alpha: float = 0.05
) -> pd.DataFrame:
    """Per-gene summary over held-out units, with sign tests and pooled correlations.

    Parameters
    ----------
    per_gene
        Output of :func:`score_units`; only ``stratum == "all"`` rows are used.
    pooled
        Output of :func:`pooled_metrics` (optional); its ``pearson`` becomes
        ``pooled_pearson``, matched on ``gene`` and ``target``.
    alpha
        Family-wise error rate of the Holm-adjusted headline test (ST-Net: 0.05).

    Returns
    -------
    pandas.DataFrame
        One row per ``target`` x ``gene`` with ``median_pearson`` (median over units with a
        defined correlation), ``n_units`` (units scored: every one is a trial), ``n_positive``
        (units with r > 0), ``n_undefined`` (units whose r is undefined: trials that are not
        positive), ``p_binom`` (one-sided binomial test of ``n_positive`` out of ``n_units``
        against 0.5; NaN when no unit was scored), ``p_holm`` and ``q_bh`` (Holm and
        Benjamini-Hochberg over the genes of a target with a p value), ``significant``
        (``p_holm < alpha``, ST-Net's headline count) and ``pooled_pearson`` (NaN without
        ``pooled``).
    """
    out = _sign_tests(per_gene[per_gene["stratum"] == "all"], alpha)
    if pooled is not None:
        pp = pooled[["gene", "target", "pearson"]].rename(columns={"pearson": "pooled_pearson"})
        out = out.merge(pp, on=["gene", "target"], how="left")
    else:
        out["pooled_pearson"] = np.nan
    return out


def summarise_strata(per_gene: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """ST-Net's tumour-only and normal-only consistency counts.

    The sign tests of :func:`summarise` computed separately on the ``tumor`` and ``normal``
    strata of :func:`score_units` (a unit enters a stratum's test when it has at least
    :data:`MIN_STRATUM_SPOTS` spots of it); Holm and BH are applied within each stratum and
    target. Columns: ``stratum`` then those of :func:`summarise` without ``pooled_pearson``.
    The table is empty (with its header) when no unit is annotated.
    """
    frames = []
    for stratum in STRATA:
        sub = per_gene[per_gene["stratum"] == stratum]
        if sub.empty:
            continue
        t = _sign_tests(sub, alpha)
        t.insert(0, "stratum", stratum)
        frames.append(t)
    if not frames:
        cols = [
            "stratum",
            "target",
            "gene",
            "median_pearson",
            "n_units",
            "n_positive",
            "n_undefined",
            "p_binom",
            "p_holm",
            "q_bh",
            "significant",
        ]
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)


def table1(summary: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """ST-Net Table 1: the best-predicted genes, ranked by median correlation over units.

    Parameters
    ----------
    summary
        Output of :func:`summarise`.
    n
        Number of genes.

    Returns
    -------
    pandas.DataFrame
        Columns ``gene``, ``median_r`` (raw target), ``n_consistent`` (units with r > 0),
        ``n_units``, ``p_holm``, ``median_r_smoothed`` (NaN without smoothed rows); sorted by
        ``median_r`` (descending, ties by gene name), as ST-Net's Table 1.
    """
    raw = summary[summary["target"] == "raw"].set_index("gene")
    sm = summary[summary["target"] == "smoothed"].set_index("gene")["median_pearson"]
    tab = pd.DataFrame(
        {
            "gene": raw.index.astype(str),
            "median_r": raw["median_pearson"].to_numpy(dtype=float),
            "n_consistent": raw["n_positive"].to_numpy(dtype=int),
            "n_units": raw["n_units"].to_numpy(dtype=int),
            "p_holm": raw["p_holm"].to_numpy(dtype=float),
            "median_r_smoothed": sm.reindex(raw.index).to_numpy(dtype=float),
        }
    )
    tab = tab.sort_values(["median_r", "gene"], ascending=[False, True], na_position="last")
    return tab.head(n).reset_index(drop=True)


# ------------------------------------------------------------------------ experiments
def score_experiment(
    adatas: Iterable[Any],
    platforms: dict[str, str],
    unit: str = "patient_id",
    alpha: float = 0.05,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-gene x unit metrics and the per-gene summary of one method's predictions.

    Parameters
    ----------
    adatas
        Prediction AnnData objects, one per held-out section (CNN or baseline).
    platforms
        Platform of every section id (sets the smoothing neighbourhood).
    unit
        ``"patient_id"`` or ``"sample_id"``.
    alpha
        See :func:`summarise`.

    Returns
    -------
    per_gene, summary : pandas.DataFrame
        :func:`score_units` (all platforms concatenated) and :func:`summarise` with the
        pooled (HEST) correlations; pooled smoothed targets only when one platform is present.
    """
    by_platform: dict[str, list[Any]] = {}
    for a in adatas:
        by_platform.setdefault(platforms[str(a.obs["sample_id"].iloc[0])], []).append(a)
    per_gene = pd.concat(
        [score_units(ads, p, unit=unit) for p, ads in by_platform.items()], ignore_index=True
    )
    if len(by_platform) == 1:
        ((platform, ads),) = by_platform.items()
        pooled = pooled_metrics(ads, platform=platform)
    else:
        pooled = pooled_metrics([a for ads in by_platform.values() for a in ads])
    return per_gene, summarise(per_gene, pooled, alpha=alpha)


def score_folds(
    adatas: Iterable[Any], platforms: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """DeepSpaCE's per-fold scores: every held-out section scored within each fold, mean ± SD.

    Parameters
    ----------
    adatas
        Prediction AnnData objects with ``obs["fold"]`` (one per held-out section).
    platforms
        Platform of every section.

    Returns
    -------
    per_fold : pandas.DataFrame
        :func:`score_units` with ``unit="sample_fold"`` (stratum ``all``), plus ``sample_id`` and
        ``fold`` columns.
    folds : pandas.DataFrame
        One row per ``target`` x ``sample_id`` x ``gene``: ``n_folds`` (folds with a defined r),
        ``mean_pearson``, ``sd_pearson`` (sample SD over folds, ddof 1; NaN for one fold),
        likewise ``spearman``, ``rmse`` and ``auroc`` (DeepSpaCE reported r as mean (SD) over
        its five folds).
    """
    by_platform: dict[str, list[Any]] = {}
    for a in adatas:
        by_platform.setdefault(platforms[str(a.obs["sample_id"].iloc[0])], []).append(a)
    per = pd.concat(
        [score_units(ads, p, unit="sample_fold", strata=False) for p, ads in by_platform.items()],
        ignore_index=True,
    )
    parts = per["unit"].str.rsplit("/", n=1, expand=True)
    per.insert(2, "sample_id", parts[0])
    per.insert(3, "fold", parts[1])
    rows = []
    for (target, sample, gene), g in per.groupby(["target", "sample_id", "gene"], sort=False):
        row: dict[str, Any] = {
            "target": target,
            "sample_id": sample,
            "gene": gene,
            "n_folds": int(g["pearson"].notna().sum()),
        }
        for m in ("pearson", "spearman", "rmse", "auroc"):
            v = g[m].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            row[f"mean_{m}"] = float(v.mean()) if v.size else float("nan")
            row[f"sd_{m}"] = float(v.std(ddof=1)) if v.size > 1 else float("nan")
        rows.append(row)
    return per, pd.DataFrame(rows)


#: columns of :func:`compare_methods`
COMPARISON_COLUMNS: tuple[str, ...] = (
    "gene", "method", "target", "median_pearson", "pooled_pearson", "n_units", "n_positive",
    "p_holm", "q_bh", "significant", "median_rmse", "median_auroc",
)  # fmt: skip


def compare_methods(results: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """One row per gene x method x target: the CNN and the baselines side by side.

    Parameters
    ----------
    results
        ``{method: (per_gene, summary)}`` as returned by :func:`score_experiment`.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COMPARISON_COLUMNS`; ``median_rmse`` and ``median_auroc`` are medians
        over units (stratum ``all``, NaN-aware).
    """
    frames = []
    for method, (per_gene, summary) in results.items():
        pg = per_gene[per_gene["stratum"] == "all"]
        med = pg.groupby(["target", "gene"], sort=False)[["rmse", "auroc"]].median()
        med = med.rename(columns={"rmse": "median_rmse", "auroc": "median_auroc"}).reset_index()
        s = summary.merge(med, on=["target", "gene"], how="left")
        s.insert(1, "method", method)
        frames.append(s[list(COMPARISON_COLUMNS)])
    return pd.concat(frames, ignore_index=True)


def method_overview(
    comparison: pd.DataFrame, genes_by_role: dict[str, list[str]] | None = None, target: str = "raw"
) -> pd.DataFrame:
    """One row per method (x gene role): medians over genes of the per-gene scores.

    Columns ``method``, ``genes`` (role or ``"all"``), ``n_genes``, ``median_pearson`` (median
    over genes of the per-gene median r), ``mean_pearson``, ``median_pooled_pearson``,
    ``n_significant`` (Holm, the summary's ``significant``), ``n_significant_bh`` (BH q < 0.05),
    ``median_rmse``, ``median_auroc``.
    """
    comp = comparison[comparison["target"] == target]
    groups = {"all": None, **(genes_by_role or {})}
    rows = []
    for method, g in comp.groupby("method", sort=False):
        for role, genes in groups.items():
            sub = g if genes is None else g[g["gene"].isin(genes)]
            if sub.empty:
                continue
            rows.append(
                {
                    "method": method,
                    "genes": role,
                    "n_genes": int(len(sub)),
                    "median_pearson": float(sub["median_pearson"].median()),
                    "mean_pearson": float(sub["median_pearson"].mean()),
                    "median_pooled_pearson": float(sub["pooled_pearson"].median()),
                    "n_significant": int(sub["significant"].astype(bool).sum()),
                    "n_significant_bh": int((sub["q_bh"] < 0.05).sum()),
                    "median_rmse": float(sub["median_rmse"].median()),
                    "median_auroc": float(sub["median_auroc"].median()),
                }
            )
    return pd.DataFrame(rows)


#: Columns of :func:`cluster_metrics`.
CLUSTER_COLUMNS: tuple[str, ...] = (
    "class",
    "precision",
    "recall",
    "f1",
    "auroc",
    "support",
    "n_pred",
)


#: Keys of :func:`cluster_overview` (and columns of the overview of :func:`score_cluster_units`
#: after ``unit``).
OVERVIEW_COLUMNS: tuple[str, ...] = (
    "n_spots",
    "n_outside",
    "n_classes_true",
    "accuracy",
    "majority_class",
    "chance_accuracy",
    "kappa",
    "macro_f1",
    "macro_auroc",
    "micro_auroc",
)


_AVERAGES = ("micro", "macro", "weighted")


_MISSING_LABELS = frozenset({"", "nan", "none", "<na>"})


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
    p = dense_2d(proba)
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
    weighted_auc = float(np.average(auroc[ok], weights=support[ok])) if ok.any() else float("nan")
    rows: list[dict[str, Any]] = [
        {
            "class": c,
            "precision": prec[j],
            "recall": rec[j],
            "f1": f1[j],
            "auroc": auroc[j],
            "support": support[j],
            "n_pred": n_pred[j],
        }
        for j, c in enumerate(cls)
    ]
    for a, auc in zip(_AVERAGES, (micro_auc, macro_auc, weighted_auc), strict=True):
        pr, rc, ff = avg[a]
        rows.append(
            {
                "class": a,
                "precision": float(pr),
                "recall": float(rc),
                "f1": float(ff),
                "auroc": auc,
                "support": int(support.sum()),
                "n_pred": int(n),
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
        return [v[len("cluster_") :] if v.startswith("cluster_") else v for v in names]


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
    adatas = [scored_spots(a) for a in adatas]
    if not adatas:
        raise ValueError("no prediction AnnData objects given")
    classes: list[str] = []
    for ad in adatas:
        classes += [c for c in _adata_classes(ad) if c not in classes]
    col = {c: j for j, c in enumerate(classes)}
    ys, ps, us = [], [], []
    for ad in adatas:
        cls = _adata_classes(ad)
        p = dense_2d(ad.layers["predicted"])
        if p.shape[1] != len(cls):
            raise InputError(
                f"predicted has {p.shape[1]} columns but the file lists {len(cls)} classes",
                sample=sample_id_of(ad) or None,
                fix=_RERUN_FIX,
            )
        full = np.zeros((p.shape[0], len(classes)))
        full[:, [col[c] for c in cls]] = p
        if unit not in ad.obs:
            raise InputError(
                f"the prediction file has no obs column {unit!r}",
                sample=sample_id_of(ad) or None,
                fix=_RERUN_FIX,
            )
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
            {
                "unit": name,
                **cluster_overview(y[use], p[use], classes),
                "n_excluded": int((sel & ~keep).sum()),
            }
        )
    if not frames:
        raise InputError(
            "no held-out spot has a true cluster label among the classes the "
            "models were trained on",
            fix="check exclude_clusters and cluster_map: the test sections' clusters "
            "must be among the training sections' ones",
        )
    overview = pd.DataFrame(rows, columns=["unit", *OVERVIEW_COLUMNS, "n_excluded"])
    return pd.concat(frames, ignore_index=True), overview
