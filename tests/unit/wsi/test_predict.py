"""predict_image and the `stpredict predict` command, with a tiny model trained here (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from stpredict.errors import ConfigError, GeometryError, InputError
from stpredict.io import read_h5ad
from stpredict.wsi.card import load_model_dir
from stpredict.wsi.predict import predict_image
from tests.conftest import REPO
from tests.unit.wsi.helpers import FOV_UM, GENES, SIZE_PX, tissue_image, write_png, write_pyramid


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model"))


def make_model(root):
    from tests.unit.wsi.helpers import make_model_dir

    return make_model_dir(root)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A new pyramidal slide at 0.5 µm/px (the model sees 2 µm/px: level 2 is read)."""
    path = tmp_path_factory.mktemp("slide") / "new.tif"
    write_pyramid(path, tissue_image(512, 640, seed=5), mpp=0.5, n_levels=4)
    return path


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "stpredict", "predict", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_card_carries_genes_transform_geometry_and_mpp(model_dir):
    card = json.loads((model_dir / "model.json").read_text())
    assert card["genes"] == GENES and card["target_transform"]["name"] == "log1p"
    assert card["fov_um"] == FOV_UM and card["patch_mpp"] == FOV_UM / SIZE_PX
    assert card["training_mpp"] == {"S1": 1.0}
    assert card["folds"]["0"]["model"] == "folds/0/model.pt"  # relative: the folder travels
    ms = load_model_dir(model_dir)
    assert sorted(ms.models) == ["0", "1"] and ms.spec.fov_um == FOV_UM
    one = load_model_dir(model_dir / "folds" / "1")
    assert list(one.models) == ["1"] and one.genes == GENES


def test_the_command_tiles_a_slide_without_spots(model_dir, slide, tmp_path):
    out = tmp_path / "new.h5ad"
    proc = _cli(model_dir, slide, "-o", out, "--store", tmp_path / "tiles", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = read_h5ad(out)
    table = pd.read_csv(tmp_path / "tiles.tsv", sep="\t")
    meta = a.uns["stpredict"]
    assert meta["level"]["index"] == 2 and meta["mpp"] == 0.5 and meta["mpp_source"] == "image tags"
    assert a.n_obs == int(table["keep"].sum()) > 0 and a.n_obs < len(table)  # glass dropped
    assert list(a.var_names) == GENES and np.isnan(a.X).all()
    assert np.isfinite(a.layers["predicted"]).all()
    assert np.allclose(a.obsm["spatial"], table.loc[table["keep"], ["x", "y"]].to_numpy())
    assert meta["averaged_over_folds"] == 2 and meta["target_transform"]["name"] == "log1p"
    assert a.uns["spatial"]["new"]["scalefactors"]["spot_diameter_fullres"] == 64.0
    # the planted link: the dark half of the tissue is predicted darker (gene DARK higher)
    left = a.obsm["spatial"][:, 0] < 320
    dark = a.layers["predicted"][:, 0]
    assert dark[left].mean() > dark[~left].mean()
    # the same as the in-process call, which is the mean of the two fold models
    b = predict_image(model_dir, slide)
    assert np.allclose(b.layers["predicted"], a.layers["predicted"], atol=1e-5)
    f0 = predict_image(model_dir / "folds" / "0", slide).layers["predicted"]
    f1 = predict_image(model_dir / "folds" / "1", slide).layers["predicted"]
    assert np.allclose((f0 + f1) / 2, a.layers["predicted"], atol=1e-5)
    # the image features: the first fold model's penultimate layer, one space for every image
    assert a.uns["stpredict"]["embedding"]["fold"] == "0"
    emb = a.obsm["embedding"]
    assert emb.shape[0] == a.n_obs and emb.shape[1] == meta["embedding"]["n_features"] > 0
    f0_emb = predict_image(model_dir / "folds" / "0", slide).obsm["embedding"]
    assert np.allclose(f0_emb, emb, atol=1e-5) and emb.std(axis=0).max() > 0


def test_the_command_predicts_given_spots(model_dir, slide, tmp_path):
    spots = pd.DataFrame({"id": ["a", "b", "c"], "x": [160.0, 320.0, 480.0], "y": [256.0] * 3})
    spots.to_csv(tmp_path / "spots.csv", index=False)
    out = tmp_path / "spots.h5ad"
    proc = _cli(model_dir, slide, "--spots", tmp_path / "spots.csv", "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = read_h5ad(out)
    assert list(a.obs_names) == ["a", "b", "c"] and a.uns["stpredict"]["kind"] == "spots"
    assert np.allclose(a.obsm["spatial"], spots[["x", "y"]].to_numpy())
    assert a.layers["predicted"][0, 0] > a.layers["predicted"][2, 0]  # dark left, pink right
    b = predict_image(model_dir, slide, spots=spots[["x", "y"]].to_numpy())
    assert np.allclose(b.layers["predicted"], a.layers["predicted"], atol=1e-5)


def test_the_command_fails_in_one_line(model_dir, tmp_path):
    jpg = write_png(tmp_path / "no_mpp.png", tissue_image(200, 200))
    proc = _cli(model_dir, jpg, "-o", tmp_path / "x.h5ad", cwd=tmp_path)
    assert proc.returncode == 1 and not (tmp_path / "x.h5ad").exists()
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("stpredict error:") and str(jpg) in err and "--mpp" in err


def test_an_image_coarser_than_the_model_is_refused(model_dir, tmp_path):
    png = write_png(tmp_path / "coarse.png", tissue_image(200, 200))
    with pytest.raises(GeometryError) as e:
        predict_image(model_dir, png, mpp=4.0)  # the model sees 2 µm/px
    msg = str(e.value)
    assert "coarser than the 2 µm/px" in msg and str(png) in msg and "\n" not in msg
    with pytest.raises(GeometryError, match="disagrees with the image's resolution tags"):
        tif = tmp_path / "tagged.tif"
        write_pyramid(tif, tissue_image(128, 128), mpp=0.5, n_levels=1)
        predict_image(model_dir, tif, mpp=1.0)


def test_missing_or_mismatched_model_files_are_refused(model_dir, slide, tmp_path):
    with pytest.raises(InputError, match="model folder does not exist"):
        predict_image(tmp_path / "nope", slide)
    copy = tmp_path / "exp"
    shutil.copytree(model_dir, copy)
    (copy / "folds" / "1" / "model.pt").unlink()
    with pytest.raises(InputError, match="fold 1: model.pt is missing"):
        predict_image(copy, slide)
    (copy / "model.json").unlink()
    with pytest.raises(InputError, match="not a model folder"):
        predict_image(copy, slide)
    with pytest.raises(InputError, match="no model card"):
        predict_image(copy / "folds" / "0", slide)
    card = json.loads((model_dir / "model.json").read_text())
    shutil.copytree(model_dir, tmp_path / "exp2")
    (tmp_path / "exp2" / "model.json").write_text(json.dumps({**card, "genes": ["DARK", "XYZ"]}))
    with pytest.raises(InputError, match="does not select 1 of the card's genes"):
        predict_image(tmp_path / "exp2", slide)
    (tmp_path / "exp2" / "model.json").write_text(json.dumps({**card, "task": "clusters"}))
    with pytest.raises(ConfigError, match="classifies clusters"):
        predict_image(tmp_path / "exp2", slide)


def test_spots_outside_the_image_or_without_columns_are_refused(model_dir, slide, tmp_path):
    with pytest.raises(GeometryError, match="1 of 2 spots lie wholly outside the image"):
        predict_image(model_dir, slide, spots=np.array([[100.0, 100.0], [5000.0, 100.0]]))
    pd.DataFrame({"col": [1.0], "row": [2.0]}).to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=r"lacks column\(s\) \['x', 'y'\]"):
        predict_image(model_dir, slide, spots=tmp_path / "s.tsv")


def test_the_slide_heatmap_is_drawn_over_the_thumbnail(model_dir, slide, tmp_path):
    from PIL import Image

    from stpredict.plot.wsi import plot_slide_heatmap

    a = predict_image(model_dir, slide, out=tmp_path / "s.h5ad")
    scales = plot_slide_heatmap(read_h5ad(tmp_path / "s.h5ad"), GENES, "log1p", tmp_path / "s.png")
    assert set(scales) == set(GENES) and scales["DARK"]["vmin"] < scales["DARK"]["vmax"]
    assert (tmp_path / "s.pdf").stat().st_size > 0
    assert json.loads(Image.open(tmp_path / "s.png").text["colour_scales"]) == scales
    with pytest.raises(ConfigError, match="none of the genes"):
        plot_slide_heatmap(a, ["NOPE"], "log1p", tmp_path / "t.png")


def test_scanpy_draws_the_slide_file_over_its_thumbnail(model_dir, slide, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    a = predict_image(model_dir, slide, out=tmp_path / "s.h5ad")
    a = read_h5ad(tmp_path / "s.h5ad")
    axes = sc.pl.spatial(a, color="DARK", layer="predicted", library_id="new", show=False)
    assert axes and axes[0].get_images()  # the thumbnail is drawn under the tiles
    plt.close("all")


def test_the_slide_file_is_self_contained_and_scanpy_squidpy_draw_it(model_dir, slide, tmp_path):
    from stpredict.outputs import check_result
    from stpredict.vocab import SMOOTHNESS_NOTE_KEY, UNITS_KEY, target_units
    from tests.spatial_plots import draw_with_scanpy_and_squidpy

    predict_image(model_dir, slide, out=tmp_path / "s.h5ad")
    a = read_h5ad(tmp_path / "s.h5ad")
    assert check_result(a, samples=["new"]) == []
    assert a.uns["stpredict"][UNITS_KEY] == target_units("log1p")
    assert a.uns["stpredict"][SMOOTHNESS_NOTE_KEY]
    assert "units" not in a.uns["stpredict"].get("target_transform", {})
    assert list(a.var["gene_ids"]) == [""] * a.n_vars  # the tiny card's sections are unknown
    draw_with_scanpy_and_squidpy(a, "new", "DARK")


def test_the_card_carries_the_sections_gene_ids(tmp_path):
    import anndata as ad

    from stpredict.io import write_h5ad
    from stpredict.wsi.card import _gene_ids

    var = pd.DataFrame({"gene_ids": ["ENSG1", ""]}, index=["DARK", "FLAT"])
    a = ad.AnnData(X=np.zeros((2, 2), dtype=np.float32), var=var)
    write_h5ad(a, tmp_path / "S1.h5ad")
    b = ad.AnnData(
        X=np.zeros((2, 2), dtype=np.float32),
        var=pd.DataFrame({"gene_ids": ["ENSG9", "ENSG2"]}, index=["DARK", "FLAT"]),
    )
    write_h5ad(b, tmp_path / "S2.h5ad")
    ids = _gene_ids(
        ["DARK", "FLAT", "NONE"], {"S1": tmp_path / "S1.h5ad", "S2": tmp_path / "S2.h5ad"}
    )
    assert ids == {"DARK": "ENSG1", "FLAT": "ENSG2", "NONE": ""}
