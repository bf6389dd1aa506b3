"""Super-resolution centres from array coordinates: Visium triangles, ST 2 x 2 blocks, stride grids."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from stpredict.errors import ConfigError, GeometryError
from stpredict.ingest.geometry import visium_lattice
from stpredict.patches.centres import (
    CENTRE_COLUMNS,
    grid_name,
    parse_grid_name,
    resolve_grid,
    section_centres,
    square_centres,
    stride_centres,
    triangle_centres,
)

MPP = 0.8  # µm per px


def visium_pixels(rows, cols, deg=0.7, mpp=MPP):
    """Pixel positions of a Visium array at 100 µm pitch, slightly rotated (as scanned)."""
    u, v = cols * 50.0, rows * 50.0 * math.sqrt(3)
    a = math.radians(deg)
    x = (math.cos(a) * u - math.sin(a) * v) / mpp + 900
    y = (math.sin(a) * u + math.cos(a) * v) / mpp + 700
    return x, y


def nearest_um(table, x, y, k, mpp=MPP):
    d, _ = cKDTree(np.column_stack([x, y])).query(table[["x", "y"]].to_numpy(), k=k + 1)
    return d * mpp


def test_full_visium_array_has_9702_triangle_centroids_57_7_um_from_their_spots():
    rows, cols = visium_lattice(78, 128)
    assert len(rows) == 4992
    x, y = visium_pixels(rows, cols)
    t = triangle_centres(rows, cols, x, y)
    assert list(t.columns) == CENTRE_COLUMNS
    assert len(t) == 9702 and t["id"].is_unique
    assert len(np.unique(np.round(t[["x", "y"]].to_numpy(), 6), axis=0)) == 9702
    d = nearest_um(t, x, y, 3)
    assert np.allclose(d[:, :3], 100 / math.sqrt(3), atol=1e-6)  # 57.735 µm to its three spots
    assert (d[:, 3] > 100).all()  # and no fourth spot as close
    assert (t["n_spots"] == 3).all()
    # about two per spot; both orientations; array centroids at thirds of a row
    assert (t["id"].str.endswith("_d").sum(), t["id"].str.endswith("_u").sum()) == (4851, 4851)
    frac = np.round((t["array_row"] % 1) * 3).astype(int)
    assert set(frac) == {1, 2}


def test_filtered_shuffled_positions_give_the_same_centres_as_unshuffled():
    rows, cols = visium_lattice(78, 128)
    x, y = visium_pixels(rows, cols)
    full = triangle_centres(rows, cols, x, y).set_index("id")
    # in tissue: an ellipse of spots, minus a few scattered spots (filtered positions)
    rng = np.random.default_rng(4)
    inside = ((rows - 40) / 30.0) ** 2 + ((cols - 60) / 45.0) ** 2 < 1
    inside &= rng.uniform(size=len(rows)) > 0.05
    keep = np.flatnonzero(inside)
    sub = triangle_centres(rows[keep], cols[keep], x[keep], y[keep])
    shuffled = rng.permutation(keep)
    shuf = triangle_centres(rows[shuffled], cols[shuffled], x[shuffled], y[shuffled])
    pd.testing.assert_frame_equal(sub, shuf)  # the same centres, in the same order
    # exactly the full array's triangles whose three spots all survive
    present = set(zip(rows[keep], cols[keep], strict=True))

    def vertices(tid):
        _, r, c, kind = tid.split("_")
        r, c = int(r), int(c)
        if kind == "d":
            return [(r, c), (r, c + 2), (r + 1, c + 1)]
        return [(r, c), (r + 1, c - 1), (r + 1, c + 1)]

    expected = [t for t in full.index if all(v in present for v in vertices(t))]
    assert sorted(sub["id"]) == sorted(expected) and 0 < len(expected) < 9702
    np.testing.assert_allclose(
        sub.set_index("id").loc[expected, ["x", "y"]], full.loc[expected, ["x", "y"]]
    )
    # and the Space Ranger 1.x file order of the original code (blocks of 128) changes nothing
    sr1 = np.lexsort((cols[keep], rows[keep] // 2))
    pd.testing.assert_frame_equal(
        sub, triangle_centres(rows[keep][sr1], cols[keep][sr1], x[keep][sr1], y[keep][sr1])
    )


def test_triangles_refuse_a_square_lattice_and_repeated_spots():
    with pytest.raises(GeometryError, match="hexagonal"):
        triangle_centres([0, 0, 1], [0, 1, 0], [0, 1, 0], [0, 0, 1])
    with pytest.raises(GeometryError, match="same array position"):
        triangle_centres([0, 0, 1], [0, 0, 1], [0, 1, 0], [0, 0, 1])


def st_grid(nx=33, ny=35, mpp=2.5):
    xs, ys = np.meshgrid(np.arange(1, nx + 1), np.arange(1, ny + 1))
    ax, ay = xs.ravel(), ys.ravel()
    a = math.radians(-0.5)
    px = (math.cos(a) * ax - math.sin(a) * ay) * 200 / mpp + 300
    py = (math.sin(a) * ax + math.cos(a) * ay) * 200 / mpp + 250
    return ax, ay, px, py


def test_st_2x2_block_centres():
    ax, ay, px, py = st_grid()
    sq = square_centres(ay, ax, px, py)  # ST: array_row = y, array_col = x
    assert len(sq) == 32 * 34 and sq["id"].is_unique
    d = nearest_um(sq, px, py, 4, mpp=2.5)
    assert np.allclose(d[:, :4], 200 / math.sqrt(2), atol=1e-6)  # 141.4 µm from its four spots
    assert (sq["n_spots"] == 4).all()
    # a missing spot removes the four blocks it belongs to; shuffling changes nothing
    drop = (ax == 10) & (ay == 12)
    rng = np.random.default_rng(0)
    idx = rng.permutation(np.flatnonzero(~drop))
    sub = square_centres(ay[idx], ax[idx], px[idx], py[idx])
    assert len(sub) == len(sq) - 4
    assert not {"sq_11_9", "sq_11_10", "sq_12_9", "sq_12_10"} & set(sub["id"])


def test_staggered_st_array_centres_are_the_empty_cells():
    xs, ys = np.meshgrid(np.arange(1, 21), np.arange(1, 21))
    ok = (xs + ys) % 2 == 0  # checkerboard (2k array): one unit is 100 µm
    ax, ay = xs[ok], ys[ok]
    px, py = ax * 100 / 2.0, ay * 100 / 2.0
    sq = square_centres(ay, ax, px, py)
    assert len(sq) and ((sq["array_row"] + sq["array_col"]) % 2 == 1).all()
    d = nearest_um(sq, px, py, 4, mpp=2.0)
    assert np.allclose(d[:, :4], 100.0)


def test_stride_grid_spacing_coverage_and_order_invariance():
    rows, cols = visium_lattice(30, 40)
    x, y = visium_pixels(rows, cols, deg=0)
    g = stride_centres(x, y, MPP, 55.0, "visium")
    pts = g[["x", "y"]].to_numpy()
    step = np.diff(np.unique(np.round(pts[:, 0], 6)))
    assert np.allclose(step, 55.0 / MPP)  # 55 µm apart
    d, _ = cKDTree(np.column_stack([x, y])).query(pts)
    assert (d * MPP <= 100 / math.sqrt(3) + 1e-6).all()  # within the lattice's covering radius
    # about the lattice's area / stride²: one Visium spot tiles 100² · √3/2 µm²
    expected = len(rows) * 100**2 * math.sqrt(3) / 2 / 55.0**2
    assert 0.85 * expected < len(g) < 1.15 * expected
    perm = np.random.default_rng(1).permutation(len(x))
    pd.testing.assert_frame_equal(g, stride_centres(x[perm], y[perm], MPP, 55.0, "visium"))
    assert g["array_row"].isna().all() and (g["n_spots"] == 0).all()


def test_grid_names_and_lattice_checks():
    assert grid_name("stride", 55) == "stride55um" and grid_name("stride", 27.5) == "stride27.5um"
    assert parse_grid_name("stride27.5um") == ("stride", 27.5)
    assert parse_grid_name("triangles") == ("triangles", None)
    with pytest.raises(ConfigError):
        parse_grid_name("spots")
    assert resolve_grid("auto", "visium") == "triangles"
    assert resolve_grid("auto", "st") == "squares"
    with pytest.raises(ConfigError, match="does not fit"):
        resolve_grid("triangles", "st", sample="BC1")


def test_section_centres_use_the_section_spots():
    rows, cols = visium_lattice(6, 10)
    x, y = visium_pixels(rows, cols)
    a = ad.AnnData(np.zeros((len(rows), 1), np.float32))
    a.obs["array_row"], a.obs["array_col"] = rows, cols
    a.obsm["spatial"] = np.column_stack([x, y])
    a.uns["stpredict"] = {"sample_id": "S", "platform": "visium", "mpp": MPP}
    assert len(section_centres(a, "triangles")) == 5 * 8
    assert len(section_centres(a, "stride55um")) > len(rows)
    with pytest.raises(ConfigError, match="does not fit"):
        section_centres(a, "squares")
