"""Section imputation over a whole series (leave one section out) and the spots that failed QC:
predicted, marked ``obs["qc_failed"]``, and left out of every score."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stpredict.errors import ConfigError
from stpredict.evaluate.baselines import run_baseline, write_baseline_predictions
from stpredict.evaluate.latent import latent_vs_physical, neighbour_test, purity_table
from stpredict.evaluate.metrics import score_experiment, score_folds
from stpredict.evaluate.ols import ols_inputs
from stpredict.io import read_h5ad, read_table
from stpredict.learn.experiments import (
    check_experiment,
    experiment_samples,
    job_settings,
    series_sections,
)
from stpredict.learn.folds import build_manifest, collect_predictions, predict_fold, train_fold
from stpredict.learn.splits import (
    audit,
    fold_ids,
    fold_test_samples,
    leave_one_section_out,
    outer_folds,
)
from stpredict.outputs import check_result
from stpredict.patches.qc import qc_failed
from stpredict.vocab import SMOOTHNESS_NOTE_KEY, UNITS_KEY, target_units
from tests.spatial_plots import draw_with_scanpy_and_squidpy
from tests.unit.learn import series_inputs as si


def test_series_folds_follow_the_order_column_not_the_sheet():
    s = si.sheet()
    exp = si.experiment(series="S")
    assert series_sections(exp, s) == ["D1", "D2", "D3"]  # sheet order is D3, D1, D2
    assert experiment_samples(exp, s) == ["D1", "D2", "D3"]
    assert outer_folds(exp, s) == fold_ids(exp, s) == ["0", "1", "2"]
    assert [fold_test_samples(exp, s, k) for k in "012"] == [["D1"], ["D2"], ["D3"]]
    # the single-fold form keeps working
    one = si.experiment(train_sections=["D1", "D3"], test_section="D2")
    assert outer_folds(one, s) == ["0"] and fold_test_samples(one, s, "0") == ["D2"]


@pytest.mark.parametrize(
    ("split", "match"),
    [
        ({"series": "NOPE"}, "has no section.*Fix: name a series of the sheet's 'series' column"),
        ({"series": "S", "test_section": "D2"}, "both split.series"),
    ],
)
def test_bad_series_settings_are_refused(split, match):
    with pytest.raises(ConfigError, match=match):
        check_experiment(si.experiment(**split), si.sheet(), thorough=False)


def test_a_series_of_one_section_says_how_to_fix_it():
    s = si.sheet()
    s.loc[["D1", "D3"], "series"] = "OTHER"
    with pytest.raises(ConfigError) as info:
        series_sections(si.experiment(series="S"), s)
    msg = str(info.value)
    assert "holds one section (D2)" in msg and "sample 'D2'" in msg and "\n" not in msg
    assert "Fix: give the block's other consecutive sections series 'S'" in msg
    assert "random_within_section or spatial_blocks" in msg


def test_a_series_section_without_order_is_refused():
    s = si.sheet()
    s.loc["D2", "order"] = ""
    with pytest.raises(ConfigError, match="no integer 'order'"):
        series_sections(si.experiment(series="S"), s)


def _spot_table(sections):
    return pd.concat(
        [
            pd.DataFrame({"sample_id": k, "spot_id": a.obs_names, "patient_id": "P1"})
            for k, a in sections.items()
        ],
        ignore_index=True,
    )


def test_leave_one_section_out_manifest():
    spots = pd.DataFrame(
        {
            "sample_id": np.repeat(["D1", "D2", "D3", "X9"], 20),
            "spot_id": [f"s{i}" for i in range(20)] * 4,
            "patient_id": "P1",
        }
    )
    man = leave_one_section_out(spots, ["D1", "D2", "D3"], val_frac=0.25, seed=3)
    meta = pd.DataFrame({"sample_id": ["D1", "D2", "D3", "X9"], "patient_id": "P1", "series": "S"})
    audit(man, meta)  # whole sections on one side; series split allowed for imputation
    assert "X9" not in set(man.sample_id)  # outside the series: left out
    for k, test in enumerate(["D1", "D2", "D3"]):
        g = man[man.fold == str(k)]
        assert set(g.loc[g.role == "test", "sample_id"]) == {test}
        fit = g[g.role != "test"]
        assert set(fit.sample_id) == {"D1", "D2", "D3"} - {test}
        assert (fit.groupby("sample_id")["role"].apply(lambda r: (r == "val").sum()) == 5).all()
        assert (g.outer_fold == k).all() and (g.scheme == "section_imputation").all()
    shuffled = leave_one_section_out(
        spots.sample(frac=1, random_state=1), ["D1", "D2", "D3"], 0.25, 3
    )
    pd.testing.assert_frame_equal(man, shuffled)


@pytest.fixture(scope="module")
def imputed(tmp_path_factory):
    """Every fold of a leave-one-section-out imputation of D1-D3, trained and predicted."""
    tmp = tmp_path_factory.mktemp("imputation")
    sections, paths, _, stores = si.make_series(tmp)
    s = si.sheet()
    exp = si.experiment(series="S")
    man = build_manifest(job_settings(exp, "split"), sections, s, name="imp")
    store_paths = {k: str(v) for k, v in stores.items()}
    files, fitted = {}, {}
    for k in outer_folds(exp, s):
        d = tmp / "folds" / k
        outputs = {
            "model": d / "model.pt",
            "history": d / "history.tsv",
            "fitted": d / "fitted.json",
        }
        train_fold(job_settings(exp, "train"), "imp", k, man, sections, store_paths, outputs)
        files[k] = d / "predictions.h5ad"
        fitted[k] = str(outputs["fitted"])
        predict_fold(
            job_settings(exp, "predict"),
            "imp",
            k,
            man,
            sections,
            store_paths,
            outputs["model"],
            outputs["fitted"],
            files[k],
        )
    return {
        "tmp": tmp,
        "sections": sections,
        "paths": paths,
        "manifest": man,
        "files": files,
        "fitted": fitted,
    }


def test_qc_failed_spots_are_predicted_marked_and_never_split(imputed):
    sections, man = imputed["sections"], imputed["manifest"]
    d2 = sections["D2"]
    failed = d2.obs_names[qc_failed(d2)]
    assert len(failed) == 6  # the white spots are not among them (glass: not imputed)
    assert not set(failed) & set(man.spot_id)  # never in a split: no training, no validation
    out = read_h5ad(imputed["files"]["1"])  # fold 1 imputes D2
    marked = out.obs["qc_failed"].to_numpy(bool)
    assert sorted(out.obs.loc[marked, "spot_id"]) == sorted(failed)
    assert marked.sum() + (~marked).sum() == out.n_obs == int(d2.obs["keep"].sum()) + 6
    assert np.isnan(out.X[marked]).all() and np.isfinite(out.X[~marked]).all()
    assert np.isnan(out.layers["measured_smoothed"][marked]).all()
    assert np.isfinite(out.layers["predicted"]).all()
    # the other sections of the series have no failed spots; their files have the column
    assert not read_h5ad(imputed["files"]["0"]).obs["qc_failed"].any()
    # collected per section, they stay in the prediction file
    col = collect_predictions(  # (not tmp/D2.h5ad: that is the section file)
        list(imputed["files"].values()), "D2", imputed["tmp"] / "collected" / "D2.h5ad"
    )
    assert int(col.obs["qc_failed"].sum()) == 6


def _garbled(a: ad.AnnData) -> ad.AnnData:
    """QC-failed spots with finite, wildly wrong measured values, predictions and embeddings."""
    b = a.copy()
    m = b.obs["qc_failed"].to_numpy(bool)
    rng = np.random.default_rng(0)
    b.X[m] = rng.normal(50, 10, (m.sum(), b.n_vars))
    b.layers["predicted"][m] = rng.normal(-50, 10, (m.sum(), b.n_vars))
    b.layers["measured_smoothed"][m] = 7.0
    b.obsm["embedding"][m] = 1e3
    return b


def test_every_score_leaves_qc_failed_spots_out(imputed):
    with_failed = _garbled(read_h5ad(imputed["files"]["1"]))
    m = with_failed.obs["qc_failed"].to_numpy(bool)
    assert m.sum() == 6
    without = with_failed[~m].copy()
    platforms = {"D2": "visium"}
    for a, b in zip(
        score_experiment([with_failed], platforms, unit="sample_id"),
        score_experiment([without], platforms, unit="sample_id"),
        strict=True,
    ):
        pd.testing.assert_frame_equal(a, b)
    per_gene = score_experiment([with_failed], platforms, unit="sample_id")[0]
    assert (per_gene["n_spots"] == (~m).sum()).all()
    for a, b in zip(
        score_folds([with_failed], platforms), score_folds([without], platforms), strict=True
    ):
        pd.testing.assert_frame_equal(a, b)
    table = read_table(imputed["tmp"] / "patches/D2/spots.tsv", dtype={"id": str})
    for a, b in zip(
        ols_inputs([with_failed], {"D2": table}), ols_inputs([without], {"D2": table}), strict=True
    ):
        pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(
        neighbour_test(with_failed, "visium"), neighbour_test(without, "visium")
    )
    assert latent_vs_physical(with_failed, "visium") == latent_vs_physical(without, "visium")
    with_failed.obs["annotation"] = np.where(np.arange(with_failed.n_obs) % 2, "tumor", "non")
    without.obs["annotation"] = with_failed.obs["annotation"][~m].to_numpy()
    pd.testing.assert_frame_equal(
        purity_table({"D2": [with_failed]}), purity_table({"D2": [without]})
    )


def test_baselines_never_see_qc_failed_spots(imputed):
    sections, man = imputed["sections"], imputed["manifest"]
    preds = run_baseline(
        "mean", man, sections, imputed["fitted"], platforms=dict.fromkeys(sections, "visium")
    )
    d2 = next(a for a in preds if a.obs["sample_id"].iloc[0] == "D2")
    failed = set(sections["D2"].obs_names[qc_failed(sections["D2"])])
    assert d2.n_obs == int(sections["D2"].obs["keep"].sum())
    assert not failed & set(d2.obs["spot_id"].astype(str))


def test_collected_predictions_are_self_contained_and_drawn_by_scanpy_and_squidpy(imputed):
    out = imputed["tmp"] / "self_contained" / "D2.h5ad"
    collect_predictions(list(imputed["files"].values()), "D2", out, section=imputed["paths"]["D2"])
    a = read_h5ad(out)
    assert check_result(a) == []
    section = read_h5ad(imputed["paths"]["D2"])
    theirs, ours = section.uns["spatial"]["D2"], a.uns["spatial"]["D2"]
    assert ours["scalefactors"] == theirs["scalefactors"]
    assert ours["metadata"] == theirs["metadata"]
    for key in ("hires", "lowres"):
        np.testing.assert_array_equal(ours["images"][key], theirs["images"][key])
    ids = section.var["gene_ids"]
    assert a.var["gene_ids"].tolist() == ids[a.var_names].tolist()
    # the section's held-out scores are the metrics' (the section is the unit here)
    per_gene = score_experiment([a], {"D2": "visium"}, unit="sample_id")[0]
    raw = per_gene[(per_gene.target == "raw") & (per_gene.stratum == "all")].set_index("gene")
    np.testing.assert_allclose(a.var["held_out_r"], raw.loc[a.var_names, "pearson"], atol=1e-9)
    assert (a.var["held_out_n_spots"] == int(section.obs["keep"].sum())).all()  # QC-failed out
    assert ((a.var["held_out_q_bh"] >= a.var["held_out_p"]) | a.var["held_out_p"].isna()).all()
    assert a.uns["stpredict"][UNITS_KEY] == target_units("log1p")
    assert "units" not in a.uns["stpredict"]["target_transform"]
    assert a.uns["stpredict"][SMOOTHNESS_NOTE_KEY]
    draw_with_scanpy_and_squidpy(a, "D2", str(a.var_names[0]))


def test_baseline_predictions_are_self_contained(imputed):
    sections, man = imputed["sections"], imputed["manifest"]
    preds = run_baseline(
        "mean", man, sections, imputed["fitted"], platforms=dict.fromkeys(sections, "visium")
    )
    out = imputed["tmp"] / "baseline" / "predictions.h5ad"
    write_baseline_predictions(preds, imputed["paths"], out)
    a = read_h5ad(out)
    assert check_result(a) == []
    assert sorted(a.uns["spatial"]) == ["D1", "D2", "D3"]
    d3 = read_h5ad(imputed["paths"]["D3"]).uns["spatial"]["D3"]
    np.testing.assert_array_equal(a.uns["spatial"]["D3"]["images"]["hires"], d3["images"]["hires"])
    assert a.uns["stpredict"][UNITS_KEY] == target_units("log1p")
    one = a[a.obs["sample_id"] == "D3"].copy()  # one section of the file, over its H&E
    draw_with_scanpy_and_squidpy(one, "D3", str(one.var_names[0]))
