"""Super-resolution end to end on a small real section: grid store with the section's whiteness
threshold, TTA predictions averaged over fold models, the measured / imputed AnnData."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stpredict.ingest.images import SlideImage
from stpredict.io import read_h5ad, read_json, read_table
from stpredict.learn.experiments import job_settings
from stpredict.learn.folds import build_manifest, collect_predictions, predict_fold, train_fold
from stpredict.learn.predict import load_model, predict
from stpredict.learn.superres import grid_rows, predict_superres
from stpredict.patches.centres import section_centres
from stpredict.patches.store import extract_patches
from tests.unit.learn import series_inputs as si


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("superres")
    sections, paths, images, stores = si.make_series(tmp)
    s = si.sheet()
    exp = si.experiment(series="S")
    man = build_manifest(job_settings(exp, "split"), sections, s, name="sr")
    models, files = {}, []
    for k in ("0", "1"):  # fold 1 imputes D2; fold 0 was trained on D2 (used for the mean test)
        d = tmp / "folds" / k
        out = {"model": d / "model.pt", "history": d / "history.tsv", "fitted": d / "fitted.json"}
        train_fold(
            job_settings(exp, "train"),
            "sr",
            k,
            man,
            sections,
            {x: str(v) for x, v in stores.items()},
            out,
        )
        predict_fold(
            job_settings(exp, "predict"), "sr", k, man, sections, {x: str(v) for x, v in stores.items()},
            out["model"], out["fitted"], d / "predictions.h5ad",
        )  # fmt: skip
        models[k], files = out["model"], [*files, d / "predictions.h5ad"]
    collected = collect_predictions([files[1]], "D2", tmp / "D2_predictions.h5ad")
    centres = section_centres(sections["D2"], "triangles")
    spots_json = read_json(stores["D2"].with_suffix(".json"))
    g = tmp / "patches" / "D2"
    with SlideImage(images["D2"], sample="D2") as image:
        extract_patches(
            image, centres[["x", "y"]].to_numpy(), si.SPEC, si.MPP,
            g / "triangles.npy", g / "triangles.tsv", g / "triangles.json",
            ids=centres["id"].to_list(), threshold=spots_json["whiteness"]["threshold"],
            extra=centres[["array_row", "array_col", "n_spots"]], progress=False,
        )  # fmt: skip
    return {
        "tmp": tmp, "models": models, "collected": collected, "centres": centres,
        "grid": g / "triangles.npy", "section": paths["D2"], "spots_json": spots_json,
    }  # fmt: skip


def test_grid_store_uses_the_sections_spot_whiteness_threshold(run):
    meta = read_json(run["grid"].with_suffix(".json"))
    assert meta["whiteness"]["threshold"] == run["spots_json"]["whiteness"]["threshold"]
    assert meta["whiteness"]["threshold_source"].startswith("given")
    table = read_table(run["grid"].with_suffix(".tsv"), dtype={"id": str})
    assert list(table["id"]) == list(run["centres"]["id"])
    assert {"array_row", "array_col", "n_spots", "white"} <= set(table.columns)
    assert np.load(run["grid"]).shape == (len(run["centres"]), 16, 16, 3)


def test_superres_anndata_holds_measured_spots_and_imputed_centres(run):
    out = predict_superres(
        run["tmp"] / "D2_predictions.h5ad", run["section"], run["grid"], {"1": run["models"]["1"]},
        run["tmp"] / "sr.h5ad", experiment="sr", grid="triangles", tta=4,
    )  # fmt: skip
    back = read_h5ad(run["tmp"] / "sr.h5ad")
    assert back.shape == out.shape
    kind = back.obs["kind"].astype(str).to_numpy()
    col = run["collected"]
    failed = col.obs["qc_failed"].to_numpy(bool)
    table = read_table(run["grid"].with_suffix(".tsv"), dtype={"id": str})
    rows = grid_rows(table, whiteness=True)
    assert (kind == "measured").sum() == (~failed).sum()
    assert (kind == "imputed").sum() == len(rows) + failed.sum()
    grid = (back.obs["centre"] == "triangles").to_numpy()
    assert grid.sum() == len(rows) and not table["white"].iloc[rows].any()
    # measured spots: the measured values and their held-out predictions, unchanged
    m = kind == "measured"
    np.testing.assert_array_equal(back.X[m], col.X[~failed])
    np.testing.assert_array_equal(back.layers["predicted"][m], col.layers["predicted"][~failed])
    # imputed: no measurement, a prediction; QC-failed spots are imputed spots
    assert np.isnan(back.X[~m]).all() and np.isfinite(back.layers["predicted"]).all()
    assert back.obs.loc[back.obs["qc_failed"].to_numpy(bool), "centre"].eq("spot").all()
    np.testing.assert_allclose(back.obsm["spatial"][grid], table.iloc[rows][["x", "y"]])
    meta = back.uns["stpredict"]
    assert meta["n_centres"] == len(table) and meta["n_centres_predicted"] == len(rows)
    assert meta["target_transform"]["name"] == "log1p" and list(meta["folds"]) == ["1"]
    assert "D2" in back.uns["spatial"]


def test_centres_are_the_mean_of_the_fold_models_tta_predictions(run):
    models = run["models"]
    out = predict_superres(
        run["tmp"] / "D2_predictions.h5ad", run["section"], run["grid"], models,
        run["tmp"] / "sr2.h5ad", experiment="sr", grid="triangles", tta=4,
    )  # fmt: skip
    table = read_table(run["grid"].with_suffix(".tsv"), dtype={"id": str})
    rows = grid_rows(table, whiteness=True)
    genes = list(out.var_names)
    each = []
    for path in models.values():
        model, meta = load_model(path)
        p, _ = predict(model, [run["grid"]], [rows], tta=4)
        each.append(p[:, [list(meta["genes"]).index(g) for g in genes]])
    grid = (out.obs["centre"] == "triangles").to_numpy()
    np.testing.assert_allclose(
        out.layers["predicted"][grid], np.mean(each, axis=0), rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(each[0], each[1])  # two different models: the mean is a real average
    assert out.obs.loc[grid, "fold"].eq("0+1").all()
    assert json.loads(json.dumps(out.uns["stpredict"]["averaged_over_folds"])) == 2


def test_superres_settings_are_checked_at_parse_time():
    from stpredict.errors import ConfigError
    from stpredict.learn.experiments import check_experiment, resolve_experiment

    s = si.sheet()
    ok = resolve_experiment(
        {"sections": {"samples": ["D1"]}, "split": {"scheme": "random_within_section"},
         "superres": {"enabled": True}},
        {},
    )  # fmt: skip
    assert ok["superres"] == {"enabled": True, "grid": "auto", "stride_um": 55.0}
    check_experiment(ok, s, thorough=False)
    squares = {**ok, "superres": {**ok["superres"], "grid": "squares"}}
    with pytest.raises(ConfigError, match="does not fit the visium.*Fix: use 'triangles'"):
        check_experiment(squares, s, thorough=False)
    clusters = resolve_experiment({**{k: ok[k] for k in ("sections", "split", "superres")},
                                   "task": "clusters"}, {})  # fmt: skip
    with pytest.raises(ConfigError, match="clusters"):
        check_experiment(clusters, s, thorough=False)
    no_image = s.copy()
    no_image.loc["D1", "image"] = ""
    with pytest.raises(ConfigError, match="full-resolution image"):
        check_experiment(ok, no_image, thorough=False)


def test_a_grid_off_the_spot_lattice_names_the_grid_that_fits():
    from stpredict.errors import ConfigError
    from stpredict.patches.centres import resolve_grid

    with pytest.raises(
        ConfigError,
        match=r"superres.grid 'triangles' does not fit the st .*Fix: use 'squares' \(2 x 2 "
        r"blocks of the square ST grid\) or 'auto'.*'stride' with superres.stride_um",
    ):
        resolve_grid("triangles", "st", "S1")
    what = "semi_supervised.pool interspot grid"
    with pytest.raises(ConfigError, match=r"Fix: use 'squares' \(2 x 2 blocks") as info:
        resolve_grid("triangles", "st", "S1", what=what)
    assert "stride" not in str(info.value)  # crops between spots: no stride grid
    with pytest.raises(ConfigError, match="unknown semi_supervised.pool interspot grid 'stride'"):
        resolve_grid("stride", "st", "S1", what=what)
