"""Tests of the latent-space analyses (stpredict.evaluate.latent)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from stpredict.errors import StpredictError
from stpredict.evaluate.latent import (
    kmeans_purity,
    label_agreement,
    latent_vs_physical,
    neighbour_test,
    purity,
    purity_summary,
    purity_table,
    typical_atypical,
    umap_embedding,
)


def _blobs(n_per: int = 40, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 0.3, size=(n_per, d))
    b = rng.normal(0.0, 0.3, size=(n_per, d)) + 10.0
    emb = np.vstack([a, b]).astype(np.float32)
    labels = np.array(["tumor"] * n_per + ["non"] * n_per, dtype=object)
    return emb, labels


def _grid_adata(n_rows: int = 12, n_cols: int = 12, seed: int = 0) -> ad.AnnData:
    """An ST grid whose embedding is a smooth field that also drives expression."""
    rng = np.random.default_rng(seed)
    rr, cc = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    field = np.sin(rr / 2.0) + np.cos(cc / 2.5)
    emb = np.column_stack([field, 0.5 * field**2]).astype(np.float32)
    n = rr.size
    x = np.column_stack(
        [
            2.0 * field + rng.normal(0, 0.05, n),
            -field + rng.normal(0, 0.05, n),
            np.full(n, 3.0),  # constant gene
        ]
    ).astype(np.float32)
    obs = pd.DataFrame(
        {
            "sample_id": "S1",
            "patient_id": "P1",
            "spot_id": [f"s{i}" for i in range(n)],
            "array_row": rr,
            "array_col": cc,
            "annotation": "",
            "fold": 0,
        },
        index=[f"s{i}" for i in range(n)],
    )
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=["g1", "g2", "const"]))
    adata.layers["predicted"] = x.copy()
    adata.obsm["embedding"] = emb
    return adata


# ----------------------------------------------------------------------------- purity
def test_purity_hand_computed():
    truth = ["a", "a", "b", "b", "b", "a", "c"]
    clusters = [0, 0, 0, 1, 1, 1, 1]
    # cluster 0: a,a,b -> 2 ; cluster 1: b,b,a,c -> 2 ; purity = 4 / 7
    assert purity(truth, clusters) == pytest.approx(4 / 7)
    assert purity([1, 1, 2], [5, 5, 6]) == 1.0
    with pytest.raises(StpredictError):
        purity([], [])


def test_kmeans_purity_blobs_and_random():
    emb, labels = _blobs(50)
    assert kmeans_purity(emb, labels, k=2, seed=0) == 1.0
    rng = np.random.default_rng(1)
    random_labels = rng.choice(["tumor", "non"], size=labels.size)
    p = kmeans_purity(emb, random_labels, k=2, seed=0)
    assert 0.5 <= p < 0.65


def _unit_adata(emb: np.ndarray, labels: np.ndarray) -> ad.AnnData:
    n = emb.shape[0]
    obs = pd.DataFrame(
        {"sample_id": "S", "annotation": labels, "array_row": np.arange(n), "array_col": 0}
    )
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(X=np.zeros((n, 1), dtype=np.float32), obs=obs)
    adata.obsm["embedding"] = emb
    return adata


def test_purity_table_and_summary():
    emb, labels = _blobs(20)
    two = _unit_adata(emb, labels)
    # patient B: two sections pooled, one of them with unannotated spots
    half = _unit_adata(emb[:40:2], labels[:40:2])
    other = _unit_adata(emb[1:40:2], np.where(np.arange(20) % 3 == 0, "", labels[1:40:2]))
    one_class = _unit_adata(emb[:20], labels[:20])
    few = _unit_adata(emb[[0, 1, 25]], labels[[0, 1, 25]])
    table = purity_table({"A": [two], "B": [half, other], "C": [one_class], "D": [few]})
    assert list(table.columns) == ["unit", "n_spots", "n_tumor", "n_normal", "purity", "note"]
    t = table.set_index("unit")
    assert t.loc["A", "purity"] == 1.0 and t.loc["A", "note"] == ""
    assert t.loc["A", "n_tumor"] == 20 and t.loc["A", "n_normal"] == 20
    assert t.loc["B", "n_spots"] == 20 + 13
    assert np.isnan(t.loc["C", "purity"]) and "one class" in t.loc["C", "note"]
    assert np.isnan(t.loc["D", "purity"]) and "fewer than" in t.loc["D", "note"]
    s = purity_summary(table)
    assert s["n_units"] == 2 and s["mean"] == 1.0 and s["sd"] == 0.0
    s2 = purity_summary(pd.DataFrame({"purity": [0.8, np.nan, 1.0]}))
    assert s2["mean"] == pytest.approx(0.9)
    assert s2["sd"] == pytest.approx(np.std([0.8, 1.0], ddof=1))


# ----------------------------------------------------------------------------- neighbours
def test_neighbour_test_similar_beats_distinct():
    adata = _grid_adata()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = neighbour_test(adata, "st")
    assert list(res.columns) == ["gene", "r_similar", "r_distinct", "n_spots"]
    assert list(res["gene"]) == ["g1", "g2", "const"]
    assert (res["n_spots"] == adata.n_obs).all()  # every grid spot has >= 2 neighbours
    for g in ("g1", "g2"):
        row = res.set_index("gene").loc[g]
        assert row["r_similar"] > row["r_distinct"]
        assert row["r_similar"] > 0.9
    assert res.set_index("gene").loc["const", ["r_similar", "r_distinct"]].isna().all()

    # independent check of one value with scipy
    emb = adata.obsm["embedding"].astype(float)
    x = np.asarray(adata.X, dtype=float)
    rows = adata.obs["array_row"].to_numpy()
    cols = adata.obs["array_col"].to_numpy()
    pos = {(r, c): i for i, (r, c) in enumerate(zip(rows, cols, strict=True))}
    pred, true = [], []
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        nb = [pos[p] for p in ((r, c - 1), (r, c + 1), (r - 1, c), (r + 1, c)) if p in pos]
        nb = sorted(nb)
        d = [np.linalg.norm(emb[j] - emb[i]) for j in nb]
        pred.append(x[nb[int(np.argmax(d))], 0])
        true.append(x[i, 0])
    expected = stats.pearsonr(pred, true)[0]
    assert res.loc[0, "r_distinct"] == pytest.approx(expected, abs=1e-9)


def test_latent_vs_physical_grid_coordinates():
    adata = _grid_adata(20, 20)
    rows = adata.obs["array_row"].to_numpy()
    cols = adata.obs["array_col"].to_numpy()
    adata.obsm["embedding"] = np.column_stack([rows, cols]).astype(np.float32)
    out = latent_vs_physical(adata, "st", k=4)
    # interior spots: all 4 latent neighbours adjacent; edges 3/4; corners 2/4
    assert out["share_adjacent"] == pytest.approx((324 + 72 * 0.75 + 4 * 0.5) / 400)
    assert out["chance"] == pytest.approx((400 * 4 - 4 * 20) / 400 / 399)
    assert out["chance"] < 0.02 and out["enrichment"] > 50
    assert out["k"] == 4 and out["n_spots"] == 400
    # a random embedding is near chance
    adata.obsm["embedding"] = np.random.default_rng(0).normal(size=(400, 4)).astype(np.float32)
    assert latent_vs_physical(adata, "st", k=4)["share_adjacent"] < 0.05


def test_missing_embedding_is_clear():
    adata = _grid_adata(3, 3)
    del adata.obsm["embedding"]
    with pytest.raises(StpredictError, match="embedding"):
        neighbour_test(adata, "st")


# ----------------------------------------------------------------------------- typical spots
def test_typical_atypical_finds_mislabelled_point():
    emb, labels = _blobs(30)
    labels = labels.copy()
    labels[5] = "non"  # a point in the tumour blob labelled normal
    labels[12] = ""  # unannotated: ignored
    share = label_agreement(emb, labels, k=10)
    assert np.isnan(share[12]) and share[5] == 0.0
    res = typical_atypical(emb, labels, k=10).set_index("kind")
    assert list(res.index) == [
        "representative_tumor",
        "atypical_tumor",
        "representative_normal",
        "atypical_normal",
    ]
    assert res.loc["atypical_normal", "index"] == 5
    assert res.loc["atypical_normal", "share"] == 0.0
    assert res.loc["representative_tumor", "share"] == 1.0
    assert labels[res.loc["representative_normal", "index"]] == "non"
    # one class only: its two kinds
    only = typical_atypical(emb[:30], np.full(30, "tumor"), k=5)
    assert list(only["kind"]) == ["representative_tumor", "atypical_tumor"]


# ----------------------------------------------------------------------------- UMAP
def test_umap_shape_and_determinism():
    emb, _ = _blobs(30, d=6)
    a = umap_embedding(emb, seed=3)
    b = umap_embedding(emb, seed=3)
    assert a.shape == (60, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    small = umap_embedding(emb[:3], seed=0)
    assert small.shape == (3, 2) and np.isfinite(small).all()
    with pytest.raises(StpredictError, match="at least 3"):
        umap_embedding(emb[:2])
