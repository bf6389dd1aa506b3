"""Tests of stpredict.ingest.geometry: neighbours, pitch, mpp reconciliation, bounds check."""

from __future__ import annotations

import numpy as np
import pytest

from stpredict.errors import GeometryError
from stpredict.ingest.geometry import (
    ORIENTATIONS,
    check_bounds,
    estimate_mpp_from_pitch,
    fit_array_to_pixel,
    hex_neighbors,
    is_staggered,
    neighbor_pairs,
    orient_xy,
    reconcile_mpp,
    spot_neighbors,
    square_neighbors,
    visium_lattice,
)
from stpredict.ingest.images import SlideImage

formats = pytest.importorskip("stpredict.demo.formats")


def visium_grid(n_rows: int = 10, n_cols: int = 20, mpp: float = 0.5, origin=(300.0, 200.0)):
    """Full hex lattice: rows r, cols of r's parity; 100 µm pitch."""
    rows, cols = visium_lattice(n_rows, n_cols)
    px = 100.0 / mpp
    x = origin[0] + cols * px / 2
    y = origin[1] + rows * px * np.sqrt(3) / 2
    return rows, cols, x, y


def test_hex_neighbors_interior_has_six():
    rows, cols, _, _ = visium_grid()
    nb = hex_neighbors(rows, cols)
    i = int(np.flatnonzero((rows == 4) & (cols == 8))[0])
    got = {(int(rows[j]), int(cols[j])) for j in nb[i]}
    assert got == {(4, 6), (4, 10), (3, 7), (3, 9), (5, 7), (5, 9)}
    corner = int(np.flatnonzero((rows == 0) & (cols == 0))[0])
    assert len(nb[corner]) == 2


def test_square_neighbors_4_and_8():
    xs, ys = np.meshgrid(np.arange(1, 6), np.arange(1, 5))
    x, y = xs.ravel(), ys.ravel()
    n4 = square_neighbors(y, x, 4)
    n8 = spot_neighbors(y, x, "st", connectivity=8)
    centre = int(np.flatnonzero((x == 3) & (y == 2))[0])
    assert len(n4[centre]) == 4 and len(n8[centre]) == 8
    corner = int(np.flatnonzero((x == 1) & (y == 1))[0])
    assert len(n4[corner]) == 2 and len(n8[corner]) == 3
    pairs = neighbor_pairs(n4)
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert len(pairs) == 4 * 4 + 5 * 3  # horizontal + vertical edges


def test_neighbors_reject_duplicates():
    with pytest.raises(ValueError, match="same array position"):
        hex_neighbors([0, 0], [0, 0])


@pytest.mark.parametrize("mpp", [0.25, 0.5, 1.1])
def test_visium_pitch(mpp):
    rows, cols, x, y = visium_grid(mpp=mpp)
    assert estimate_mpp_from_pitch(rows, cols, x, y, "visium") == pytest.approx(mpp, rel=1e-6)


def test_st_pitch_affine_rotated_with_outlier_and_float_coords():
    rng = np.random.default_rng(0)
    xs, ys = np.meshgrid(np.arange(1, 31), np.arange(1, 33))
    ax = xs.ravel() + rng.normal(0, 0.02, xs.size)
    ay = ys.ravel() + rng.normal(0, 0.02, xs.size)
    mpp, theta = 0.7, np.deg2rad(3)
    px = 200 / mpp
    x = 100 + px * (np.cos(theta) * ax - np.sin(theta) * ay)
    y = 150 + px * (np.sin(theta) * ax + np.cos(theta) * ay)
    x[5] += 900  # one mis-registered spot
    assert estimate_mpp_from_pitch(ay, ax, x, y, "st") == pytest.approx(mpp, rel=0.01)
    _, inliers = fit_array_to_pixel(ax, ay, x, y)
    assert not inliers[5]


def test_st_staggered_array_is_100um_per_unit():
    x, y = np.meshgrid(np.arange(1, 21), np.arange(1, 21))
    keep = (x + y) % 2 == 0
    x, y = x[keep], y[keep]
    assert is_staggered(x, y)
    px_x, px_y = 50 + 25 * x, 60 + 25 * y  # 25 px per 100 µm unit -> 4 µm/px
    assert estimate_mpp_from_pitch(y, x, px_x, px_y, "st") == pytest.approx(4.0)


def test_reconcile_prefers_and_refuses():
    # most reliable first: sheet, pitch, microns_per_pixel, spot_diameter_fullres, image tags
    mpp, src = reconcile_mpp({"pitch": 0.51, "image_tags": 0.5, "sheet": None}, 0.1, "S1")
    assert (mpp, src) == (0.51, "pitch")
    mpp, src = reconcile_mpp({"pitch": 0.51, "spot_diameter_fullres": 0.5}, 0.1, "S1")
    assert src == "pitch"
    mpp, src = reconcile_mpp({"image_tags": 0.5, "spot_diameter_fullres": 0.52}, 0.1, "S1")
    assert src == "spot_diameter_fullres"
    mpp, src = reconcile_mpp({"sheet": 0.5, "pitch": 0.52, "image_tags": 0.5}, 0.1, "S1")
    assert (mpp, src) == (0.5, "sheet")
    with pytest.raises(GeometryError) as ei:
        reconcile_mpp({"sheet": 0.25, "pitch": 0.5}, 0.1, "S1", file="img.tif")
    msg = str(ei.value)
    assert "S1" in msg and "sheet=0.25" in msg and "pitch=0.5" in msg and "Fix:" in msg
    with pytest.raises(GeometryError, match="no pixel size"):
        reconcile_mpp({"sheet": None}, 0.1, "S1")


def test_reconcile_tag_outlier_is_named_and_sheet_settles_it(caplog):
    """A stale tag (image resized after scanning) must never win; the fix sets the sheet's mpp."""
    with pytest.raises(GeometryError) as ei:
        reconcile_mpp({"pitch": 0.5, "image_tags": 0.25}, 0.1, "S1", file="img.tif")
    msg = str(ei.value)
    assert "the outlier is image_tags" in msg
    assert "set the sample sheet's mpp to 0.5" in msg
    assert "mpp_tolerance" not in msg  # never suggest accepting the wrong estimate
    # following the fix: the sheet agrees with the pitch, the tag is ignored with a warning
    with caplog.at_level("WARNING"):
        mpp, src = reconcile_mpp({"sheet": 0.5, "pitch": 0.5, "image_tags": 0.25}, 0.1, "S1")
    assert (mpp, src) == (0.5, "sheet")
    assert "ignored image_tags=0.25" in caplog.text


def test_reconcile_sheet_outlier_and_stale_tags_agreeing_with_it():
    with pytest.raises(GeometryError) as ei:
        reconcile_mpp({"sheet": 1.0, "pitch": 2.0, "spot_diameter_fullres": 2.02}, 0.1, "S1")
    msg = str(ei.value)
    assert "the outlier is sheet" in msg and "set the sample sheet's mpp to 2" in msg
    assert "mpp_tolerance" not in msg
    # sheet copied from the scanner and the tags agree, but the image was downscaled: the pitch
    # measures the pixels the coordinates index, so sheet and tags are the outliers
    with pytest.raises(GeometryError) as ei:
        reconcile_mpp({"sheet": 1.0, "pitch": 2.0, "image_tags": 1.0}, 0.1, "S1")
    msg = str(ei.value)
    assert "the outlier is sheet, image_tags" in msg and "mpp to 2" in msg
    assert "give the image the coordinates were aligned to" in msg
    # a scalefactors file of another run: spot_diameter_fullres is the outlier
    with pytest.raises(GeometryError) as ei:
        reconcile_mpp({"pitch": 0.5, "spot_diameter_fullres": 0.7}, 0.1, "S1")
    assert "the outlier is spot_diameter_fullres" in str(ei.value)
    assert "another section" in str(ei.value)


def rendered(tmp_path, w=600, h=400, disc=((300, 200), 120)):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 245, np.uint8)
    (cx, cy), r = disc
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = (170, 90, 160)
    path = tmp_path / "he.png"
    formats.write_png(path, img)
    return SlideImage(path, sample="S1")


def spots_on_grid(step=20.0, w=600, h=400, disc=((300, 200), 120)):
    xs, ys = np.meshgrid(np.arange(step, w - step / 2, step), np.arange(step, h - step / 2, step))
    xy = np.column_stack([xs.ravel(), ys.ravel()])
    (cx, cy), r = disc
    inside = np.hypot(xy[:, 0] - cx, xy[:, 1] - cy) < r - 5
    return xy[inside], xy[~inside]


def test_bounds_pass_with_and_without_off_tissue(tmp_path):
    im = rendered(tmp_path)
    xy_in, xy_off = spots_on_grid()
    st = check_bounds(im, xy_in, xy_off, 5, "S1", "pos.csv", pitch_px=20)
    assert st["contrast"] > 0.2 and st["tissue_share_in"] > 0.95
    st = check_bounds(im, xy_in, None, 5, "S1", "pos.csv", pitch_px=20)
    assert st["tissue_share_off"] < 0.05


def test_bounds_outside_image(tmp_path):
    im = rendered(tmp_path)
    xy_in, xy_off = spots_on_grid()
    with pytest.raises(GeometryError) as ei:
        check_bounds(im, xy_in * 4, None, 5, "S1", "pos.csv")
    msg = str(ei.value)
    assert "in-tissue spots lie outside the 600x400 image" in msg
    assert "S1" in msg and "pos.csv" in msg and "hires" in msg


def test_bounds_transposed_detected(tmp_path):
    # off-centre tissue disc so that swapping x and y moves spots onto glass
    disc = ((150, 400), 100)
    im = rendered(tmp_path, w=600, h=600, disc=disc)
    xy_in, xy_off = spots_on_grid(w=600, h=600, disc=disc)
    check_bounds(im, xy_in, xy_off, 5, "S1", "pos.csv", pitch_px=20)
    with pytest.raises(GeometryError, match="transposed"):
        check_bounds(im, xy_in[:, ::-1], xy_off[:, ::-1], 5, "S1", "pos.csv", pitch_px=20)
    # a non-square image where the swapped set falls outside: outside message names transposition
    im2 = rendered(tmp_path, w=600, h=300, disc=((300, 150), 100))
    xy_in2, _ = spots_on_grid(w=600, h=300, disc=((300, 150), 100))
    xy_in2 = xy_in2[xy_in2[:, 0] < 300]
    with pytest.raises(GeometryError, match="transposed"):
        check_bounds(im2, xy_in2[:, ::-1] + [0, 150], None, 5, "S1", "pos.csv")


def test_bounds_spots_on_glass_fail(tmp_path):
    im = rendered(tmp_path)
    xy_in, xy_off = spots_on_grid()
    with pytest.raises(GeometryError, match="not darker"):
        check_bounds(im, xy_off, xy_in, 5, "S1", "pos.csv", pitch_px=20)


# ---------------------------------------------------------------------------- orientation
def asymmetric_tissue(w=480, h=480, reach=400):
    """An L-shaped tissue off the image centre: every dihedral copy of it differs."""
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = ((xx > 60) & (xx < 200) & (yy > 50) & (yy < 420)) | (
        (xx > 60) & (xx < reach) & (yy > 320) & (yy < 420)
    )
    img = np.full((h, w, 3), 243, np.uint8)
    img[tissue] = (176, 98, 168)
    return img, tissue


def grid_on(tissue, step=16.0):
    h, w = tissue.shape
    xs, ys = np.meshgrid(np.arange(step / 2, w, step), np.arange(step / 2, h, step))
    xy = np.column_stack([xs.ravel(), ys.ravel()])
    on = tissue[xy[:, 1].astype(int), xy[:, 0].astype(int)]
    return xy[on], xy[~on]


# the image transformations check_bounds must recognise ...
IMAGE_OPS = {
    "flip_lr": lambda a: a[:, ::-1],
    "flip_ud": lambda a: a[::-1],
    "rot180": lambda a: a[::-1, ::-1],
    "transpose": lambda a: a.transpose(1, 0, 2),
    "rot90_cw": lambda a: np.rot90(a, -1),
    "rot90_ccw": lambda a: np.rot90(a, 1),
    "anti_transpose": lambda a: np.rot90(a, 2).transpose(1, 0, 2),
}
# ... and what the fixes they name do to the image
FIX_OPS = {
    "flip the image horizontally": lambda a: a[:, ::-1],
    "flip the image vertically": lambda a: a[::-1],
    "rotate the image by 180°": lambda a: a[::-1, ::-1],
    "transpose the image": lambda a: a.transpose(1, 0, 2),
    "rotate the image 90° counter-clockwise": lambda a: np.rot90(a, 1),
    "rotate the image 90° clockwise, then flip it vertically": lambda a: np.rot90(a, -1)[::-1],
    "rotate the image 90° clockwise (": lambda a: np.rot90(a, -1),
}


def _apply_named_fix(msg, arr):
    fix = msg.split("Fix:")[1]
    hits = [k for k in FIX_OPS if k in fix]
    assert len(hits) == 1, fix
    return FIX_OPS[hits[0]](arr)


@pytest.mark.parametrize("with_off", [True, False], ids=["visium-like", "st-like"])
@pytest.mark.parametrize("op", list(IMAGE_OPS))
def test_bounds_names_the_orientation_and_its_fix_undoes_it(tmp_path, op, with_off):
    img, tissue = asymmetric_tissue()
    xy_in, xy_off = grid_on(tissue)
    path = tmp_path / "he.png"
    formats.write_png(path, img)
    st = check_bounds(
        SlideImage(path), xy_in, xy_off if with_off else None, 4, "S1", "pos.csv", pitch_px=16
    )
    assert st["separation"] > max(st[f"separation_{o}"] for o in IMAGE_OPS) + 0.1
    bad = np.ascontiguousarray(IMAGE_OPS[op](img))
    formats.write_png(path, bad)
    with pytest.raises(GeometryError) as ei:
        check_bounds(
            SlideImage(path, sample="S1"),
            xy_in,
            xy_off if with_off else None,
            4,
            "S1",
            "pos.csv",
            pitch_px=16,
        )
    msg = str(ei.value)
    assert ORIENTATIONS[op][1] in msg and "sample 'S1'" in msg and "pos.csv" in msg
    assert "\n" not in msg
    np.testing.assert_array_equal(_apply_named_fix(msg, bad), img)


def test_bounds_rotated_nonsquare_image_names_rotation_when_spots_fall_outside(tmp_path):
    img, tissue = asymmetric_tissue(w=480, h=440, reach=470)
    xy_in, xy_off = grid_on(tissue)
    path = tmp_path / "he.png"
    bad = np.ascontiguousarray(np.rot90(img, 1))  # 440 wide, 480 high: spots reach x > 440
    formats.write_png(path, bad)
    with pytest.raises(GeometryError) as ei:
        check_bounds(SlideImage(path), xy_in, xy_off, 4, "S1", "pos.csv", pitch_px=16)
    msg = str(ei.value)
    assert "lie outside the 440x480 image" in msg
    assert ORIENTATIONS["rot90_ccw"][1] in msg
    np.testing.assert_array_equal(_apply_named_fix(msg, bad), img)


def test_orient_xy_matches_numpy_image_ops():
    """orient_xy(name) maps a pixel of the original to where IMAGE_OPS[name] puts it."""
    h, w = 5, 7
    img = np.arange(h * w).reshape(h, w)[..., None]
    for name, f in IMAGE_OPS.items():
        out = f(img)
        for x, y in [(0, 0), (6, 1), (3, 4)]:
            nx, ny = orient_xy(np.array([[x, y]], float), name, out.shape[1], out.shape[0])[0]
            assert out[int(ny), int(nx), 0] == img[y, x, 0], name


def test_bounds_symmetric_tissue_mirrored_is_not_refused(tmp_path):
    """A centred disc looks the same mirrored: no orientation wins, the check passes."""
    im = rendered(tmp_path)
    xy_in, xy_off = spots_on_grid()
    st = check_bounds(im, xy_in, xy_off, 5, "S1", "pos.csv", pitch_px=20)
    assert abs(st["separation"] - st["separation_flip_lr"]) < 0.05


def test_bounds_tissue_larger_than_the_capture_area_passes(tmp_path):
    """Spots cover only the middle of the tissue: the glass lies beyond the band around them."""
    yy, xx = np.mgrid[0:600, 0:600]
    img = np.full((600, 600, 3), 244, np.uint8)
    img[(xx > 140) & (xx < 460) & (yy > 140) & (yy < 460)] = (172, 96, 160)
    path = tmp_path / "he.png"
    formats.write_png(path, img)
    xs, ys = np.meshgrid(np.arange(200, 401, 20.0), np.arange(200, 401, 20.0))
    xy_in = np.column_stack([xs.ravel(), ys.ravel()])
    st = check_bounds(SlideImage(path), xy_in, None, 5, "S1", "spots.txt", pitch_px=20)
    assert st["contrast"] < 0.02 < st["contrast_wide"]  # the band is tissue, the rest glass
