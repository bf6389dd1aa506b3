"""Pseudo-bulk analyses on small synthetic inputs: bulk vs pseudo-bulk, co-localisation, subtypes."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stpredict.errors import ConfigError, InputError
from stpredict.wsi import coloc, subtype
from stpredict.wsi.bulk import (
    normalise_bulk,
    pseudobulk_vs_bulk,
    read_bulk,
    slide_summaries,
    summarise,
)


# ------------------------------------------------------------------------ pseudo-bulk vs bulk
def _slide_file(path, slide, pred, genes, emb=None):
    a = ad.AnnData(X=np.full(pred.shape, np.nan, dtype=np.float32))
    a.var_names = genes
    a.layers["predicted"] = pred.astype(np.float32)
    a.obsm["spatial"] = np.zeros((len(pred), 2))
    if emb is not None:
        a.obsm["embedding"] = emb.astype(np.float32)
    a.uns["stpredict"] = {"experiment": "e", "target_transform": {"name": "log1p"}}
    a.write_h5ad(path)
    return path


def _cohort(n=20, seed=0):
    """Slides whose gene LINK tracks a hidden make-up in bulk and prediction; NULL does not."""
    rng = np.random.default_rng(seed)
    make_up = rng.uniform(0, 1, n)
    slides = [f"S{i:02d}" for i in range(n)]
    pred = pd.DataFrame(
        {"LINK": make_up + rng.normal(0, 0.05, n), "NULL": rng.normal(0, 1, n)}, index=slides
    )
    counts = pd.DataFrame(
        {
            "LINK": rng.poisson(200 + 2000 * make_up),
            "NULL": rng.poisson(500, n),
            "OTHER": rng.poisson(5000, n),
        },
        index=slides,
    ).T  # genes x slides, as the demo writes it
    return slides, pred, counts


def test_a_planted_correlation_is_found_and_a_null_is_not(tmp_path):
    slides, pred, counts = _cohort()
    path = tmp_path / "bulk.tsv"
    counts.rename_axis("gene").to_csv(path, sep="\t")
    bulk = normalise_bulk(read_bulk(path, slides), "counts", str(path))
    assert list(bulk.index) == slides  # genes x slides turned to slides x genes
    assert np.allclose(np.expm1(bulk).sum(axis=1), 1e6)  # log1p of counts per million
    per_gene = pseudobulk_vs_bulk(pred, bulk, 0.05, {"LINK": "morphology"}).set_index("gene")
    assert list(per_gene.index) == ["LINK", "NULL"]  # only genes both hold
    assert per_gene.loc["LINK", "r"] > 0.9 and per_gene.loc["LINK", "significant"] == "positive"
    assert per_gene.loc["NULL", "significant"] == "none" and per_gene.loc["NULL", "q"] > 0.05
    # a negative link is counted as negative
    neg = pseudobulk_vs_bulk(-pred, bulk, 0.05)
    summ = summarise(neg, 0.05).set_index("group")
    assert summ.loc["all", "n_negative"] == 1 and summ.loc["all", "n_positive"] == 0


def test_slides_without_bulk_are_skipped_and_a_table_of_other_slides_refused(tmp_path, caplog):
    slides, pred, counts = _cohort()
    path = tmp_path / "bulk.tsv"
    counts.drop(columns=slides[:3]).to_csv(path, sep="\t")
    bulk = normalise_bulk(read_bulk(path, slides), "counts", str(path))
    with caplog.at_level("INFO"):
        per_gene = pseudobulk_vs_bulk(pred, bulk)
    assert (per_gene["n_slides"] == len(slides) - 3).all()
    assert "3 slide(s) without bulk skipped" in caplog.text
    other = counts.copy()
    other.columns = [f"X{c}" for c in other.columns]
    other.to_csv(path, sep="\t")
    with pytest.raises(InputError) as err:
        read_bulk(path, slides)
    msg = str(err.value)
    assert "match none" in msg and str(path) in msg and "Fix:" in msg and "\n" not in msg


@pytest.mark.parametrize("orientation", ["genes x slides", "slides x genes"])
@pytest.mark.parametrize("repeated", ["gene", "slide"])
def test_a_repeated_gene_or_slide_is_refused_not_renamed_or_misaligned(
    tmp_path, orientation, repeated
):
    # pandas renames a repeated header label (S00 -> S00.1, silently dropping that slide's
    # bulk) and a repeated row label misaligned pseudo-bulk and bulk (a bare ValueError)
    slides, pred, counts = _cohort()
    table = counts if repeated == "gene" else counts.T
    table = pd.concat([table, table.iloc[[0]]])  # repeat a row: one gene (or slide) twice
    if repeated == "slide":
        table = table.T
    if orientation == "slides x genes":
        table = table.T
    path = tmp_path / "bulk.tsv"
    table.to_csv(path, sep="\t")
    with pytest.raises(InputError) as err:
        read_bulk(path, slides)
    msg = str(err.value)
    label = "LINK" if repeated == "gene" else "S00"
    assert f"repeats the label {label!r}" in msg and str(path) in msg and "\n" not in msg


def test_both_orientations_give_the_same_table(tmp_path):
    slides, pred, counts = _cohort()
    a, b = tmp_path / "gxs.tsv", tmp_path / "sxg.tsv"
    counts.to_csv(a, sep="\t")
    counts.T.to_csv(b, sep="\t")
    pd.testing.assert_frame_equal(read_bulk(a, slides), read_bulk(b, slides))


def test_slide_summaries_average_the_tiles_and_embeddings(tmp_path):
    rng = np.random.default_rng(1)
    paths = {}
    for s in ("A", "B"):
        pred, emb = rng.normal(size=(7, 2)), rng.normal(size=(7, 4))
        paths[s] = _slide_file(tmp_path / f"{s}.h5ad", s, pred, ["G1", "G2"], emb)
        paths[s + "_truth"] = (pred.mean(axis=0), emb.mean(axis=0))
    truth = {s: paths.pop(s + "_truth") for s in ("A", "B")}
    means, emb, units = slide_summaries(paths)
    assert units["target_transform"] == "log1p" and list(means.columns) == ["G1", "G2"]
    for s in ("A", "B"):
        assert np.allclose(means.loc[s], truth[s][0], atol=1e-6)
        assert np.allclose(emb.loc[s], truth[s][1], atol=1e-6)


# ------------------------------------------------------------------------ co-localisation
def _grid(n=14):
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.stack([c.ravel() * 10.0 + 5, r.ravel() * 10.0 + 5], axis=1)


def _blobs(xy, seed, scale=30.0):
    """A smooth random field over the tile centres."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 140, (12, 2))
    w = rng.normal(size=12)
    d2 = ((xy[:, None, :] - centres[None]) ** 2).sum(-1)
    return (w * np.exp(-d2 / (2 * scale**2))).sum(axis=1)


def test_colocalised_sets_beat_the_permutation_null_and_independent_ones_do_not():
    xy = _grid()
    field = _blobs(xy, 3)
    rng = np.random.default_rng(0)
    tum = np.stack([field + rng.normal(0, 0.1, len(xy)) for _ in range(2)], axis=1)
    imm_together = np.stack([field + rng.normal(0, 0.1, len(xy)) for _ in range(2)], axis=1)
    imm_apart = np.stack([_blobs(xy, 11) + rng.normal(0, 0.1, len(xy)) for _ in range(2)], 1)
    genes = ["T1", "T2", "I1", "I2"]
    markers = {"tumour": ["T1", "T2", "NOT_PREDICTED"], "immune": ["I1", "I2"]}
    rows = coloc.slide_rows("A", np.hstack([tum, imm_together]), genes, xy, 10.0, markers, 200, 0)
    rows += coloc.slide_rows("B", np.hstack([tum, -imm_together]), genes, xy, 10.0, markers, 200, 0)
    rows += coloc.slide_rows("C", np.hstack([tum, imm_apart]), genes, xy, 10.0, markers, 200, 0)
    t = coloc.finish(rows).set_index("slide_id")
    assert t.loc["A", "genes_a"] == "T1,T2"  # the gene the model lacks is left out
    assert t.loc["A", "r"] > 0.5 and t.loc["A", "p"] < 0.01 and t.loc["A", "q"] < 0.05
    assert t.loc["B", "r"] < -0.5 and t.loc["B", "p"] < 0.01  # segregation
    assert abs(t.loc["C", "null_mean"]) < 0.1 and t.loc["C", "null_sd"] > 0
    # the same seed gives the same null; another seed another
    again = coloc.finish(
        coloc.slide_rows("A", np.hstack([tum, imm_together]), genes, xy, 10.0, markers, 200, 0)
    )
    assert again["null_sd"].iloc[0] == t.loc["A", "null_sd"]


def test_the_null_of_independent_noise_is_uniform_enough():
    """Spatially unstructured, unrelated scores: p is not small more often than chance."""
    xy = _grid(10)
    rng = np.random.default_rng(5)
    w = coloc.neighbour_graph(xy, 10.0)
    assert np.allclose(np.asarray(w.sum(axis=1)).ravel(), 1.0)  # every tile has neighbours
    assert w[0].nnz == 3 and w[11].nnz == 8  # a corner: 3, an inner tile: 8
    ps = [
        coloc.colocalisation(rng.normal(size=100), rng.normal(size=100), w, 99, rng)["p"]
        for _ in range(40)
    ]
    assert np.mean(np.array(ps) < 0.05) < 0.2


# ------------------------------------------------------------------------ subtypes
def _labelled(n_patients=14, seed=0, signal=1.5):
    rng = np.random.default_rng(seed)
    rows, feats = [], []
    for i in range(n_patients):
        label = "basal" if i % 2 else "luminal"
        for k in range(1 + i % 2):
            sid = f"P{i:02d}-{k}"
            rows.append({"slide_id": sid, "patient_id": f"P{i:02d}", "subtype": label})
            x = rng.normal(size=6)
            x[0] += signal * (label == "basal")
            feats.append(pd.Series(x, name=sid))
    table = pd.DataFrame(rows).set_index("slide_id", drop=False)
    return table, pd.DataFrame(feats)


SETTINGS = {"test_frac": 0.3, "cv_folds": 5, "C": list(subtype.C_GRID), "n_boot": 200, "seed": 3}


def test_the_patient_split_keeps_every_patient_on_one_side():
    table, _ = _labelled()
    groups = subtype.patient_groups(table)
    for seed in range(5):
        train, test = subtype.patient_split(table["subtype"], groups, 0.3, seed)
        assert set(train) | set(test) == set(table.index) and not set(train) & set(test)
        assert not set(groups[train]) & set(groups[test])
        assert set(table.loc[test, "subtype"]) == {"basal", "luminal"}  # stratified
        assert groups[test].nunique() == 4  # round(0.3 * 7) patients of each class
    assert subtype.patient_split(table["subtype"], groups, 0.3, 1) == subtype.patient_split(
        table["subtype"], groups, 0.3, 1
    )


def test_a_planted_subtype_is_found_and_a_random_one_is_not():
    table, x = _labelled(signal=3.0)
    res, scores, split = subtype.classify({"planted": x}, table, SETTINGS)
    row = res.iloc[0]
    assert row["positive"] == "luminal" and row["n_test"] == len(split["test"])
    # luminal is the positive class: the planted feature is high in basal, so AUROC is computed
    # on the model's luminal probability and stays high
    assert row["auroc"] > 0.85 and row["ci_low"] <= row["auroc"] <= row["ci_high"]
    assert set(scores["slide_id"]) == set(split["test"])
    aurocs = []
    quick = SETTINGS | {"C": [0.1, 1.0], "n_boot": 100}
    for seed in range(6):
        t, xr = _labelled(seed=seed, signal=0.0)
        aurocs.append(subtype.classify({"random": xr}, t, quick)[0]["auroc"].iloc[0])
    assert 0.25 < np.mean(aurocs) < 0.75


def test_scaling_and_c_are_fitted_on_the_training_side_only(monkeypatch):
    from sklearn.preprocessing import StandardScaler

    table, x = _labelled(signal=1.0)
    groups = subtype.patient_groups(table)
    train, test = subtype.patient_split(table["subtype"], groups, 0.3, 3)
    # every scaler fit sees training-side rows only: a fold's training part inside the CV, the
    # whole training side for the refit, never a test slide (nor a CV fold's held-out rows)
    seen = []
    real_fit = StandardScaler.fit

    def spy(self, xs, y=None, **kw):
        seen.append(np.asarray(xs).copy())
        return real_fit(self, xs, y, **kw)

    monkeypatch.setattr(StandardScaler, "fit", spy)
    res, scores, _ = subtype.classify({"f": x}, table, SETTINGS)
    monkeypatch.undo()
    train_rows = {tuple(r) for r in x.loc[train].to_numpy()}
    test_rows = {tuple(r) for r in x.loc[test].to_numpy()}
    assert len(seen) == len(SETTINGS["C"]) * 5 + 1
    for xs in seen:
        rows = {tuple(r) for r in xs}
        assert rows <= train_rows and not rows & test_rows
    assert [len(xs) for xs in seen].count(len(train)) == 1  # the refit; CV fits fewer rows
    # wild test-side features change the test scores, never the chosen C or the CV losses
    wild = x.copy()
    wild.loc[test] = wild.loc[test] * 100 + 50
    res2, scores2, _ = subtype.classify({"f": wild}, table, SETTINGS)
    assert res2["C"].iloc[0] == res["C"].iloc[0]
    assert res2["cv_auroc"].iloc[0] == res["cv_auroc"].iloc[0]
    assert not np.allclose(scores["score"], scores2["score"])


def test_labels_that_cannot_train_a_classifier_are_refused_in_one_line():
    table, _ = _labelled(n_patients=4)
    with pytest.raises(ConfigError) as err:
        subtype.check_labels(table, "slides.tsv")
    msg = str(err.value)
    assert "patient(s)" in msg and "slides.tsv" in msg and "Fix:" in msg and "\n" not in msg
    one = table.assign(subtype="basal")
    with pytest.raises(ConfigError, match="one class"):
        subtype.check_labels(one, "slides.tsv")
    assert subtype.check_labels(table.assign(subtype=""), "slides.tsv").empty
