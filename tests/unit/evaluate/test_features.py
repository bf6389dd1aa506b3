from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import stats
from skimage.measure import label, regionprops_table

from stpredict.evaluate.features import (
    _delaunay_distances,
    _moments,
    _region_stats,
    feature_names,
    nuclear_features,
    patch_features,
    segment_nuclei,
)
from stpredict.ingest.images import open_image

PINK = (235, 170, 215)
NUCLEUS = (70, 40, 140)


def draw_disc(img: np.ndarray, cy: float, cx: float, r: float) -> None:
    yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = NUCLEUS


def test_region_stats_match_regionprops():
    rng = np.random.default_rng(0)
    lab = label(rng.random((60, 60)) > 0.7)
    rgb = rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)
    mine = _region_stats(lab, rgb)
    ref = regionprops_table(
        lab,
        intensity_image=rgb,
        properties=("area", "centroid", "axis_major_length", "axis_minor_length", "intensity_mean"),
    )
    np.testing.assert_allclose(mine["area"], ref["area"])
    np.testing.assert_allclose(mine["row"], ref["centroid-0"])
    np.testing.assert_allclose(mine["major"], ref["axis_major_length"], atol=1e-6)
    np.testing.assert_allclose(mine["minor"], ref["axis_minor_length"], atol=1e-6)
    np.testing.assert_allclose(mine["mean_b"], ref["intensity_mean-2"])


def test_moments_match_scipy():
    v = np.random.default_rng(1).gamma(2.0, size=50)
    mean, sd, skew, kurt = _moments(v)
    assert mean == pytest.approx(v.mean())
    assert sd == pytest.approx(v.std(ddof=1))
    assert skew == pytest.approx(stats.skew(v))
    assert kurt == pytest.approx(stats.kurtosis(v))
    assert _moments(np.array([3.0])) == (3.0, 0.0, 0.0, 0.0)
    assert _moments(np.full(6, 2.0))[2:] == (0.0, 0.0)


def test_delaunay_distances_of_a_square_with_centre():
    pts = np.array([[0, 0], [0, 2], [2, 0], [2, 2], [1, 1]], float)
    d = _delaunay_distances(pts)
    # the centre is joined to the four corners at sqrt(2)
    np.testing.assert_allclose(d[4], [np.sqrt(2)] * 3)
    # a corner: its two sides (2) and the centre (sqrt 2); a diagonal is never an edge here
    assert d[0, 0] == pytest.approx(2.0) and d[0, 2] == pytest.approx(np.sqrt(2))
    assert np.isnan(
        _delaunay_distances(np.array([[0, 0], [1, 1], [2, 2]], float))
    ).all()  # collinear
    assert _delaunay_distances(np.array([[0, 0], [3, 4]], float))[0, 1] == pytest.approx(5.0)


def test_segmentation_counts_and_sizes_discs():
    mpp = 0.5
    img = np.empty((200, 200, 3), np.uint8)
    img[:] = PINK
    centres = [(30, 30), (30, 120), (100, 60), (150, 150), (170, 40)]
    for cy, cx in centres:
        draw_disc(img, cy, cx, 8)
    from stpredict.evaluate.features import hematoxylin_threshold, nucleus_table

    thr = hematoxylin_threshold([img], mpp)
    lab = segment_nuclei(img, thr, mpp)
    assert lab.max() == len(centres)
    nuc = nucleus_table(img, lab, mpp)
    area = np.pi * (8 * mpp) ** 2
    np.testing.assert_allclose(nuc["area_um2"], area, rtol=0.25)
    np.testing.assert_allclose(nuc["axis_ratio"], 1.0, atol=0.2)
    feats = patch_features(nuc)
    assert feats.shape == (len(feature_names()),) == (141,)
    assert feats[0] == len(centres)
    # histogram shares sum to 1 for every feature
    names = feature_names()
    hist = [i for i, n in enumerate(names) if n.startswith("area_um2_hist")]
    assert feats[hist].sum() == pytest.approx(1.0)
    empty = patch_features(nuc.iloc[:0])
    assert empty[0] == 0 and np.isfinite(empty).all()


def test_nuclear_features_per_spot_from_a_tiff(tmp_path):
    mpp = 1.0
    img = np.empty((300, 400, 3), np.uint8)
    img[:] = PINK
    spots = np.array([[100.0, 100.0], [300.0, 100.0], [200.0, 220.0]])  # x, y
    n_per_spot = [0, 3, 6]
    rng = np.random.default_rng(3)
    for (x, y), k in zip(spots, n_per_spot, strict=True):
        placed = []
        while len(placed) < k:
            cy, cx = y + rng.uniform(-30, 30), x + rng.uniform(-30, 30)
            if all(np.hypot(cy - a, cx - b) > 14 for a, b in placed):
                placed.append((cy, cx))
                draw_disc(img, cy, cx, 4)
    path = tmp_path / "he.tif"
    tifffile.imwrite(path, img, tile=(128, 128))
    with open_image(path, sample="S1") as im:
        table = nuclear_features(
            im, spots, crop_px=80, mpp=mpp, ids=["a", "b", "c"], progress=False
        )
    assert list(table.index) == ["a", "b", "c"]
    assert list(table.columns) == feature_names()
    assert table["n_nuclei"].tolist() == n_per_spot
    assert table.loc["c", "area_um2_mean"] == pytest.approx(np.pi * 16, rel=0.3)
    assert table.attrs["fov_um"] == 80.0
    assert isinstance(table, pd.DataFrame) and np.isfinite(table.to_numpy()).all()
