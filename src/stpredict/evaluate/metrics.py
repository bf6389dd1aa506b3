"""Evaluation metrics for held-out predictions (ST-Net and HEST style).

Inputs are prediction AnnData objects, one per held-out section: ``X`` holds the measured
target values (spots x genes), ``layers["predicted"]`` the predictions, ``obs`` the columns
``sample_id``, ``patient_id``, ``fold``, ``array_row``, ``array_col`` and ``annotation``
(``"tumor"``, ``"non"`` or ``""``).

Conventions
-----------
* A correlation or AUROC is NaN (never 0) when the measured or predicted values of a gene are
  constant over the evaluated spots or fewer than 3 spots are left; RMSE is still reported.
  No warnings are emitted for these cases.
* ``"smoothed"`` targets replace the *measured* values by the ST-Net neighbourhood mean
  (:func:`smooth_measurements`, computed per section); predictions are left as they are.
* In :func:`summarise` every scored unit is a trial of the sign test: a unit whose correlation
  is undefined (NaN) counts as a trial that is not positive (ST-Net's consistency count), and is
  reported in ``n_undefined``; it is not dropped. ``median_pearson`` is the median over the
  units with a defined correlation.
* The headline significance is ST-Net's: Holm-adjusted one-sided binomial p below ``alpha``
  (``significant``); Benjamini-Hochberg q values are reported beside it (``q_bh``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse, stats

from stpredict.geometry import hex_neighbors, square_neighbors

__all__ = [
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
    "score_experiment",
    "score_folds",
    "compare_methods",
    "method_overview",
    "COMPARISON_COLUMNS",
]

#: Per-gene metric columns produced by :func:`gene_metrics`.
METRIC_COLUMNS: tuple[str, ...] = ("pearson", "spearman", "rmse", "auroc", "n_spots")
#: Smallest number of spots for a tumour / normal stratum to be scored.
MIN_STRATUM_SPOTS = 10
_STRATA: dict[str, str] = {"tumor": "tumor", "normal": "non"}


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
    out["pearson"] = float(stats.pearsonr(m, p)[0])
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
def _genes(adatas: Sequence[Any]) -> pd.Index:
    if not adatas:
        raise ValueError("no prediction AnnData objects given")
    genes = pd.Index(adatas[0].var_names)
    for ad in adatas[1:]:
        if not pd.Index(ad.var_names).equals(genes):
            raise ValueError("prediction files differ in their genes (var_names)")
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
    section (:func:`stpredict.experiments.smoothed_targets`); without that layer the smoothing is
    over the spots of ``ad``.
    """
    out = {"raw": dense_2d(ad.X)}
    if platform is not None:
        if "measured_smoothed" in getattr(ad, "layers", {}):
            out["smoothed"] = dense_2d(ad.layers["measured_smoothed"])
        else:
            out["smoothed"] = smooth_measurements(
                out["raw"], ad.obs["array_row"].to_numpy(), ad.obs["array_col"].to_numpy(),
                platform,
            )
    return out


def _annotations(ad: Any) -> np.ndarray:
    if "annotation" not in ad.obs:
        return np.full(ad.n_obs, "", dtype=object)
    return ad.obs["annotation"].astype(object).fillna("").astype(str).to_numpy()


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
    adatas = list(adatas)
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if not adatas:
        raise ValueError("no prediction AnnData objects given")
    # genes are fitted per fold, so units may differ in their genes; within a unit they agree
    pieces: dict[str, list[tuple[str, dict[str, np.ndarray], np.ndarray, np.ndarray, pd.Index]]] = {}
    for ad in adatas:
        targets = _section_targets(ad, platform)
        pred = dense_2d(ad.layers["predicted"])
        ann = _annotations(ad)
        transform = _transform_name(ad) or ""
        units = _unit_labels(ad, unit)
        for u in pd.unique(units):
            sel = units == u
            pieces.setdefault(u, []).append(
                (transform, {k: v[sel] for k, v in targets.items()}, pred[sel], ann[sel],
                 pd.Index(ad.var_names))
            )
    frames = []
    for u, parts in pieces.items():
        genes = parts[0][4]
        if any(not pt[4].equals(genes) for pt in parts[1:]):
            raise ValueError(f"prediction files of unit {u!r} differ in their genes (var_names)")
        pred = np.vstack([pt[2] for pt in parts])
        ann = np.concatenate([pt[3] for pt in parts])
        transforms = sorted({pt[0] for pt in parts if pt[0]})
        masks: dict[str, np.ndarray] = {"all": np.ones(len(ann), dtype=bool)}
        if strata and np.any(ann != ""):
            for name, label in _STRATA.items():
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
    adatas = _shared_genes(list(adatas))
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
        columns=["target", "gene", "median_pearson", "n_units", "n_positive", "n_undefined",
                 "p_binom"],
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
    for stratum in _STRATA:
        sub = per_gene[per_gene["stratum"] == stratum]
        if sub.empty:
            continue
        t = _sign_tests(sub, alpha)
        t.insert(0, "stratum", stratum)
        frames.append(t)
    if not frames:
        cols = ["stratum", "target", "gene", "median_pearson", "n_units", "n_positive",
                "n_undefined", "p_binom", "p_holm", "q_bh", "significant"]
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
    adatas: Iterable[Any], platforms: dict[str, str], unit: str = "patient_id",
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
    per_gene = pd.concat([score_units(ads, p, unit=unit) for p, ads in by_platform.items()],
                         ignore_index=True)
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
    per = pd.concat([score_units(ads, p, unit="sample_fold", strata=False)
                     for p, ads in by_platform.items()], ignore_index=True)
    parts = per["unit"].str.rsplit("/", n=1, expand=True)
    per.insert(2, "sample_id", parts[0])
    per.insert(3, "fold", parts[1])
    rows = []
    for (target, sample, gene), g in per.groupby(["target", "sample_id", "gene"], sort=False):
        row: dict[str, Any] = {"target": target, "sample_id": sample, "gene": gene,
                               "n_folds": int(g["pearson"].notna().sum())}
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


def method_overview(comparison: pd.DataFrame, genes_by_role: dict[str, list[str]] | None = None,
                    target: str = "raw") -> pd.DataFrame:
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
            rows.append({
                "method": method, "genes": role, "n_genes": int(len(sub)),
                "median_pearson": float(sub["median_pearson"].median()),
                "mean_pearson": float(sub["median_pearson"].mean()),
                "median_pooled_pearson": float(sub["pooled_pearson"].median()),
                "n_significant": int(sub["significant"].astype(bool).sum()),
                "n_significant_bh": int((sub["q_bh"] < 0.05).sum()),
                "median_rmse": float(sub["median_rmse"].median()),
                "median_auroc": float(sub["median_auroc"].median()),
            })
    return pd.DataFrame(rows)
