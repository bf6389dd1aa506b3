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


def test_an_image_only_row_keeps_the_cards_gene_ids(tmp_path):
    # the row's file must be as self-contained as a whole-slide file: var["gene_ids"] from the
    # card (the training sections' ids), not blanked
    from stpredict.cohort.predict import predict_image_row
    from stpredict.io import read_json, write_json
    from tests.unit.wsi.helpers import make_model_dir, tissue_image, write_png

    exp = make_model_dir(tmp_path / "model", n_folds=1, epochs=1)
    card = read_json(exp / "model.json")
    card["gene_ids"] = {"DARK": "ENSG00000000001", "FLAT": ""}
    write_json(card, exp / "model.json")
    image = write_png(tmp_path / "new.png", tissue_image(160, 200, seed=3))
    row = {"sample_id": "N1", "patient_id": "P9", "image": str(image), "mpp": 1.0}
    out = tmp_path / "N1.h5ad"
    a = predict_image_row(exp, row, out, tmp_path / "tiles", cohort="c", device="cpu")
    assert a.n_obs > 0
    back = ad.read_h5ad(out)
    assert list(back.var["gene_ids"]) == ["ENSG00000000001", ""]
    assert not back.var["measured"].any()
