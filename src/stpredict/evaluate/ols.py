"""DeepSpaCE's Table 1: OLS of measured expression on trivial predictors, with and without the CNN.

Held-out regression prediction AnnData objects (one per section: ``X`` the measured target values,
``layers["predicted"]`` the predictions, ``obs`` ``sample_id``, ``patient_id``, ``fold`` and
``total_counts``, the raw UMI total per spot) are joined with the patch tables (colour
statistics per spot) by :func:`ols_inputs`; :func:`ols_table` then asks whether the CNN
prediction explains the measured expression beyond trivial predictors such as the patch colour
or the sequencing depth (adjusted R² of measured ~ predictor / ~ prediction / ~ both; β, SE and
p of the prediction).

Statistics are NaN (no exception, no warning) when the measured, predicted or baseline values are
constant over the usable spots or too few spots remain; ``n_spots`` is still reported.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from stpredict.errors import InputError
from stpredict.evaluate.metrics import dense_2d

__all__ = [
    "OLS_COLUMNS",
    "DEFAULT_PREDICTORS",
    "MIN_OLS_SPOTS",
    "ols_inputs",
    "ols_table",
]

#: Columns of :func:`ols_table`.
OLS_COLUMNS: tuple[str, ...] = (
    "unit",
    "gene",
    "predictor",
    "n_spots",
    "adj_r2_baseline",
    "adj_r2_predicted",
    "adj_r2_both",
    "delta_adj_r2",
    "beta_predicted",
    "se_predicted",
    "p_predicted",
    "beta_baseline",
    "se_baseline",
    "p_baseline",
)
#: Baseline predictors of :func:`ols_table` (columns made by :func:`ols_inputs`).
DEFAULT_PREDICTORS: tuple[str, ...] = (
    "mean_rgb",
    "brightness",
    "log_total_umi",
    "mean_r",
    "mean_g",
    "mean_b",
)
#: Fewest usable spots for an OLS row (model 2 has 3 parameters and needs a residual degree of
#: freedom).
MIN_OLS_SPOTS = 4


_dense = dense_2d


# --------------------------------------------------------------------------- OLS table
_PATCH_NEEDED = ("id", "mean_r", "mean_g", "mean_b")
_PATCH_EXTRA = ("white_frac", "pad_frac")


def _shared_genes(adatas: Sequence[Any]) -> list[str]:
    genes = [str(g) for g in adatas[0].var_names]
    for ad in adatas[1:]:
        have = {str(g) for g in ad.var_names}
        genes = [g for g in genes if g in have]
    if not genes:
        raise InputError(
            "the prediction files share no gene (each fold selected other genes)",
            fix="select the genes by a panel (targets.genes.mode: panel) or raise "
            "targets.genes.n, so that the folds share genes",
        )
    return genes


def ols_inputs(
    adatas: Iterable[Any], patch_tables: Mapping[Any, pd.DataFrame]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Measured values, predictions and per-spot covariates for :func:`ols_table`.

    Parameters
    ----------
    adatas
        Regression prediction AnnData objects (spots marked ``obs["qc_failed"]`` are left
        out: :func:`stpredict.evaluate.metrics.scored_spots`). Genes are restricted to those all files share
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
    InputError
        Naming the sample, when it has no patch table, its patch table lacks a column or
        repeats an id, or one of its spots has no patch row.
    """
    from stpredict.evaluate.metrics import scored_spots

    adatas = [scored_spots(a) for a in adatas]  # QC-failed spots have no measurement
    if not adatas:
        raise ValueError("no prediction AnnData objects given")
    genes = _shared_genes(adatas)
    tables = {str(k): v for k, v in patch_tables.items()}
    meas, pred, covs = [], [], []
    for ad in adatas:
        if "sample_id" not in ad.obs:
            raise InputError(
                "the prediction file has no obs column 'sample_id'",
                fix="rerun snakemake, which rebuilds the prediction files",
            )
        gi = pd.Index([str(g) for g in ad.var_names]).get_indexer(genes)
        m = _dense(ad.X)[:, gi]
        p = _dense(ad.layers["predicted"])[:, gi]
        obs = ad.obs
        spot = obs["spot_id"] if "spot_id" in obs else pd.Series(ad.obs_names, index=obs.index)
        spot = spot.astype(str).to_numpy()
        samples = obs["sample_id"].astype(str).to_numpy()
        tc = (
            obs["total_counts"].to_numpy(dtype=float)
            if "total_counts" in obs
            else np.full(ad.n_obs, np.nan)
        )
        for s in pd.unique(samples):
            sel = samples == s
            if s not in tables:
                raise InputError(
                    "no patch table for this sample",
                    sample=s,
                    fix="pass the sample's patch table (TSV written with the patches)",
                )
            tab = tables[s]
            lack = [c for c in _PATCH_NEEDED if c not in tab.columns]
            if lack:
                raise InputError(
                    f"patch table lacks column(s) {', '.join(lack)}",
                    sample=s,
                    fix="re-extract the patches to write the colour statistics",
                )
            ids = tab["id"].astype(str)
            if ids.duplicated().any():
                dup = ids[ids.duplicated()].iloc[0]
                raise InputError(f"patch table repeats spot id {dup!r}", sample=s)
            tab = tab.set_axis(pd.Index(ids.to_numpy(), name="id"), axis=0)
            pos = tab.index.get_indexer(spot[sel])
            if (pos < 0).any():
                miss = spot[sel][pos < 0]
                shown = ", ".join(repr(v) for v in miss[:5])
                more = f" and {miss.size - 5} more" if miss.size > 5 else ""
                raise InputError(
                    f"{miss.size} spot(s) have no row in the patch table: {shown}{more}",
                    sample=s,
                    fix="use the patch table extracted for this section",
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
        dup = index[index.duplicated()][0]
        raise InputError(
            f"spot {dup} (sample_id:spot_id) occurs in more than one prediction file",
            sample=dup.split(":")[0],
            fix="give each held-out section's prediction file once",
        )
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
        raise ValueError(f"covariates has {len(covariates)} rows, measured has {m.shape[0]} spots")
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
                        {
                            "unit": uname,
                            "gene": g,
                            "predictor": c,
                            **_ols_row(y, base[c][sel], pj, cache),
                        }
                    )
    df = pd.DataFrame(rows, columns=list(OLS_COLUMNS))
    df["n_spots"] = df["n_spots"].astype(int)
    return df
