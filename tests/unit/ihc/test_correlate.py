"""Correlations of the IHC measures and their bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from stpredict.ihc.correlate import bootstrap_ci, correlation, scored_spots, summary_table


def pairs(n=400, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, x + noise * rng.normal(size=n)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_ci_contains_the_estimate_and_is_reproducible(method):
    x, y = pairs()
    r, lo, hi = bootstrap_ci(x, y, method, 1000, seed=3)
    ref = stats.pearsonr(x, y)[0] if method == "pearson" else stats.spearmanr(x, y)[0]
    assert r == pytest.approx(ref)
    assert lo < r < hi and 0.05 < hi - lo < 0.3
    assert bootstrap_ci(x, y, method, 1000, seed=3) == (r, lo, hi)
    other = bootstrap_ci(x, y, method, 1000, seed=4)
    assert other[0] == r and other[1:] != (lo, hi)
    # a chunk size is memory only
    assert bootstrap_ci(x, y, method, 1000, seed=3, chunk=37) == (r, lo, hi)


def test_ci_width_follows_the_sample_size():
    x, y = pairs(n=2000)
    wide = bootstrap_ci(x[:100], y[:100], "pearson", 1000, seed=0)
    narrow = bootstrap_ci(x, y, "pearson", 1000, seed=0)
    assert narrow[2] - narrow[1] < wide[2] - wide[1]


def test_spearman_ignores_monotone_transforms_pearson_does_not():
    x, y = pairs(noise=0.3)
    assert correlation(x, np.exp(3 * y), "spearman")[0] == pytest.approx(
        correlation(x, y, "spearman")[0]
    )
    assert correlation(x, np.exp(3 * y), "pearson")[0] < correlation(x, y, "pearson")[0]


def test_degenerate_inputs_give_nan():
    assert np.isnan(bootstrap_ci(np.ones(50), np.arange(50.0), "pearson", 100, 0)[0])
    assert np.isnan(bootstrap_ci(np.arange(2.0), np.arange(2.0), "pearson", 100, 0)[0])


def spot_frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    protein = rng.uniform(0, 1, n)
    return pd.DataFrame(
        {
            "spot_id": [f"s{i}" for i in range(n)],
            "keep": np.arange(n) % 10 != 0,
            "inside": np.arange(n) % 15 != 0,
            "darkness": 40 + 100 * protein + rng.normal(0, 10, n),
            "dab_od": 0.4 * protein + rng.normal(0, 0.03, n),
            "measured": protein + rng.normal(0, 0.5, n),
            "predicted": np.where(np.arange(n) % 7 == 0, np.nan, protein + rng.normal(0, 0.2, n)),
        }
    )


def test_summary_table_rows_and_sign():
    spots = spot_frame()
    reg = {
        "ransac_residual_px": 4.2,
        "refined_residual_px": 6.1,
        "known_affine_error_px": {"mean": 0.7, "max": 1.5},
    }
    table = summary_table(spots, reg, sample="S1", gene="ESR1", experiment="e", n_boot=200, seed=0)
    assert len(table) == 8
    assert set(table["measure"]) == {"rgb_darkness", "dab_od"}
    assert set(table["versus"]) == {"predicted", "measured"}
    assert set(table["method"]) == {"pearson", "spearman"}
    n = len(scored_spots(spots))
    assert (table["n_spots"] == n).all() and n < len(spots)
    assert (table["r"] > 0).all()  # darker / more DAB goes with more expression
    assert (table["ci_low"] < table["r"]).all() and (table["r"] < table["ci_high"]).all()
    best = table.set_index(["measure", "versus", "method"])["r"]
    # the less noisy expression correlates better, as planted
    assert best["dab_od", "predicted", "pearson"] > best["dab_od", "measured", "pearson"]
    # the residual of the transform used (the refined one), the RANSAC fit's beside it
    assert (table["registration_residual_px"] == 6.1).all()
    assert (table["ransac_residual_px"] == 4.2).all()
    assert (table["known_affine_error_px"] == 0.7).all()
    again = summary_table(spots, reg, sample="S1", gene="ESR1", experiment="e", n_boot=200, seed=0)
    pd.testing.assert_frame_equal(table, again)


def test_scored_spots_need_qc_inside_and_both_values():
    spots = spot_frame()
    use = scored_spots(spots)
    assert use["keep"].all() and use["inside"].all() and use["predicted"].notna().all()
