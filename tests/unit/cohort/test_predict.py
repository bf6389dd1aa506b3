"""Job-time pieces of a cohort: measured targets in the folds' fitted units, the maps' genes."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from stpredict.cohort.predict import _measured, map_genes
from stpredict.learn.targets import LogProportion


def _section(rng, n=30, genes=("A", "B", "C", "D")):
    counts = rng.poisson(5.0, (n, len(genes))).astype(np.float32)
    obs = pd.DataFrame(
        {
            "sample_id": "S1",
            "keep": np.ones(n, dtype=bool),
            "array_row": np.repeat(np.arange(6), 5),
            "array_col": np.tile(np.arange(5), 6),
        },
        index=[f"{i}x{j}" for i in range(6) for j in range(5)],
    )
    a = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=list(genes)))
    a.uns["stpredict"] = {"platform": "st", "sample_id": "S1"}
    return a


def test_measured_targets_are_the_folds_fitted_transforms_averaged_never_refitted():
    rng = np.random.default_rng(0)
    cohort = _section(rng)
    # two folds fitted on training sides with different gene universes (ST-Net's G)
    t1 = LogProportion(genes=["A", "B"]).fit([_section(rng, genes=("A", "B", "C"))])
    t2 = LogProportion(genes=["A", "B"]).fit([_section(rng, genes=("A", "B", "C", "D", "E"))])
    fitted = {"0": {"transform": t1.to_dict()}, "1": {"transform": t2.to_dict()}}
    X, smooth = _measured(fitted, cohort, cohort, ["B", "A"])
    expect = (t1.transform(cohort) + t2.transform(cohort)) / 2
    np.testing.assert_allclose(X, expect[:, [1, 0]], rtol=1e-6)
    refit = LogProportion(genes=["A", "B"]).fit([cohort]).transform(cohort)
    assert not np.allclose(X, refit[:, [1, 0]])  # the cohort's own universe (4 genes) differs
    assert smooth.shape == X.shape and np.isfinite(smooth).all()


def test_map_genes_uses_the_given_genes_else_the_most_variable_predictions():
    a = ad.AnnData(X=np.full((4, 3), np.nan, np.float32), var=pd.DataFrame(index=["A", "B", "C"]))
    a.layers["predicted"] = np.array(
        [[0, 1, 5], [0, 2, -5], [0, 3, 5], [0, 4, -5]], dtype=np.float32
    )
    assert map_genes(a, []) == ["C", "B"]
    assert map_genes(a, ["A", "Z"]) == ["A"]
