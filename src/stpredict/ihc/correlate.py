"""Correlation of the IHC measures with predicted and measured expression, bootstrap CIs.

Sign convention: both IHC measures grow with the protein (``rgb_darkness`` = 255 - the paper's
mean RGB, ``dab_od`` = DAB optical density), so a positive r means that more protein goes with
more RNA. The paper's own number (r = 0.600 between predicted ESR1 and "estimated protein
levels") is read the same way.

Confidence intervals are percentile bootstraps over spots (``n_boot`` resamples of the spot
pairs with replacement, seeded: the same seed gives the same interval). Neighbouring spots are
not independent, so these intervals are narrower than a spatially aware interval would be;
they describe the sampling of spots, as the paper's did.

The spots scored are those that pass spot QC, lie wholly inside the IHC image and have both a
measured and a predicted value, the same spots for every row, so the rows compare.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from stpredict.errors import ConfigError

__all__ = ["MEASURES", "VERSUS", "METHODS", "correlation", "bootstrap_ci", "summary_table"]

#: IHC measure (column of the per-spot table) -> what it is
MEASURES: dict[str, str] = {
    "rgb_darkness": "255 - mean RGB of the paper's square (DeepSpaCE); higher = more protein",
    "dab_od": "mean DAB optical density over the spot (rgb2hed); higher = more protein",
}
#: expression the measures are compared with (column of the per-spot table)
VERSUS = ("predicted", "measured")
#: correlation coefficients
METHODS = ("pearson", "spearman")

_COLUMN = {"rgb_darkness": "darkness", "dab_od": "dab_od"}


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of two 2-D arrays (NaN for a constant row)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(axis=-1) / den, np.nan)


def correlation(x: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """Pearson or Spearman r of ``x`` and ``y`` along the last axis (rows of 2-D arrays)."""
    x, y = np.atleast_2d(x).astype(float), np.atleast_2d(y).astype(float)
    if method == "spearman":
        x, y = rankdata(x, axis=-1), rankdata(y, axis=-1)
    elif method != "pearson":
        raise ConfigError(f"unknown correlation method {method!r}", fix="use pearson or spearman")
    return _pearson_rows(x, y)


def bootstrap_ci(
    x: np.ndarray,
    y: np.ndarray,
    method: str,
    n_boot: int,
    seed: int,
    level: float = 0.95,
    chunk: int = 250,
) -> tuple[float, float, float]:
    """Point estimate and percentile-bootstrap interval of a correlation.

    Parameters
    ----------
    x, y
        Paired values (finite).
    method
        ``pearson`` or ``spearman``.
    n_boot
        Resamples of the pairs (with replacement).
    seed
        Seed of the resampling (``numpy.random.default_rng``).
    level
        Coverage of the interval.
    chunk
        Resamples computed at once (memory only; the result does not depend on it).

    Returns
    -------
    r, low, high
        NaN when fewer than 3 pairs or a constant variable.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    r = float(correlation(x, y, method)[0]) if n >= 3 else float("nan")
    if not np.isfinite(r):
        return r, float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    reps = np.concatenate(
        [
            correlation(x[idx[i : i + chunk]], y[idx[i : i + chunk]], method)
            for i in range(0, n_boot, chunk)
        ]
    )
    reps = reps[np.isfinite(reps)]
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return r, float(low), float(high)


def scored_spots(spots: pd.DataFrame) -> pd.DataFrame:
    """Return the spots every correlation uses: QC kept, inside the IHC, measured and predicted."""
    ok = spots["keep"].astype(bool) & spots["inside"].astype(bool)
    for col in ("darkness", "dab_od", "measured", "predicted"):
        ok &= np.isfinite(spots[col].to_numpy(float))
    return spots[ok]


def summary_table(
    spots: pd.DataFrame,
    registration: Mapping[str, Any],
    *,
    sample: str,
    gene: str,
    experiment: str,
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per IHC measure x expression (predicted / measured) x method.

    Columns: ``sample_id, gene, experiment, measure, versus, method, r, ci_low, ci_high,
    ci_level, n_boot, n_spots, registration_residual_px`` (RMS residual of the RANSAC inlier
    matches under the transform used — the refined one —, H&E full-res px), ``ransac_residual_px``
    (the same matches under the RANSAC fit, which minimises it: lower by construction),
    ``known_affine_error_px`` (mean error against a known transform, when one was given; else
    NaN), ``sign`` (the convention).
    """
    use = scored_spots(spots)
    known = registration.get("known_affine_error_px") or {}
    rows = []
    for k, (measure, col) in enumerate(_COLUMN.items()):
        for j, versus in enumerate(VERSUS):
            for i, method in enumerate(METHODS):
                # one independent, reproducible stream per row
                r, lo, hi = bootstrap_ci(
                    use[col].to_numpy(float),
                    use[versus].to_numpy(float),
                    method,
                    n_boot,
                    seed=int(np.random.SeedSequence([seed, k, j, i]).generate_state(1)[0]),
                    level=level,
                )
                rows.append(
                    {
                        "sample_id": sample,
                        "gene": gene,
                        "experiment": experiment,
                        "measure": measure,
                        "versus": versus,
                        "method": method,
                        "r": r,
                        "ci_low": lo,
                        "ci_high": hi,
                        "ci_level": level,
                        "n_boot": n_boot,
                        "n_spots": len(use),
                        "registration_residual_px": float(registration["refined_residual_px"]),
                        "ransac_residual_px": float(registration["ransac_residual_px"]),
                        "known_affine_error_px": float(known.get("mean", np.nan)),
                        "sign": "positive r: more protein (darker IHC) with more expression",
                    }
                )
    return pd.DataFrame(rows)
