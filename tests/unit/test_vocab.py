"""The shared vocabulary: one units table for prediction files and figures, one annotation vocabulary."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from stpredict.config import load_schema
from stpredict.learn.targets import TRANSFORM_NAMES, make_transform
from stpredict.vocab import (
    ANNOTATION_LABELS,
    NORMAL,
    STRATA,
    TARGET_UNITS,
    TUMOR,
    annotations,
    normalise_annotation_labels,
    target_units,
    units_label,
)


def test_every_configurable_transform_has_one_entry_of_units(repo):
    schema = load_schema(repo / "workflow/schemas/config.schema.yaml")
    names = schema["properties"]["targets"]["properties"]["transform"]["enum"]
    assert sorted(TARGET_UNITS) == sorted(names) == sorted(TRANSFORM_NAMES)
    for name in names:  # the prediction files and the figures read the same entry
        assert target_units(name) == TARGET_UNITS[name]["units"]
        assert units_label(name) == TARGET_UNITS[name]["label"]


def test_figure_labels_of_the_transforms():
    assert units_label("log1p") == "log1p(UMI / total × 10⁴)"
    assert units_label("log_proportion") == "log((UMI + 1) / (total + G))"
    assert units_label("pearson_minmax") == "Pearson residual, min–max scaled on training spots"
    assert units_label("zscore") == "zscore"  # an unknown name is shown as it is


def test_log_proportion_label_describes_what_the_transform_computes():
    # two sections whose gene union has G = 4 genes; the label says log((UMI + 1) / (total + G))
    counts_a = np.array([[3, 0, 5], [1, 2, 0]], dtype=np.float32)
    a = ad.AnnData(
        sp.csr_matrix(counts_a),
        var=pd.DataFrame(index=["g1", "g2", "g3"]),
        obs=pd.DataFrame({"sample_id": "A"}, index=["s1", "s2"]),
    )
    b = ad.AnnData(
        sp.csr_matrix(np.array([[4, 1]], dtype=np.float32)),
        var=pd.DataFrame(index=["g1", "g4"]),
        obs=pd.DataFrame({"sample_id": "B"}, index=["s3"]),
    )
    tr = make_transform(TRANSFORM_NAMES["log_proportion"], genes=["g1", "g3"]).fit([a, b])
    total, g = counts_a.sum(axis=1, keepdims=True), 4
    expect = np.log((counts_a[:, [0, 2]] + 1) / (total + g))
    np.testing.assert_allclose(tr.transform(a), expect, rtol=1e-6)
    assert "(total + G)" in units_label("log_proportion")
    assert "+ G" in target_units("log_proportion")


def test_annotation_vocabulary_is_shared_by_readers_strata_and_figures():
    assert ANNOTATION_LABELS == (TUMOR, NORMAL) == ("tumor", "non")
    assert STRATA == {"tumor": TUMOR, "normal": NORMAL}
    assert normalise_annotation_labels(["Tumour", " normal ", "stroma", ""]) == [
        TUMOR,
        NORMAL,
        "stroma",
        "",
    ]
    obs = pd.DataFrame({"annotation": ["tumor", None, "non"]}, index=["a", "b", "c"])
    assert annotations(ad.AnnData(obs=obs)).tolist() == ["tumor", "", "non"]
    assert annotations(ad.AnnData(obs=pd.DataFrame(index=["a"]))).tolist() == [""]
