"""Tests of stpredict.geometry: neighbours, pitch, mpp reconciliation, bounds check."""

from __future__ import annotations

import numpy as np
import pytest

from stpredict.errors import GeometryError
from stpredict.geometry import (
    check_bounds,
    estimate_mpp_from_pitch,
    fit_array_to_pixel,
    hex_neighbors,
    is_staggered,
    neighbor_pairs,
    reconcile_mpp,
    spot_neighbors,
    square_neighbors,
    visium_lattice,
)
from stpredict.images import SlideImage

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
    mpp, src = reconcile_mpp({"pitch": 0.51, "image_tags": 0.5, "sheet": None}, 0.1, "S1")
    assert (mpp, src) == (0.5, "image_tags")
    mpp, src = reconcile_mpp({"pitch": 0.51, "spot_diameter_fullres": 0.5}, 0.1, "S1")
    assert src == "pitch"
    with pytest.raises(GeometryError) as ei:
        reconcile_mpp({"sheet": 0.25, "pitch": 0.5}, 0.1, "S1", file="img.tif")
    msg = str(ei.value)
    assert "S1" in msg and "sheet=0.25" in msg and "pitch=0.5" in msg and "Fix:" in msg
    with pytest.raises(GeometryError, match="no pixel size"):
        reconcile_mpp({"sheet": None}, 0.1, "S1")


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
