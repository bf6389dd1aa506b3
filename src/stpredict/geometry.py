"""Spot-array geometry: neighbours, pixel size, and the image-bounds check (FORMATS.md §1-4).

Pixel size comes from the spot pitch and is reconciled with the other estimates; the bounds check
catches transposed or wrongly scaled coordinates.

Conventions: ``x`` is the image column and ``y`` the image row, both in full-resolution pixels;
Visium array coordinates are ``(array_row, array_col)``; legacy ST array coordinates are
``(x, y)`` = ``(array_col, array_row)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from stpredict.errors import GeometryError

if TYPE_CHECKING:
    from stpredict.images import SlideImage

__all__ = [
    "visium_lattice",
    "VISIUM_PITCH_UM",
    "VISIUM_SPOT_UM",
    "VISIUM_SCALEFACTOR_SPOT_UM",
    "ST_PITCH_UM",
    "ST_SPOT_UM",
    "MPP_ORDER",
    "HEX_OFFSETS",
    "SQUARE4_OFFSETS",
    "SQUARE8_OFFSETS",
    "offset_neighbors",
    "hex_neighbors",
    "square_neighbors",
    "spot_neighbors",
    "neighbor_pairs",
    "is_staggered",
    "fit_array_to_pixel",
    "st_um_per_unit",
    "estimate_mpp_from_pitch",
    "reconcile_mpp",
    "check_bounds",
]

VISIUM_PITCH_UM = 100.0
VISIUM_SPOT_UM = 55.0
VISIUM_SCALEFACTOR_SPOT_UM = 65.0  # what scalefactors' spot_diameter_fullres measures
ST_PITCH_UM = 200.0
ST_SPOT_UM = 100.0

#: Preference order of pixel-size sources (first available wins; all are cross-checked).
MPP_ORDER: tuple[str, ...] = (
    "image_tags",
    "sheet",
    "microns_per_pixel",
    "pitch",
    "spot_diameter_fullres",
)

#: Visium hexagonal neighbours as ``(d_row, d_col)``.
HEX_OFFSETS: tuple[tuple[int, int], ...] = ((0, -2), (0, 2), (-1, -1), (-1, 1), (1, -1), (1, 1))
#: Square-grid 4-neighbourhood as ``(d_row, d_col)``.
SQUARE4_OFFSETS: tuple[tuple[int, int], ...] = ((0, -1), (0, 1), (-1, 0), (1, 0))
#: Square-grid 8-neighbourhood (the 3x3 window without its centre).
SQUARE8_OFFSETS: tuple[tuple[int, int], ...] = tuple(
    (dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)
)


# --------------------------------------------------------------------------- neighbours
def _int_coords(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    out = np.rint(arr).astype(np.int64)
    if arr.size and np.nanmax(np.abs(arr - out)) > 0.25:
        raise ValueError(f"{name} must be integer array coordinates (got non-integer values)")
    return out


def offset_neighbors(
    array_rows: Sequence[float] | np.ndarray,
    array_cols: Sequence[float] | np.ndarray,
    offsets: Sequence[tuple[int, int]],
) -> list[np.ndarray]:
    """Neighbour index lists for spots on an integer lattice.

    Parameters
    ----------
    array_rows, array_cols
        Array coordinates of the ``n`` spots (rounded to integers).
    offsets
        ``(d_row, d_col)`` displacements that define a neighbour.

    Returns
    -------
    list of numpy.ndarray
        Entry ``i`` holds the (sorted) indices of the spots at ``(row + d_row, col + d_col)``
        for each offset that exists among the given spots.

    Raises
    ------
    ValueError
        If two spots share a position.
    """
    rows = _int_coords(array_rows, "array_rows")
    cols = _int_coords(array_cols, "array_cols")
    if rows.shape != cols.shape:
        raise ValueError("array_rows and array_cols differ in length")
    n = rows.size
    if n == 0:
        return []
    span = int(max(np.abs(cols).max(), np.abs(rows).max())) + 4
    base = 2 * span + 1
    keys = (rows + span) * base + (cols + span)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if np.any(sorted_keys[1:] == sorted_keys[:-1]):
        raise ValueError("two spots share the same array position")
    found: list[list[int]] = [[] for _ in range(n)]
    for dr, dc in offsets:
        target = (rows + dr + span) * base + (cols + dc + span)
        pos = np.searchsorted(sorted_keys, target)
        pos_c = np.minimum(pos, n - 1)
        hit = sorted_keys[pos_c] == target
        for i in np.flatnonzero(hit):
            found[i].append(int(order[pos_c[i]]))
    return [np.array(sorted(f), dtype=np.int64) for f in found]


def visium_lattice(n_rows: int = 78, n_cols: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """``(array_row, array_col)`` of a Visium hex lattice, row by row.

    A spot ``(row, col)`` exists only when ``col`` has the parity of ``row``; the full capture
    area (78 x 128) holds 4,992 spots.
    """
    rows = np.repeat(np.arange(n_rows), [len(range(r % 2, n_cols, 2)) for r in range(n_rows)])
    cols = np.concatenate([np.arange(r % 2, n_cols, 2) for r in range(n_rows)])
    return rows.astype(np.int64), cols.astype(np.int64)


def hex_neighbors(
    array_rows: Sequence[float] | np.ndarray, array_cols: Sequence[float] | np.ndarray
) -> list[np.ndarray]:
    """Visium hexagonal neighbours: ``(row, col±2)`` and ``(row±1, col±1)``."""
    return offset_neighbors(array_rows, array_cols, HEX_OFFSETS)


def square_neighbors(
    array_rows: Sequence[float] | np.ndarray,
    array_cols: Sequence[float] | np.ndarray,
    connectivity: int = 4,
) -> list[np.ndarray]:
    """Legacy ST square-grid neighbours (``connectivity`` 4 or 8, the 3x3 window)."""
    if connectivity == 4:
        return offset_neighbors(array_rows, array_cols, SQUARE4_OFFSETS)
    if connectivity == 8:
        return offset_neighbors(array_rows, array_cols, SQUARE8_OFFSETS)
    raise ValueError("connectivity must be 4 or 8")


def spot_neighbors(
    array_rows: Sequence[float] | np.ndarray,
    array_cols: Sequence[float] | np.ndarray,
    platform: str,
    connectivity: int = 4,
) -> list[np.ndarray]:
    """Neighbour lists for ``platform`` ``"visium"`` (hex) or ``"st"`` (square, 4 or 8)."""
    if platform == "visium":
        return hex_neighbors(array_rows, array_cols)
    if platform == "st":
        return square_neighbors(array_rows, array_cols, connectivity)
    raise ValueError(f"unknown platform {platform!r} (visium | st)")


def neighbor_pairs(neighbors: Sequence[np.ndarray]) -> np.ndarray:
    """Undirected neighbour pairs ``(i, j)`` with ``i < j`` as an ``(k, 2)`` int array."""
    pairs = [(i, int(j)) for i, nb in enumerate(neighbors) for j in nb if i < j]
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    return np.array(sorted(pairs), dtype=np.int64)


# --------------------------------------------------------------------------- pixel size
def is_staggered(
    array_cols: Sequence[float] | np.ndarray, array_rows: Sequence[float] | np.ndarray
) -> bool:
    """Whether ST array coordinates use a staggered (checkerboard) layout.

    Older "2k" ST arrays interleave a second spot lattice at the cell centres of the 200 µm
    grid and number positions so that every occupied ``(x, y)`` has ``x + y`` of one parity
    (e.g. STUtility's MOB example, x in 1..66, y in 1..63). One array unit is then 100 µm.
    """
    cols = np.rint(np.asarray(array_cols, dtype=float)).astype(np.int64)
    rows = np.rint(np.asarray(array_rows, dtype=float)).astype(np.int64)
    if cols.size < 4:
        return False
    parity = (cols + rows) % 2
    share = max(parity.mean(), 1 - parity.mean())
    return bool(share >= 0.99 and len(np.unique(cols % 2)) == 2)


def st_um_per_unit(
    array_cols: Sequence[float] | np.ndarray, array_rows: Sequence[float] | np.ndarray
) -> float:
    """µm per ST array unit: 200 (square 1k grid) or 100 (staggered 2k layout)."""
    return ST_PITCH_UM / 2 if is_staggered(array_cols, array_rows) else ST_PITCH_UM


def fit_array_to_pixel(
    array_cols: Sequence[float] | np.ndarray,
    array_rows: Sequence[float] | np.ndarray,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    n_iter: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Robust affine least-squares fit of pixel ``[x, y]`` on array ``[col, row, 1]``.

    Parameters
    ----------
    array_cols, array_rows
        Array coordinates (floats allowed).
    x, y
        Pixel coordinates (image column, image row).
    n_iter
        Re-fits after dropping outliers (residual above 3 robust SDs, at least 1 px).

    Returns
    -------
    coef : numpy.ndarray
        ``(3, 2)``: rows ``d[x, y]/d col``, ``d[x, y]/d row``, intercept.
    inliers : numpy.ndarray
        Boolean mask of the points used in the final fit.
    """
    a = np.column_stack([np.asarray(array_cols, float), np.asarray(array_rows, float)])
    p = np.column_stack([np.asarray(x, float), np.asarray(y, float)])
    ok = np.all(np.isfinite(a), axis=1) & np.all(np.isfinite(p), axis=1)
    if ok.sum() < 3:
        raise GeometryError("fewer than 3 spots with finite coordinates; cannot fit the spot grid")
    design = np.column_stack([a, np.ones(len(a))])
    inl = ok.copy()
    coef = np.zeros((3, 2))
    for _ in range(n_iter):
        coef, *_ = np.linalg.lstsq(design[inl], p[inl], rcond=None)
        res = np.linalg.norm(design @ coef - p, axis=1)
        scale = 1.4826 * np.median(res[inl])
        new = ok & (res <= max(3.0 * scale, 1.0))
        if new.sum() < 3 or np.array_equal(new, inl):
            break
        inl = new
    return coef, inl


def estimate_mpp_from_pitch(
    array_rows: Sequence[float] | np.ndarray,
    array_cols: Sequence[float] | np.ndarray,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    platform: str,
) -> float:
    """Estimate µm per full-resolution pixel from the spot pitch.

    Parameters
    ----------
    array_rows, array_cols
        Array coordinates (Visium ``array_row/array_col``; ST ``y``/``x``, floats allowed).
        Pass every position of the array (off-tissue ones too) for the best estimate.
    x, y
        Full-resolution pixel coordinates (column, row).
    platform
        ``"visium"``: 100 µm / median pixel distance between hex neighbours. ``"st"``: robust
        affine fit; px per array unit = mean norm of the two coefficient columns; 200 µm per
        unit (100 µm for staggered 2k arrays, see :func:`is_staggered`).

    Returns
    -------
    float
        Microns per pixel.

    Raises
    ------
    GeometryError
        If no neighbouring spots exist or the fit is degenerate.
    """
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if platform == "visium":
        nb = hex_neighbors(array_rows, array_cols)
        pairs = neighbor_pairs(nb)
        if len(pairs) == 0:
            raise GeometryError("no neighbouring Visium spots; cannot estimate the spot pitch")
        d = np.hypot(xs[pairs[:, 0]] - xs[pairs[:, 1]], ys[pairs[:, 0]] - ys[pairs[:, 1]])
        med = float(np.median(d))
        if not med > 0:
            raise GeometryError("neighbouring spots share pixel positions; cannot estimate pitch")
        return VISIUM_PITCH_UM / med
    if platform == "st":
        coef, _ = fit_array_to_pixel(array_cols, array_rows, xs, ys)
        px_per_unit = float(np.mean(np.linalg.norm(coef[:2], axis=1)))
        if not px_per_unit > 0:
            raise GeometryError("degenerate spot grid; cannot estimate the spot pitch")
        return st_um_per_unit(array_cols, array_rows) / px_per_unit
    raise ValueError(f"unknown platform {platform!r} (visium | st)")


def reconcile_mpp(
    estimates: Mapping[str, float | None],
    tolerance: float,
    sample: str | None = None,
    order: Sequence[str] = MPP_ORDER,
    file: str | os.PathLike[str] | None = None,
) -> tuple[float, str]:
    """Choose a pixel size from several estimates and refuse inconsistent ones.

    Parameters
    ----------
    estimates
        ``{source: µm/px or None}``; known sources, in preference order: ``image_tags``
        (embedded TIFF / image resolution), ``sheet`` (sample-sheet / explicit ``mpp``),
        ``microns_per_pixel`` (scalefactors, Visium HD), ``pitch`` (spot pitch),
        ``spot_diameter_fullres`` (scalefactors, a 65 µm circle; a cross-check, used only when
        nothing else exists). Unknown sources are cross-checked and ranked last.
    tolerance
        Largest allowed relative difference ``|a - b| / min(a, b)`` between any two estimates.
    sample
        Sample id for the error message.
    order
        Preference order of the sources.
    file
        File named in the error message (e.g. the image).

    Returns
    -------
    (float, str)
        The chosen µm/px and its source.

    Raises
    ------
    GeometryError
        If no estimate is available or two estimates disagree beyond ``tolerance``.
    """
    avail = {
        k: float(v)
        for k, v in estimates.items()
        if v is not None and np.isfinite(float(v)) and float(v) > 0
    }
    if not avail:
        raise GeometryError(
            "no pixel size available (no image resolution tag, no mpp, no usable spot pitch)",
            file=file,
            sample=sample,
            fix="set the sample sheet's mpp column to the image's µm per pixel",
        )
    worst: tuple[float, str, str] | None = None
    keys = list(avail)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            rel = abs(avail[a] - avail[b]) / min(avail[a], avail[b])
            if worst is None or rel > worst[0]:
                worst = (rel, a, b)
    if worst is not None and worst[0] > tolerance:
        listing = ", ".join(f"{k}={v:.4g}" for k, v in avail.items())
        raise GeometryError(
            f"pixel-size estimates disagree: {listing} µm/px ({worst[1]} vs {worst[2]} differ by "
            f"{100 * worst[0]:.0f}% > tolerance {100 * tolerance:.0f}%)",
            file=file,
            sample=sample,
            fix="check that the image is the full-resolution image the spot coordinates refer to "
            "and correct the sample sheet's mpp (or the image's resolution tag); raise "
            "mpp_tolerance only if the difference is expected",
        )
    ranked = [k for k in order if k in avail] + [k for k in avail if k not in order]
    return avail[ranked[0]], ranked[0]


# --------------------------------------------------------------------------- bounds check
def _xy(arr: Any) -> np.ndarray:
    a = np.asarray(arr, dtype=float)
    if a.size == 0:
        return np.zeros((0, 2))
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError("coordinates must be an (n, 2) array of [x, y]")
    return a


def _tissue_threshold(grey: np.ndarray) -> float:
    """Otsu threshold between glass and tissue brightness (0..1)."""
    from skimage.filters import threshold_otsu

    if float(grey.max() - grey.min()) < 1e-3:
        return float(grey.min()) - 1e-3  # uniform image: nothing is tissue
    return float(threshold_otsu(grey))


def _brightness_stats(
    smooth: np.ndarray,
    threshold: float,
    scale: float,
    xy_in: np.ndarray,
    xy_off: np.ndarray | None,
    pitch_px: float,
) -> dict[str, float]:
    """Median brightness (0..1) and share on tissue of in-tissue spots and of the reference."""
    from scipy.spatial import cKDTree

    th, tw = smooth.shape

    def sample(xy: np.ndarray) -> np.ndarray:
        cx = np.clip(np.rint(xy[:, 0] * scale).astype(int), 0, tw - 1)
        cy = np.clip(np.rint(xy[:, 1] * scale).astype(int), 0, th - 1)
        return smooth[cy, cx]

    v_in = sample(xy_in)
    if xy_off is not None and len(xy_off) >= 5:
        v_ref = sample(xy_off)
    else:
        # Background: thumbnail positions farther than one pitch from every spot.
        spots = xy_in if xy_off is None or len(xy_off) == 0 else np.vstack([xy_in, xy_off])
        step = max(1, int(round(pitch_px * scale / 2)))
        gy, gx = np.mgrid[0:th:step, 0:tw:step]
        cand = np.column_stack([gx.ravel(), gy.ravel()]).astype(float)
        dist, _ = cKDTree(spots * scale).query(cand)
        bg = cand[dist > pitch_px * scale]
        if len(bg) >= 10:
            v_ref = smooth[bg[:, 1].astype(int), bg[:, 0].astype(int)]
        else:  # spots cover the image: fall back to the border strip
            b = max(1, int(round(0.02 * max(th, tw))))
            mask = np.zeros(smooth.shape, dtype=bool)
            mask[:b] = mask[-b:] = True
            mask[:, :b] = mask[:, -b:] = True
            v_ref = smooth[mask]
    b_in, b_ref = float(np.median(v_in)), float(np.median(v_ref))
    f_in, f_ref = float(np.mean(v_in < threshold)), float(np.mean(v_ref < threshold))
    return {
        "brightness_in": b_in,
        "brightness_off": b_ref,
        "contrast": b_ref - b_in,
        "tissue_share_in": f_in,
        "tissue_share_off": f_ref,
        "separation": f_in - f_ref,
        "n_reference": float(len(v_ref)),
    }


def check_bounds(
    image: SlideImage,
    xy_in_tissue: Any,
    xy_off_tissue: Any | None,
    spot_radius_px: float,
    sample: str | None = None,
    file: str | os.PathLike[str] | None = None,
    pitch_px: float | None = None,
    min_contrast: float = 0.02,
) -> dict[str, float]:
    """Check that spot coordinates fit the image and land on tissue.

    Every in-tissue spot centre must lie inside the image, and in-tissue spots must be darker
    than the off-tissue reference: the off-tissue positions (Visium, ST selection tables) or,
    without them, background positions farther than one pitch from every spot (else the image
    border). Brightness is measured on a thumbnail. If swapping x and y would make the spots
    put clearly more in-tissue spots (and fewer reference positions) on tissue, the
    coordinates are reported as transposed.

    Parameters
    ----------
    image
        The full-resolution image the coordinates refer to.
    xy_in_tissue, xy_off_tissue
        ``(n, 2)`` full-resolution ``[x, y]`` of in-tissue / off-tissue spots (the latter may
        be ``None`` or empty).
    spot_radius_px
        Spot radius in full-resolution pixels (brightness is averaged over ~ the spot).
    sample, file
        For error messages (``file``: the coordinate file).
    pitch_px
        Centre-to-centre spot distance in px (default ``4 * spot_radius_px``).
    min_contrast
        Smallest accepted ``off - in`` median brightness difference (brightness in 0..1).

    Returns
    -------
    dict
        ``brightness_in``, ``brightness_off`` (medians, 0..1), ``contrast`` (off - in),
        ``tissue_share_in`` / ``tissue_share_off`` (share on tissue, Otsu threshold on the
        thumbnail), ``separation`` (their difference), ``separation_transposed`` (NaN when the
        swapped set does not fit the image), ``n_reference``, ``tissue_threshold``.

    Raises
    ------
    GeometryError
        If spots lie outside the image, the coordinates look transposed, or in-tissue spots are
        not darker than off-tissue ones.
    """
    xy_in = _xy(xy_in_tissue)
    xy_off = None if xy_off_tissue is None else _xy(xy_off_tissue)
    h, w = image.shape
    pitch = float(pitch_px) if pitch_px else 4.0 * float(spot_radius_px)
    img_name = str(image.path)

    def inside(xy: np.ndarray) -> np.ndarray:
        return (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)

    if len(xy_in) == 0:
        raise GeometryError(
            "no in-tissue spots to check",
            file=file,
            sample=sample,
            fix="check the in_tissue / selected column of the positions file",
        )
    ok = inside(xy_in)
    swapped = xy_in[:, ::-1]
    if not ok.all():
        n_out = int((~ok).sum())
        ext_x, ext_y = float(xy_in[:, 0].max()), float(xy_in[:, 1].max())
        if inside(swapped).all():
            hint = "the coordinates look transposed (x and y swapped)"
            fix = "swap the x/y (pixel column/row) columns of the coordinate file"
        else:
            hint = "the coordinates may be for the hires image or transposed"
            fix = (
                f"give the full-resolution image the coordinates refer to (they reach "
                f"x={ext_x:.0f}, y={ext_y:.0f}); not tissue_hires_image.png / "
                "tissue_lowres_image.png or another downscaled copy"
            )
        raise GeometryError(
            f"{n_out} of {len(xy_in)} in-tissue spots lie outside the {w}x{h} image "
            f"'{img_name}'; {hint}",
            file=file,
            sample=sample,
            fix=fix,
        )

    from scipy.ndimage import uniform_filter

    thumb, scale = image.thumbnail(1024)
    grey = thumb.astype(np.float32).mean(axis=2) / 255.0
    r = max(1, int(round(float(spot_radius_px) * scale * 0.8)))
    smooth = uniform_filter(grey, size=2 * r + 1, mode="nearest")
    threshold = _tissue_threshold(grey)
    off = None if xy_off is None else xy_off[inside(xy_off)]
    stats = _brightness_stats(smooth, threshold, scale, xy_in, off, pitch)
    stats["tissue_threshold"] = threshold
    stats["separation_transposed"] = float("nan")
    if inside(swapped).all():
        off_t = None if off is None else off[:, ::-1]
        st_t = _brightness_stats(smooth, threshold, scale, swapped, off_t, pitch)
        stats["separation_transposed"] = st_t["separation"]
        if st_t["contrast"] >= min_contrast and st_t["separation"] > stats["separation"] + 0.1:
            raise GeometryError(
                f"the coordinates look transposed (x and y swapped): "
                f"{100 * stats['tissue_share_in']:.0f}% of in-tissue spots lie on tissue as given "
                f"but {100 * st_t['tissue_share_in']:.0f}% with x and y swapped (image "
                f"'{img_name}')",
                file=file,
                sample=sample,
                fix="swap the x/y (pixel column/row) columns of the coordinate file",
            )
    b_in, b_off, contrast = stats["brightness_in"], stats["brightness_off"], stats["contrast"]
    if contrast < min_contrast:
        raise GeometryError(
            f"in-tissue spots are not darker than off-tissue ones (median brightness "
            f"{b_in:.3f} vs {b_off:.3f}, needs a difference >= {min_contrast}) in image "
            f"'{img_name}'; the coordinates may be transposed, flipped or for another image",
            file=file,
            sample=sample,
            fix="check that the image is the one the coordinates were aligned to and that x is "
            "the image column; set bounds_check: false only if the image is known to be unusual",
        )
    return stats
