"""Whole-slide tiles of the rounds' pool: cut at the round experiment's own geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stpredict.errors import InputError
from stpredict.wsi.pool import pool_spec, tile_pool_slide
from tests.unit.wsi.helpers import tissue_image, write_pyramid


def _stores(root, fov_um, size_px, name="A"):
    spec = {"fov_um": fov_um, "fov_px": None, "size_px": size_px, "pad_value": 255}
    path = root / name / "spots.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**spec, "spec": spec, "mpp": 1.0}))
    return {name: path}


@pytest.mark.parametrize(("fov_um", "size_px", "level"), [(32.0, 16, 1), (64.0, 16, 2)])
def test_a_pool_slide_is_tiled_at_the_experiments_own_geometry(tmp_path, fov_um, size_px, level):
    """Tile side = the experiment's field of view, read at the level its models need."""
    img = tissue_image(512, 640)
    write_pyramid(tmp_path / "s.tif", img, mpp=1.0, n_levels=3)
    stores = _stores(tmp_path, fov_um, size_px)
    spec, patch_mpp = pool_spec(stores)
    assert (spec.fov_um, spec.size_px, patch_mpp) == (fov_um, size_px, fov_um / size_px)
    prefix = tmp_path / "pool" / "S" / "tiles"
    table = tile_pool_slide(tmp_path / "s.tif", None, "S", stores, prefix, 220, 0.5, 0.1, "e")
    meta = json.loads(prefix.with_suffix(".json").read_text())
    assert meta["wsi"]["level"]["index"] == level  # 2 or 4 µm/px = fov_um / size_px
    side = int(fov_um)  # full-resolution px at 1 µm/px
    assert len(table) == (512 // side) * (640 // side)
    assert meta["pool"]["experiment"] == "e" and meta["spec"]["fov_um"] == fov_um
    store = np.load(prefix.with_suffix(".npy"), mmap_mode="r")
    assert store.shape == (len(table), size_px, size_px, 3)
    # ST-Net's background rule marks glass: kept tiles are the ones at most half background
    keep = table["keep"].to_numpy(bool)
    assert 0 < keep.sum() < len(table)
    assert (table.loc[keep, "background_frac"] <= 0.5).all()
    assert (table.loc[~keep, "background_frac"] > 0.5).all()
    # the tiles' centres are full-resolution px of the slide
    np.testing.assert_allclose(table["x"].iloc[0], side / 2)


def test_a_pool_slide_coarser_than_the_experiments_patches_is_refused(tmp_path):
    from stpredict.errors import GeometryError

    write_pyramid(tmp_path / "s.tif", tissue_image(256, 256), mpp=4.0, n_levels=1)
    stores = _stores(tmp_path, 32.0, 16)  # 2 µm per stored px: finer than the slide
    with pytest.raises(GeometryError, match="coarser than the 2 µm/px"):
        tile_pool_slide(tmp_path / "s.tif", None, "S", stores, tmp_path / "t", 220, 0.5, 0.1)


def test_stores_of_different_geometry_are_refused(tmp_path):
    stores = {**_stores(tmp_path, 32.0, 16, "A"), **_stores(tmp_path, 48.0, 16, "B")}
    with pytest.raises(InputError, match="different geometries"):
        pool_spec(stores)
