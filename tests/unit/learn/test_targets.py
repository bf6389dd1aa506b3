"""Tests of stpredict.learn.targets against independent computations (numpy, scanpy)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from stpredict.errors import ConfigError, InputError
from stpredict.learn import targets as T


def section(sample: str, counts: np.ndarray, genes: list[str], ambiguous=None) -> ad.AnnData:
    """A section AnnData as docs/DESIGN.md describes it (only the fields targets.py uses)."""
    n = counts.shape[0]
    obs = pd.DataFrame(
        {"sample_id": sample, "patient_id": "P" + sample}, index=[f"{sample}_{i}" for i in range(n)]
    )
    var = pd.DataFrame(
        {
            "gene_ids": genes,
            "feature_types": "Gene Expression",
            "ambiguous": ambiguous if ambiguous is not None else [False] * len(genes),
        },
        index=genes,
    )
    a = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs, var=var)
    a.uns["stpredict"] = {"sample_id": sample}
    return a


def random_counts(rng, n, g, scale=3.0):
    mu = rng.gamma(0.6, scale, size=g)
    lib = rng.uniform(0.5, 2.0, size=(n, 1))
    return rng.poisson(lib * mu).astype(float)


@pytest.fixture()
def three():
    rng = np.random.default_rng(42)
    genes = [f"G{i}" for i in range(30)]
    A = section("A", random_counts(rng, 40, 30), genes)
    B_genes = genes[:25] + ["ONLY_B"]  # B lacks G25..G29, has an extra gene
    B = section("B", random_counts(rng, 35, 26), B_genes)
    C = section("C", random_counts(rng, 20, 30), genes)
    return A, B, C


def dense_union(adatas, genes):
    out = []
    for a in adatas:
        df = pd.DataFrame(a.X.toarray(), columns=a.var_names)
        out.append(df.reindex(columns=genes, fill_value=0.0).to_numpy())
    return np.vstack(out)


def test_log_proportion_matches_stnet_formula(three):
    A, B, C = three
    tr = T.LogProportion().fit([A, B])
    universe = T.gene_union([A, B])
    assert len(universe) == 31 and tr.n_genes_ == 31
    for a in (A, B, C):
        full = dense_union([a], universe)
        # ST-Net: pad to the union, +1, divide by row sum, log
        expect = np.log((full + 1) / (full + 1).sum(axis=1, keepdims=True))
        if a is C:  # C's own counts are all inside the union
            assert set(C.var_names) <= set(universe)
        np.testing.assert_allclose(tr.transform(a), expect, rtol=1e-5, atol=1e-6)
    assert tr.transform(A).dtype == np.float32


def test_log1p_normalized_matches_scanpy(three):
    A, B, C = three
    genes = ["G3", "G0", "G27", "ONLY_B"]
    tr = T.Log1pNormalized(genes=genes).fit([A, B])
    for a in (A, B):
        ref = a.copy()
        sc.pp.normalize_total(ref, target_sum=1e4)
        sc.pp.log1p(ref)
        expect = (
            pd.DataFrame(ref.X.toarray(), columns=ref.var_names)
            .reindex(columns=genes, fill_value=0.0)
            .to_numpy()
        )
        np.testing.assert_allclose(tr.transform(a), expect, rtol=1e-5, atol=1e-5)


def test_pearson_residuals_match_scanpy(three):
    A, _, _ = three
    A = A[:, np.asarray(A.X.sum(axis=0)).ravel() > 0].copy()  # scanpy gives NaN for empty genes
    tr = T.PearsonResidualsMinMax().fit([A])
    ref = sc.experimental.pp.normalize_pearson_residuals(A, theta=100, inplace=False)["X"]
    # scanpy computes in the float32 of X; we compute in float64
    np.testing.assert_allclose(tr.residuals(A), ref, rtol=1e-5, atol=1e-6)
    assert tr.clip_ == pytest.approx(np.sqrt(A.n_obs))
    scaled = tr.transform(A)
    np.testing.assert_allclose(scaled.min(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(scaled.max(axis=0), 1, atol=1e-6)
    r = np.asarray(ref)
    np.testing.assert_allclose(scaled, (r - r.min(0)) / (r.max(0) - r.min(0)), atol=1e-5)


def test_pearson_residuals_new_section_uses_fitted_p_and_own_totals(three):
    A, B, C = three
    genes = ["G1", "G2", "G5", "G26"]
    tr = T.PearsonResidualsMinMax(genes=genes).fit([A, B])
    union = T.gene_union([A, B])
    train = dense_union([A, B], union)
    p = train.sum(0) / train.sum()
    p = p[[union.index(g) for g in genes]]
    x = dense_union([C], genes)
    n_c = C.X.toarray().sum(1, keepdims=True)
    mu = n_c * p
    r = np.clip((x - mu) / np.sqrt(mu + mu**2 / 100), -np.sqrt(75), np.sqrt(75))
    np.testing.assert_allclose(tr.residuals(C), r, rtol=1e-10)
    rt = np.clip(
        (dense_union([A, B], genes) - train.sum(1, keepdims=True) * p)
        / np.sqrt(train.sum(1, keepdims=True) * p + (train.sum(1, keepdims=True) * p) ** 2 / 100),
        -np.sqrt(75),
        np.sqrt(75),
    )
    np.testing.assert_allclose(tr.min_, rt.min(0))
    np.testing.assert_allclose(tr.max_, rt.max(0))
    np.testing.assert_allclose(
        tr.transform(C), (r - rt.min(0)) / (rt.max(0) - rt.min(0)), rtol=1e-5, atol=1e-6
    )


def test_gene_selector_top_mean_matches_scanpy_on_union(three):
    A, B, C = three
    sel = T.GeneSelector(mode="top_mean", n=7).fit([A, B])
    both = ad.concat([A, B], join="outer", fill_value=0)
    sc.pp.normalize_total(both, target_sum=1e4)
    sc.pp.log1p(both)
    means = pd.Series(np.asarray(both.X.mean(axis=0)).ravel(), index=both.var_names)
    expect = means.sort_values(ascending=False, kind="stable").index[:7].tolist()
    assert sel.genes_ == expect
    np.testing.assert_allclose(sel.scores_, means[expect].to_numpy(), rtol=1e-5)
    assert sel.fitted_on == {"samples": ["A", "B"], "n_spots": 75}
    counts = sel.transform(C)
    assert counts.shape == (20, 7) and counts.dtype == np.float32
    np.testing.assert_array_equal(counts, dense_union([C], expect))


def test_gene_selector_log_proportion_and_counts(three):
    A, B, _ = three
    union = T.gene_union([A, B])
    full = dense_union([A, B], union)
    lp = np.log((full + 1) / (full + 1).sum(1, keepdims=True)).mean(0)
    sel = T.GeneSelector(n=5, normalization="log_proportion").fit([A, B])
    assert sel.genes_ == [union[i] for i in np.argsort(-lp, kind="stable")[:5]]
    np.testing.assert_allclose(sel.scores_, np.sort(lp)[::-1][:5])
    sel = T.GeneSelector(n=5, normalization="counts").fit([A, B])
    assert sel.genes_ == [union[i] for i in np.argsort(-full.mean(0), kind="stable")[:5]]


def test_gene_selector_expressed_and_ambiguous():
    rng = np.random.default_rng(0)
    genes = ["A1", "A2", "__ambiguous[X+Y]", "A4"]
    counts = np.zeros((10, 4))
    counts[:5, 0] = 1  # 50 %
    counts[:1, 1] = 3  # 10 %
    counts[:, 2] = rng.integers(1, 5, 10)  # 100 %, ambiguous
    S = section("S", counts, genes, ambiguous=[False, False, True, False])
    sel = T.GeneSelector(mode="expressed", min_frac=0.1).fit([S])
    assert sel.genes_ == ["A1", "A2"]
    np.testing.assert_allclose(sel.scores_, [0.5, 0.1])
    sel = T.GeneSelector(mode="expressed", min_frac=0.2, exclude_ambiguous=False).fit([S])
    assert sel.genes_ == ["A1", "__ambiguous[X+Y]"]
    assert T.GeneSelector(mode="top_mean", n=1).fit([S]).genes_ == ["A1"]


def test_gene_selector_panel_missing(three):
    A, B, _ = three
    with pytest.raises(InputError, match=r"NOPE1, NOPE2.*Fix: .*allow_missing"):
        T.GeneSelector(mode="panel", panel=["G1", "NOPE1", "NOPE2"]).fit([A, B])
    sel = T.GeneSelector(mode="panel", panel=["G27", "NOPE1", "G1"], allow_missing=True)
    with pytest.warns(UserWarning, match="NOPE1"):
        sel.fit([A, B])
    assert sel.genes_ == ["G27", "G1"] and sel.dropped_ == ["NOPE1"]
    with pytest.raises(ConfigError, match="needs a panel"):
        T.GeneSelector(mode="panel")


def test_round_trip_through_json(three):
    A, B, C = three
    sel = T.GeneSelector(n=6).fit([A, B])
    for tr in (
        T.LogProportion(genes=sel.genes_),
        T.Log1pNormalized(genes=sel.genes_),
        T.PearsonResidualsMinMax(genes=sel.genes_),
    ):
        tr.fit([A, B])
        d = json.loads(json.dumps(tr.to_dict()))
        back = T.from_dict(d)
        assert type(back) is type(tr) and back.fitted_on == tr.fitted_on
        np.testing.assert_array_equal(back.transform(C), tr.transform(C))
    back = T.from_dict(json.loads(json.dumps(sel.to_dict())))
    assert back.genes_ == sel.genes_
    np.testing.assert_allclose(back.scores_, sel.scores_)
    with pytest.raises(ConfigError, match="not fitted"):
        T.LogProportion().transform(A)


def test_no_leakage_from_test_section(three):
    A, B, C = three
    sel = T.GeneSelector(n=8).fit([A, B])
    objs = [sel] + [
        cls(genes=sel.genes_).fit([A, B])
        for cls in (T.LogProportion, T.Log1pNormalized, T.PearsonResidualsMinMax)
    ]
    before = [json.dumps(o.to_dict()) for o in objs]
    out_c = [o.transform(C) for o in objs]
    C2 = C.copy()
    C2.X = sp.csr_matrix(C.X.toarray() * 7 + 3)
    out_c2 = [o.transform(C2) for o in objs]
    assert [json.dumps(o.to_dict()) for o in objs] == before
    for o in objs:
        assert o.fitted_on == {"samples": ["A", "B"], "n_spots": 75}
    assert all(not np.array_equal(x, y) for x, y in zip(out_c, out_c2, strict=True))
    # transforming A is unaffected by C: same output whatever C holds
    np.testing.assert_array_equal(objs[3].transform(A), objs[3].transform(A.copy()))
    # the fitted state does depend on the fitting data (the test above could fail)
    objs_abc = T.PearsonResidualsMinMax(genes=sel.genes_).fit([A, B, C])
    assert not np.allclose(objs_abc.p_, objs[3].p_)
    assert objs_abc.fitted_on["samples"] == ["A", "B", "C"]
    sel_c = T.GeneSelector(n=8).fit([C2])
    assert sel_c.fitted_on["samples"] == ["C"]


def test_load_panel(tmp_path):
    p3 = T.load_panel("deepspace_3")
    assert p3 == ["MKI67", "ESR1", "ERBB2"]
    p21 = T.load_panel("deepspace_21")
    assert len(p21) == 21 and "PDGFRB" in p21 and "PDGFR" not in p21
    assert p21[0] == "SPARC" and p21[-1] == "CTSK"
    text = (T.PANEL_DIR / "deepspace_21.txt").read_text()
    assert any(line.startswith("#") and "PDGFRB" in line for line in text.splitlines())
    f = tmp_path / "mine.txt"
    f.write_text("# my panel\nA\n\nB  # trailing comment\nA\n")
    assert T.load_panel(f) == ["A", "B"]
    assert T.GeneSelector(mode="panel", panel="deepspace_3").panel == p3
    with pytest.raises(ConfigError, match="deepspace_21"):
        T.load_panel("no_such_panel")


def test_pearson_minmax_warns_when_few_spots_saturate_the_clip(caplog):
    counts = np.zeros((20, 2), dtype=np.float32)
    counts[:, 1] = 10.0
    counts[:2, 0] = 100.0  # 2 of 20 spots far above the mean: clipped at sqrt(20)
    a = ad.AnnData(sp.csr_matrix(counts))
    a.var_names = ["A", "B"]
    a.obs["sample_id"] = "S1"
    with caplog.at_level("WARNING", logger="stpredict.learn.targets"):
        tr = T.PearsonResidualsMinMax().fit([a])
    assert tr.clip_ == pytest.approx(np.sqrt(20))
    assert "sit at the clip (worst 10.0%, A)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="stpredict.learn.targets"):
        T.PearsonResidualsMinMax(clip=100.0).fit([a])  # a high clip flattens nothing
    assert "clip" not in caplog.text
