from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stpredict.errors import InputError
from stpredict.ingest.images import SlideImage
from stpredict.patches.geometry import PatchSpec
from stpredict.patches.store import extract_patches, load_patches
from stpredict.wsi.slides import choose_level, slide_levels
from stpredict.wsi.tiles import background_fraction, kept_rows, tile_grid, tile_slide
from tests.unit.wsi.helpers import tissue_image, write_png, write_pyramid


# ------------------------------------------------------------------------------ background
def _constructed() -> np.ndarray:
    """Four 10 x 10 tiles side by side with known background shares (ST-Net's rule, 220)."""
    img = np.zeros((10, 40, 3), dtype=np.uint8)
    img[:, 0:10] = (220, 220, 220)  # mean exactly 220: background -> 100 %
    t = np.full((100, 3), (219, 220, 220), dtype=np.uint8)  # mean 219.67: tissue
    t[:50] = (255, 255, 150)  # mean exactly 220: background -> exactly 50 %
    img[:, 10:20] = t.reshape(10, 10, 3)
    t = t.copy()
    t[50] = (221, 219, 220)  # one more background pixel -> 51 %
    img[:, 20:30] = t.reshape(10, 10, 3)
    img[:, 30:40] = (0, 0, 255)  # mean 85 -> 0 %
    return img


def test_background_fraction_is_exact_at_the_threshold():
    img = _constructed()
    crops = np.stack([img[:, i : i + 10] for i in range(0, 40, 10)])
    assert background_fraction(crops, 220).tolist() == [1.0, 0.5, 0.51, 0.0]
    assert background_fraction(crops, 219.6).tolist() == [1.0, 1.0, 1.0, 0.0]  # 219.67 counts
    assert background_fraction(crops, 219.7).tolist() == [1.0, 0.5, 0.51, 0.0]
    assert background_fraction(crops[:0], 220).shape == (0,)


def test_tiles_with_more_than_half_background_are_dropped(tmp_path):
    png = write_png(tmp_path / "c.png", _constructed())
    with SlideImage(png, sample="C") as img:
        level = slide_levels(img, 1.0)[0]
        spec = PatchSpec(fov_um=10.0, size_px=5)
        table = tile_slide(img, level, spec, tmp_path / "c" / "tiles", rgb=220, max_frac=0.5)
    assert table["background_frac"].tolist() == [1.0, 0.5, 0.51, 0.0]
    assert table["keep"].tolist() == [False, True, False, True]  # exactly half is kept
    assert kept_rows(pd.read_csv(tmp_path / "c" / "tiles.tsv", sep="\t")).tolist() == [1, 3]
    meta = json.loads((tmp_path / "c" / "tiles.json").read_text())["wsi"]
    assert (meta["n_tiles"], meta["n_kept"], meta["n_background"]) == (4, 2, 2)
    assert meta["background"]["rgb"] == 220 and meta["background"]["max_frac"] == 0.5


# ------------------------------------------------------------------------------ grid
def test_tile_grid_is_non_overlapping_and_inside_the_image():
    g = tile_grid((100, 130), 30)
    assert len(g) == 3 * 4 and g["tile_row"].max() == 2 and g["tile_col"].max() == 3
    assert (g["x0"] + 30 <= 130).all() and (g["y0"] + 30 <= 100).all()
    assert sorted(set(g["x0"])) == [0, 30, 60, 90] and sorted(set(g["y0"])) == [0, 30, 60]
    assert np.allclose(g["x"] - g["x0"], 15.0) and (g["cx"] == g["x0"] + 15).all()
    from stpredict.patches.geometry import crop_windows

    x0, y0 = crop_windows(g[["cx", "cy"]].to_numpy(float), 30)
    assert (x0 == g["x0"]).all() and (y0 == g["y0"]).all()  # each crop is its cell
    odd = tile_grid((100, 130), 31)
    x0, _ = crop_windows(odd[["cx", "cy"]].to_numpy(float), 31)
    assert (x0 == odd["x0"]).all()
    assert tile_grid((20, 20), 30).empty
    dense = tile_grid((100, 130), 30, pitch=15)
    assert len(dense) == 6 * 8 and (dense["cx"] == dense["x0"] + 7).all()


def test_tile_centres_are_in_full_resolution_pixels_at_a_coarser_level(tmp_path):
    tif = tmp_path / "p.tif"
    write_pyramid(tif, tissue_image(256, 384), mpp=0.5, n_levels=3)
    spec = PatchSpec(fov_um=32.0, size_px=8)  # the model sees 4 µm/px -> level 2 (2 µm/px)
    with SlideImage(tif, sample="P") as img:
        level = choose_level(slide_levels(img, 0.5), spec.fov_um / spec.size_px, 0.1)
        table = tile_slide(img, level, spec, tmp_path / "t", rgb=220, max_frac=0.5)
    assert level.index == 2 and level.downsample == 4
    assert len(table) == (64 // 16) * (96 // 16)  # 32 µm = 16 px of level 2
    assert np.allclose(table["x"], (table["tile_col"] + 0.5) * 16 * 4)
    assert np.allclose(table["y"], (table["tile_row"] + 0.5) * 16 * 4)
    assert np.allclose(table["x_level"], (table["tile_col"] + 0.5) * 16)
    meta = json.loads((tmp_path / "t.json").read_text())
    assert meta["wsi"]["level"]["index"] == 2 and meta["wsi"]["tile_px_fullres"] == 64.0
    assert meta["size_px"] == 8 and meta["mpp"] == 2.0


# ------------------------------------------------------------------------------ same extractor
@pytest.mark.parametrize("level_index", [0, 1])
def test_tiles_equal_the_spot_extractor_at_the_same_centres(tmp_path, level_index):
    tif = tmp_path / "p.tif"
    levels = write_pyramid(tif, tissue_image(240, 300, seed=3), mpp=1.0, n_levels=2)
    spec = PatchSpec(fov_um=30.0, size_px=12)
    with SlideImage(tif, sample="P") as img:
        level = slide_levels(img, 1.0)[level_index]
        table = tile_slide(img, level, spec, tmp_path / "tiles", rgb=220, max_frac=0.5)
    tiles = np.asarray(load_patches(tmp_path / "tiles.npy"))
    # the spot extractor on the level's own pixels (a plain image at that resolution)
    ref_img = write_png(tmp_path / "level.png", levels[level_index])
    # the integer centres the tiles were cut at (crop 30 px at level 0, 15 px at level 1)
    xy = np.floor(table[["x_level", "y_level"]].to_numpy())
    with SlideImage(ref_img, sample="P") as ref:
        ref_table = extract_patches(
            ref,
            xy,
            spec,
            level.mpp,
            tmp_path / "ref.npy",
            tmp_path / "ref.tsv",
            tmp_path / "ref.json",
            progress=False,
        )
    assert np.array_equal(tiles, np.asarray(load_patches(tmp_path / "ref.npy")))
    assert np.allclose(table["mean_rgb"], ref_table["mean_rgb"])


# ------------------------------------------------------------------------------ errors
def test_a_slide_without_tissue_is_refused(tmp_path):
    png = write_png(tmp_path / "blank.png", np.full((64, 64, 3), 250, np.uint8))
    with SlideImage(png, sample="B") as img:
        with pytest.raises(InputError) as e:
            tile_slide(
                img,
                slide_levels(img, 1.0)[0],
                PatchSpec(fov_um=16, size_px=8),
                tmp_path / "b",
                220,
                0.5,
            )
    msg = str(e.value)
    assert "no tissue tile" in msg and str(png) in msg and "sample 'B'" in msg
    assert "Fix:" in msg and "\n" not in msg


def test_a_slide_smaller_than_a_tile_is_refused(tmp_path):
    png = write_png(tmp_path / "tiny.png", tissue_image(10, 10))
    with (
        SlideImage(png, sample="T") as img,
        pytest.raises(InputError, match="smaller than one tile"),
    ):
        tile_slide(
            img,
            slide_levels(img, 1.0)[0],
            PatchSpec(fov_um=16, size_px=8),
            tmp_path / "t",
            220,
            0.5,
        )
