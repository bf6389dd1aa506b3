"""Tests of stpredict.patches.store: crop geometry, padding, order, resizing, whiteness, atomicity."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from stpredict.errors import ConfigError, GeometryError
from stpredict.ingest.images import SlideImage
from stpredict.patches import store
from stpredict.patches.geometry import DEEPSPACE, STNET, PatchSpec, deepspace_crop_px, resize_batch
from stpredict.patches.store import (
    PATCH_COLUMNS,
    extract_patches,
    load_patches,
    patches_for_spots,
    whiteness,
)

H, W = 300, 400


@pytest.fixture()
def opened():
    """Open images and close their TIFF stores afterwards."""
    images = []

    def _open(path, sample=None):
        im = SlideImage(path, sample=sample)
        images.append(im)
        return im

    yield _open
    for im in images:
        im.close()


def _coded_image() -> np.ndarray:
    """Every pixel encodes its own (x, y), so a crop can be checked exactly."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx % 256, yy % 256, (xx // 256) * 16 + (yy // 256) + 1], axis=-1)
    return img.astype(np.uint8)


@pytest.fixture()
def coded(tmp_path):
    img = _coded_image()
    png = tmp_path / "img.png"
    Image.fromarray(img).save(png)
    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, img, tile=(64, 64), photometric="rgb")
    return img, png, tif


def _naive_crop(img, x, y, c, fill=255):
    xi, yi = math.floor(x + 0.5), math.floor(y + 0.5)
    r = c // 2
    out = np.full((c, c, 3), fill, np.uint8)
    for j in range(c):
        for i in range(c):
            yy, xx = yi - r + j, xi - r + i
            if 0 <= yy < img.shape[0] and 0 <= xx < img.shape[1]:
                out[j, i] = img[yy, xx]
    return out


def _run(tmp_path, image, xy, spec, mpp=None, **kw):
    npy, tsv, js = tmp_path / "p.npy", tmp_path / "p.tsv", tmp_path / "p.json"
    table = extract_patches(image, xy, spec, mpp, npy, tsv, js, progress=False, **kw)
    return table, npy, tsv, js


def test_deepspace_rule_and_spec():
    assert deepspace_crop_px(0.5) == 2 * 138  # 27.5/0.5*2.5 = 137.5 -> ceil 138
    assert deepspace_crop_px(0.65) == 212  # 42.31*2.5 = 105.77 -> 106
    assert STNET.crop_px(0.3) == 224 and STNET.crop_px(None) == 224
    assert DEEPSPACE.crop_px(0.5) == 275  # 137.5 / 0.5
    assert PatchSpec.deepspace_paper(0.5).fov_px == 276
    with pytest.raises(ConfigError, match="exactly one"):
        PatchSpec(fov_um=100.0, fov_px=100)
    with pytest.raises(ConfigError, match="exactly one"):
        PatchSpec()
    with pytest.raises(ConfigError, match="pixel size"):
        DEEPSPACE.crop_px(None)


@pytest.mark.parametrize("which", ["png", "tif"])
def test_crops_exact_order_and_padding(tmp_path, coded, which, opened):
    img, png, tif = coded
    image = opened(png if which == "png" else tif, sample="S1")
    rng = np.random.default_rng(0)
    # interior, rounding (x.5 rounds up), corners/edges (padding), fully outside, odd crop
    xy = np.array(
        [
            [200, 150],
            [10.5, 20.49],
            [0, 0],
            [W - 1, H - 1],
            [W + 100, 10],
            [123.2, 299.7],
            *rng.uniform(0, [W, H], size=(40, 2)),
        ]
    )
    perm = rng.permutation(len(xy))
    xy = xy[perm]
    for c in (32, 33):
        spec = PatchSpec(fov_px=c, size_px=c, pad_value=255)
        table, npy, tsv, js = _run(
            tmp_path, image, xy, spec, batch=7, band_px=50, ids=[f"s{i}" for i in range(len(xy))]
        )
        store = load_patches(npy)
        assert isinstance(store, np.memmap) and store.shape == (len(xy), c, c, 3)
        assert store.flags["C_CONTIGUOUS"] and store.dtype == np.uint8
        for i, (x, y) in enumerate(xy):
            np.testing.assert_array_equal(store[i], _naive_crop(img, x, y, c), err_msg=f"row {i}")
        back = pd.read_csv(tsv, sep="\t")
        assert list(back.columns) == PATCH_COLUMNS
        assert list(back["id"]) == [f"s{i}" for i in range(len(xy))]
        np.testing.assert_allclose(back[["x", "y"]].to_numpy(), xy)
        # pad_frac: independent count of out-of-image pixels
        for i, (x, y) in enumerate(xy):
            xi, yi, r = math.floor(x + 0.5), math.floor(y + 0.5), c // 2
            cols = np.arange(xi - r, xi - r + c)
            rows = np.arange(yi - r, yi - r + c)
            inside = ((cols >= 0) & (cols < W)).sum() * ((rows >= 0) & (rows < H)).sum()
            assert back["pad_frac"][i] == pytest.approx(1 - inside / c**2)
        np.testing.assert_allclose(
            back[["mean_r", "mean_g", "mean_b"]].to_numpy(),
            store.reshape(len(xy), -1, 3).mean(axis=1),
        )


def test_tiff_is_read_by_region_not_whole(tmp_path, coded, monkeypatch, opened):
    img, png, tif = coded
    image = opened(tif)

    def boom(self):
        raise AssertionError("whole image decoded")

    monkeypatch.setattr(SlideImage, "to_array", boom)
    xy = np.array([[50, 50], [350, 250]])
    _, npy, _, _ = _run(tmp_path, image, xy, PatchSpec(fov_px=20, size_px=20))
    np.testing.assert_array_equal(load_patches(npy)[1], img[240:260, 340:360])


def test_resize_is_antialiased_bilinear(tmp_path):
    # smooth image so that halving ~ 2x2 box average
    yy, xx = np.mgrid[0:256, 0:256]
    img = np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.uint8)
    src = tmp_path / "g.png"
    Image.fromarray(img).save(src)
    spec = PatchSpec(fov_um=64.0, size_px=32)  # 128 px crop at 0.5 mpp -> 32 px
    table, npy, _, js = _run(tmp_path, SlideImage(src), np.array([[128, 128]]), spec, mpp=0.5)
    out = load_patches(npy)[0].astype(float)
    crop = img[64:192, 64:192].astype(float)
    box = crop.reshape(32, 4, 32, 4, 3).mean(axis=(1, 3))
    assert np.abs(out - box).max() <= 1.0
    meta = json.loads(js.read_text())
    assert meta["fov_px"] == 128 and meta["size_px"] == 32 and meta["mpp"] == 0.5
    assert meta["n"] == 1 and meta["fov_um"] == 64.0


def _naive_whiteness(crops, pct, frac):
    """DeepSpaCE's CropImage.py, literally: one scalar threshold from the mean RGB of each crop."""
    means = np.array([c.astype(float).mean() for c in crops])
    white_th = np.percentile(means, pct)
    wf = []
    for c in crops:
        n_white = 0
        for px in c.reshape(-1, 3):
            n_white += all(int(px[ch]) > white_th for ch in range(3))
        wf.append(n_white / (c.shape[0] * c.shape[1]))
    wf = np.array(wf)
    return wf, wf > frac, white_th


def test_whiteness_matches_deepspace_rule():
    rng = np.random.default_rng(1)
    crops = rng.integers(120, 256, size=(23, 8, 8, 3), dtype=np.uint8)
    crops[:5] = 250  # white crops
    crops[5:8, :6] = 252  # mostly white
    crops[8, :, :, 0] = 255  # red channel saturated only: a scalar threshold, not per channel
    for pct, frac in [(80, 0.5), (50, 0.3), (100, 0.5)]:
        wf, flag, thr = whiteness(crops, pct, frac, chunk=4)
        wf0, flag0, thr0 = _naive_whiteness(crops, pct, frac)
        assert thr == pytest.approx(thr0)
        np.testing.assert_allclose(wf, wf0)
        np.testing.assert_array_equal(flag, flag0)
    wf, flag, thr = whiteness(crops, 80, 0.5)
    assert flag[:5].all() and flag.sum() >= 5


def test_whiteness_uses_full_resolution_crops_not_resized_patches(tmp_path):
    """A crop whose white pixels are fine-grained: resizing blurs them below the threshold."""
    img = np.full((64, 640, 3), 200, np.uint8)
    img[:, ::2] = 255  # every other column glass, the rest grey: half the pixels white
    img[:, 1::4] = 120  # ... but mean colour of the whole crop stays moderate
    img[:, 320:] = (150, 80, 160)
    src = tmp_path / "t.png"
    Image.fromarray(img).save(src)
    xy = np.array([[32 + 64 * i, 32] for i in range(10)])
    table, npy, _, js = _run(tmp_path, SlideImage(src), xy, PatchSpec(fov_px=64, size_px=8))
    full = np.stack([img[0:64, 64 * i : 64 * i + 64] for i in range(10)])
    wf0, flag0, thr0 = _naive_whiteness(full, 80, 0.5)
    np.testing.assert_allclose(table["white_frac"], wf0)
    assert table["white"].tolist() == flag0.tolist()
    assert json.loads(js.read_text())["whiteness"]["threshold"] == pytest.approx(thr0)
    np.testing.assert_allclose(table["mean_rgb"], [c.astype(float).mean() for c in full])


def test_whiteness_written_and_flags_background(tmp_path):
    img = np.full((200, 400, 3), 240, np.uint8)
    img[:, :200] = (150, 80, 160)  # tissue on the left, white glass on the right
    src = tmp_path / "t.png"
    Image.fromarray(img).save(src)
    # 2 of 10 crops on glass: the 80th percentile of the means lies between tissue and glass
    xy = np.array(
        [
            [50, 100],
            [100, 100],
            [150, 60],
            [250, 100],
            [350, 100],
            [60, 50],
            [60, 150],
            [120, 40],
            [80, 80],
            [140, 140],
        ]
    )
    table, _, tsv, js = _run(tmp_path, SlideImage(src), xy, PatchSpec(fov_px=40, size_px=40))
    assert table["white"].tolist() == [False, False, False, True, True] + [False] * 5
    assert table["white_frac"].tolist() == [0.0] * 3 + [1.0, 1.0] + [0.0] * 5
    meta = json.loads(js.read_text())
    assert meta["whiteness"]["percentile"] == 80.0
    assert meta["whiteness"]["threshold"] == pytest.approx(np.percentile(table["mean_rgb"], 80))


def test_failure_leaves_no_output(tmp_path, coded, monkeypatch):
    img, png, tif = coded

    def broken(crops, size, backend="torch"):
        raise RuntimeError("boom")

    monkeypatch.setattr(store, "resize_batch", broken)
    with pytest.raises(RuntimeError):
        _run(tmp_path, SlideImage(png), np.array([[10, 10]]), PatchSpec(fov_px=8, size_px=8))
    assert list(tmp_path.glob("p*")) == [] and list(tmp_path.glob(".p*")) == []


def test_no_centres_gives_empty_store(tmp_path, coded):
    img, png, tif = coded
    table, npy, tsv, js = _run(tmp_path, SlideImage(png), np.zeros((0, 2)), STNET)
    assert len(table) == 0 and load_patches(npy).shape == (0, 224, 224, 3)
    assert json.loads(js.read_text())["whiteness"]["threshold"] is None


@pytest.mark.parametrize("crop,size", [(44, 32), (300, 224), (137, 224)])
def test_pil_and_torch_resizing_agree(crop, size):
    crops = np.random.default_rng(crop).integers(0, 256, (6, crop, crop, 3), dtype=np.uint8)
    a = resize_batch(crops, size, "torch").astype(int)
    b = resize_batch(crops, size, "pil").astype(int)
    assert a.shape == b.shape == (6, size, size, 3)
    assert np.abs(a - b).max() <= 1


def test_patches_for_spots_follow_the_requested_order(tmp_path, coded):
    img, png, tif = coded
    xy = np.array([[10, 10], [20, 12], [30, 14]])
    table, npy, _, _ = _run(tmp_path, SlideImage(png), xy, PatchSpec(fov_px=8, size_px=8))
    store = load_patches(npy)
    ids = list(table["id"])
    got = patches_for_spots(npy, [ids[2], ids[0]])
    np.testing.assert_array_equal(got, store[[2, 0]])
    with pytest.raises(GeometryError, match="not in the patch store"):
        patches_for_spots(npy, ["nope"])


def test_a_fixed_whiteness_threshold_and_extra_columns(tmp_path, opened):
    """Grid centres reuse the section's spot threshold instead of their own percentile."""
    img = np.full((100, 200, 3), 100, np.uint8)
    img[:, 100:] = 240  # pale right half
    png = tmp_path / "halves.png"
    Image.fromarray(img).save(png)
    xy = np.array([[20 + 20 * i, 50] for i in range(4)] + [[120 + 20 * i, 50] for i in range(4)])
    spec = PatchSpec(fov_px=10, size_px=8)
    out = {k: tmp_path / f"own.{k}" for k in ("npy", "tsv", "json")}
    own = extract_patches(opened(png), xy, spec, None, *out.values(), progress=False)
    assert not own["white"].any()  # the 80th percentile of these crops is the pale value
    fixed = {k: tmp_path / f"fixed.{k}" for k in ("npy", "tsv", "json")}
    extra = pd.DataFrame({"array_row": np.arange(8) / 3, "n_spots": 3})
    table = extract_patches(
        opened(png), xy, spec, None, *fixed.values(), threshold=150.0, extra=extra, progress=False
    )
    assert list(table["white"]) == [False] * 4 + [True] * 4
    meta = json.loads(fixed["json"].read_text())
    assert meta["whiteness"]["threshold"] == 150.0
    assert meta["whiteness"]["threshold_source"].startswith("given")
    back = pd.read_csv(fixed["tsv"], sep="\t")
    assert list(back.columns) == PATCH_COLUMNS + ["array_row", "n_spots"]
    np.testing.assert_allclose(back["array_row"], np.arange(8) / 3)
