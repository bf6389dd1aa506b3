"""Super-resolution centres: new patch centres between the measured spots (DeepSpaCE).

Every grid is computed from the spots' ARRAY coordinates (``array_row``, ``array_col``), never
from their order in a file, so it is the same for Space Ranger 1.x and >= 2.0 positions files,
for filtered spot lists and for any row order (DeepSpaCE's ``CropImage.py`` relied on the
Space Ranger 1.x row order of all 4,992 spots; see docs/PROTOCOLS.md).

Grids (:data:`GRIDS`)
---------------------
``triangles`` (Visium)
    The centroid of every triangle of three mutually adjacent spots of the hexagonal lattice
    (an equilateral triangle with 100 µm sides: the centroid is 100/√3 = 57.7 µm from each of
    its three spots). A spot ``(row, col)`` has the neighbours ``(row, col±2)`` and
    ``(row±1, col±1)`` (FORMATS.md §1); the triangles are ``{(r, c), (r, c+2), (r+1, c+1)}``
    (apex down, ``d``) and ``{(r, c), (r+1, c-1), (r+1, c+1)}`` (apex up, ``u``). A full
    78 x 128 array has 77 x 126 = 9,702 of them, about two per spot.
``squares`` (legacy ST)
    The centre of every 2 x 2 block of adjacent spots of the square grid
    ``{(r, c), (r, c+1), (r+1, c), (r+1, c+1)}`` (141 µm from each of its four spots at 200 µm
    pitch). On a staggered 2k array (:func:`stpredict.ingest.geometry.is_staggered`) the square
    cells are turned by 45°: the centre is the empty position ``(r, c)`` whose four neighbours
    ``(r, c±1)``, ``(r±1, c)`` are spots.
``stride``
    A regular grid of points ``stride_um`` apart (image axes), anchored at the top-left in-tissue
    spot, kept where a point lies within the lattice's covering radius of an in-tissue spot
    (Visium 100/√3 = 57.7 µm, ST pitch/√2): the area the spots tile, and no glass beyond it.

Which spots: a triangle (block) is used only when all its spots are among the given spots —
the section's in-tissue spots (the filtered positions the section AnnData holds). Spots that
failed QC are tissue and count; the whiteness filter of the patch store then drops centres on
glass. The pixel position of a centre is the mean of its spots' full-resolution pixel
positions (so it follows the real, slightly rotated array), never a rounded value.

Each grid is a table with ``id, x, y, array_row, array_col, n_spots`` sorted by array position
(row, then column): ids are ``tri_{r}_{c}_{d|u}``, ``sq_{r}_{c}``, ``grid_{i}_{j}``;
``array_row`` / ``array_col`` are the mean array coordinates of the centre's spots (NaN on a
stride grid).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from stpredict.errors import ConfigError, GeometryError
from stpredict.ingest.geometry import (
    ST_PITCH_UM,
    VISIUM_PITCH_UM,
    is_staggered,
    offset_neighbors,
    st_um_per_unit,
)

__all__ = [
    "GRIDS",
    "CENTRE_COLUMNS",
    "triangle_centres",
    "square_centres",
    "stride_centres",
    "section_centres",
    "grid_name",
    "parse_grid_name",
    "resolve_grid",
]

#: the grid kinds (``superres.grid`` of an experiment; ``auto`` picks by platform)
GRIDS: tuple[str, ...] = ("triangles", "squares", "stride")
#: columns of every centre table
CENTRE_COLUMNS: list[str] = ["id", "x", "y", "array_row", "array_col", "n_spots"]
#: file-name form of a grid (the ``{grid}`` wildcard of ``results/patches/{sample}/{grid}.npy``)
GRID_NAME_PATTERN = r"triangles|squares|stride[0-9]+(?:\.[0-9]+)?um"


def _arrays(
    array_rows: Any, array_cols: Any, x: Any, y: Any, sample: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer array coordinates and ``(n, 2)`` pixel ``[x, y]``, checked."""
    rows_f = np.asarray(array_rows, dtype=float)
    cols_f = np.asarray(array_cols, dtype=float)
    xy = np.column_stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
    if not (rows_f.shape == cols_f.shape == (len(xy),)):
        raise GeometryError(
            "array_row, array_col, x and y differ in length",
            sample=sample,
            fix="pass one value of each per spot",
        )
    if not (np.isfinite(rows_f).all() and np.isfinite(cols_f).all() and np.isfinite(xy).all()):
        raise GeometryError(
            "spots without finite array or pixel coordinates",
            sample=sample,
            fix="check the positions file of the section",
        )
    rows, cols = np.rint(rows_f).astype(np.int64), np.rint(cols_f).astype(np.int64)
    if len(rows) and max(np.abs(rows - rows_f).max(), np.abs(cols - cols_f).max()) > 0.25:
        raise GeometryError(
            "array coordinates are not integers",
            sample=sample,
            fix="give the spots' array_row / array_col (ST: the x, y of the spot ids)",
        )
    return rows, cols, xy


def _at(rows: np.ndarray, cols: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """Index of the spot at ``(row, col) + offset`` for every spot, -1 where there is none."""
    try:
        found = offset_neighbors(rows, cols, [offset])
    except ValueError as exc:  # two spots on one position
        raise GeometryError(str(exc), fix="give each array position once") from None
    return np.array([int(f[0]) if len(f) else -1 for f in found], dtype=np.int64)


def _table(
    ids: list[str],
    members: np.ndarray,
    xy: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    centre_rc: np.ndarray | None = None,
) -> pd.DataFrame:
    """Centre table from the member spots of every centre (``(m, k)`` spot indices)."""
    if len(ids) == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in CENTRE_COLUMNS}).astype(
            {"id": str, "n_spots": int}
        )
    cxy = xy[members].mean(axis=1)
    if centre_rc is None:
        centre_rc = np.column_stack([rows[members].mean(axis=1), cols[members].mean(axis=1)])
    out = pd.DataFrame(
        {
            "id": ids,
            "x": cxy[:, 0],
            "y": cxy[:, 1],
            "array_row": centre_rc[:, 0].astype(float),
            "array_col": centre_rc[:, 1].astype(float),
            "n_spots": members.shape[1],
        }
    )
    order = np.lexsort((out["array_col"].to_numpy(), out["array_row"].to_numpy()))
    return out.iloc[order].reset_index(drop=True)


def triangle_centres(
    array_rows: Sequence[float] | np.ndarray,
    array_cols: Sequence[float] | np.ndarray,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    sample: str | None = None,
) -> pd.DataFrame:
    """Centroids of every triangle of three mutually adjacent Visium spots.

    Parameters
    ----------
    array_rows, array_cols
        Visium array coordinates of the spots (a spot's column has the parity of its row).
    x, y
        Their full-resolution pixel positions (image column, row).
    sample
        For error messages.

    Returns
    -------
    pandas.DataFrame
        :data:`CENTRE_COLUMNS`, one row per triangle whose three spots are all given (the
        in-tissue spots of the section), sorted by array position; ids ``tri_{r}_{c}_d``
        (spots ``(r, c), (r, c+2), (r+1, c+1)``) and ``tri_{r}_{c}_u`` (spots ``(r, c),
        (r+1, c-1), (r+1, c+1)``).

    Raises
    ------
    GeometryError
        Array coordinates that are not a hexagonal Visium lattice (mixed row/column parity),
        not integers, or repeated.
    """
    rows, cols, xy = _arrays(array_rows, array_cols, x, y, sample)
    if len(rows) and len(np.unique((rows + cols) % 2)) > 1:
        raise GeometryError(
            "the array coordinates are not a Visium hexagonal lattice (a spot's array_col must "
            "have the parity of its array_row)",
            sample=sample,
            fix="use grid 'squares' or 'stride' for a square (legacy ST) array",
        )
    right, down_r, down_l = (
        _at(rows, cols, (0, 2)),
        _at(rows, cols, (1, 1)),
        _at(rows, cols, (1, -1)),
    )
    idx = np.arange(len(rows))
    d = (right >= 0) & (down_r >= 0)
    u = (down_l >= 0) & (down_r >= 0)
    members = np.concatenate(
        [
            np.column_stack([idx[d], right[d], down_r[d]]),
            np.column_stack([idx[u], down_l[u], down_r[u]]),
        ]
    ).astype(np.int64)
    ids = [f"tri_{r}_{c}_d" for r, c in zip(rows[d], cols[d], strict=True)] + [
        f"tri_{r}_{c}_u" for r, c in zip(rows[u], cols[u], strict=True)
    ]
    return _table(ids, members, xy, rows, cols)


def square_centres(
    array_rows: Sequence[float] | np.ndarray,
    array_cols: Sequence[float] | np.ndarray,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    sample: str | None = None,
) -> pd.DataFrame:
    """Centres of every 2 x 2 block of adjacent spots of a square (legacy ST) array.

    Parameters
    ----------
    array_rows, array_cols
        Array coordinates (ST: ``array_row`` = y, ``array_col`` = x of the spot id ``"{x}x{y}"``).
    x, y
        Full-resolution pixel positions.
    sample
        For error messages.

    Returns
    -------
    pandas.DataFrame
        :data:`CENTRE_COLUMNS`, one row per block whose four spots are all given, sorted by array
        position; ids ``sq_{r}_{c}`` (``(r, c)`` the block's first spot; on a staggered 2k array
        the empty centre position).
    """
    rows, cols, xy = _arrays(array_rows, array_cols, x, y, sample)
    if is_staggered(cols, rows):
        return _staggered_squares(rows, cols, xy)
    right, down, diag = _at(rows, cols, (0, 1)), _at(rows, cols, (1, 0)), _at(rows, cols, (1, 1))
    ok = (right >= 0) & (down >= 0) & (diag >= 0)
    idx = np.arange(len(rows))
    members = np.column_stack([idx[ok], right[ok], down[ok], diag[ok]]).astype(np.int64)
    ids = [f"sq_{r}_{c}" for r, c in zip(rows[ok], cols[ok], strict=True)]
    return _table(ids, members, xy, rows, cols)


def _staggered_squares(rows: np.ndarray, cols: np.ndarray, xy: np.ndarray) -> pd.DataFrame:
    """Square cells of a staggered array: empty positions with four spots around them."""
    # each cell centre (r, c + 1) is reached from its left corner (r, c): look for the others
    idx = np.arange(len(rows))
    right2, up, down = _at(rows, cols, (0, 2)), _at(rows, cols, (-1, 1)), _at(rows, cols, (1, 1))
    ok = (right2 >= 0) & (up >= 0) & (down >= 0)
    members = np.column_stack([idx[ok], right2[ok], up[ok], down[ok]]).astype(np.int64)
    centre = np.column_stack([rows[ok], cols[ok] + 1])
    ids = [f"sq_{r}_{c}" for r, c in centre]
    return _table(ids, members, xy, rows, cols, centre_rc=centre)


def _covering_radius_um(platform: str, pitch_um: float) -> float:
    """Largest distance of a point of the spot lattice's area from its nearest spot."""
    return pitch_um / math.sqrt(3.0) if platform == "visium" else pitch_um / math.sqrt(2.0)


def stride_centres(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    mpp: float,
    stride_um: float,
    platform: str,
    pitch_um: float | None = None,
    sample: str | None = None,
) -> pd.DataFrame:
    """Lay a regular grid ``stride_um`` apart over the area the in-tissue spots cover.

    Parameters
    ----------
    x, y
        Full-resolution pixel positions of the in-tissue spots.
    mpp
        µm per full-resolution pixel.
    stride_um
        Distance between neighbouring grid points (µm, along the image axes).
    platform
        ``visium`` or ``st`` (sets the covering radius).
    pitch_um
        Spot pitch (default 100 µm Visium, 200 µm ST).
    sample
        For error messages.

    Returns
    -------
    pandas.DataFrame
        :data:`CENTRE_COLUMNS` (``array_row`` / ``array_col`` NaN, ``n_spots`` 0), sorted by
        image row then column; ids ``grid_{i}_{j}`` (row ``i``, column ``j`` of the grid anchored
        at the smallest spot ``x`` and ``y``). A point is kept when an in-tissue spot lies within
        the lattice's covering radius (Visium pitch/√3, ST pitch/√2).
    """
    from scipy.spatial import cKDTree

    if not (stride_um and stride_um > 0) or not (mpp and mpp > 0):
        raise ConfigError(
            f"a stride grid needs a positive stride and pixel size (stride_um {stride_um}, "
            f"µm/px {mpp})",
            sample=sample,
            fix="set superres.stride_um above 0",
        )
    xy = np.column_stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
    xy = xy[np.isfinite(xy).all(axis=1)]
    if not len(xy):
        raise GeometryError("no spot with finite pixel coordinates", sample=sample)
    pitch = float(pitch_um or (VISIUM_PITCH_UM if platform == "visium" else ST_PITCH_UM))
    reach_px = _covering_radius_um(platform, pitch) / mpp
    step = stride_um / mpp
    x0, y0 = xy.min(axis=0)
    nx = int(np.floor((xy[:, 0].max() - x0) / step)) + 1
    ny = int(np.floor((xy[:, 1].max() - y0) / step)) + 1
    jj, ii = np.meshgrid(np.arange(nx), np.arange(ny))
    pts = np.column_stack([x0 + jj.ravel() * step, y0 + ii.ravel() * step])
    dist, _ = cKDTree(xy).query(pts)
    keep = dist <= reach_px * (1 + 1e-9)
    ii, jj, pts = ii.ravel()[keep], jj.ravel()[keep], pts[keep]
    return pd.DataFrame(
        {
            "id": [f"grid_{i}_{j}" for i, j in zip(ii, jj, strict=True)],
            "x": pts[:, 0],
            "y": pts[:, 1],
            "array_row": np.nan,
            "array_col": np.nan,
            "n_spots": 0,
        }
    )


def resolve_grid(
    grid: str, platform: str, sample: str | None = None, what: str = "superres.grid"
) -> str:
    """Return the grid kind for a section: ``auto`` = ``triangles`` on Visium, ``squares`` on ST.

    ``what`` names the setting in messages: ``superres.grid`` (any of :data:`GRIDS`) or
    ``semi_supervised.pool interspot grid`` (between spots only: no ``stride``).
    """
    if grid == "auto":
        return "triangles" if platform == "visium" else "squares"
    stride = what == "superres.grid"
    allowed = [g for g in GRIDS if stride or g != "stride"]
    if grid not in allowed:
        raise ConfigError(
            f"unknown {what} '{grid}'",
            sample=sample,
            fix=f"use one of auto, {', '.join(allowed)}",
        )
    if (grid, platform) in (("triangles", "st"), ("squares", "visium")):
        fits = "squares" if platform == "st" else "triangles"
        lattice = "2 x 2 blocks of the square ST grid" if platform == "st" else "Visium triangles"
        raise ConfigError(
            f"{what} '{grid}' does not fit the {platform} spot lattice",
            sample=sample,
            fix=f"use '{fits}' ({lattice}) or 'auto' (the platform's)"
            + (", or 'stride' with superres.stride_um (a regular grid)" if stride else ""),
        )
    return grid


def grid_name(grid: str, stride_um: float | None = None) -> str:
    """File-name form of a grid: ``triangles``, ``squares`` or ``stride{stride_um:g}um``."""
    if grid == "stride":
        return f"stride{float(stride_um):g}um"
    return grid


def parse_grid_name(name: str) -> tuple[str, float | None]:
    """Inverse of :func:`grid_name`: ``(grid, stride_um)``."""
    m = re.fullmatch(r"stride([0-9]+(?:\.[0-9]+)?)um", name)
    if m:
        return "stride", float(m.group(1))
    if name in ("triangles", "squares"):
        return name, None
    raise ConfigError(
        f"'{name}' is not a grid name", fix="use triangles, squares or stride<µm>um (stride55um)"
    )


def section_centres(adata: Any, name: str) -> pd.DataFrame:
    """Return the centres of grid ``name`` (:func:`grid_name`) over a section AnnData's spots.

    Uses the section's spots (its ``obs["array_row"]``, ``obs["array_col"]`` and
    ``obsm["spatial"]``: the in-tissue spots of the filtered positions), its platform and µm/px
    (``uns["stpredict"]``).
    """
    meta = adata.uns["stpredict"]
    sample, platform = str(meta.get("sample_id", "")) or None, str(meta["platform"])
    grid, stride_um = parse_grid_name(name)
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    rows, cols = adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()
    if grid == "stride":
        pitch = VISIUM_PITCH_UM if platform == "visium" else st_um_per_unit(cols, rows)
        if platform == "st" and is_staggered(cols, rows):
            pitch = pitch * math.sqrt(2.0)  # neighbours are diagonal on a staggered array
        return stride_centres(
            xy[:, 0], xy[:, 1], float(meta["mpp"]), float(stride_um), platform, pitch, sample
        )
    resolve_grid(grid, platform, sample)
    fn = triangle_centres if grid == "triangles" else square_centres
    return fn(rows, cols, xy[:, 0], xy[:, 1], sample=sample)
