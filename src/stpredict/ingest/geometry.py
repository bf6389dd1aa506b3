"""Spot-array geometry: neighbours, pixel size, and the image-bounds check (FORMATS.md §1-4).

Pixel size comes from the spot pitch and is reconciled with the other estimates, trusting the
most reliable ones and naming the outlier (:func:`reconcile_mpp`); the bounds check catches
wrongly scaled coordinates and images that are mirrored, rotated or transposed relative to the
coordinates (:func:`check_bounds`, the 8 placements of :data:`ORIENTATIONS`).

Conventions: ``x`` is the image column and ``y`` the image row, both in full-resolution pixels;
Visium array coordinates are ``(array_row, array_col)``; legacy ST array coordinates are
``(x, y)`` = ``(array_col, array_row)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from stpredict.errors import GeometryError

if TYPE_CHECKING:
    from stpredict.ingest.images import SlideImage

log = logging.getLogger(__name__)

__all__ = [
    "visium_lattice",
    "VISIUM_PITCH_UM",
    "VISIUM_SPOT_UM",
    "VISIUM_SCALEFACTOR_SPOT_UM",
    "ST_PITCH_UM",
    "ST_SPOT_UM",
    "MPP_ORDER",
    "RELIABLE_MPP_SOURCES",
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
    "ORIENTATIONS",
    "ORIENTATION_MARGIN",
    "orient_xy",
]

VISIUM_PITCH_UM = 100.0
VISIUM_SPOT_UM = 55.0
VISIUM_SCALEFACTOR_SPOT_UM = 65.0  # what scalefactors' spot_diameter_fullres measures
ST_PITCH_UM = 200.0
ST_SPOT_UM = 100.0

#: Preference order of pixel-size sources, most reliable first (first available wins; all are
#: cross-checked; see :func:`reconcile_mpp` for why this order).
MPP_ORDER: tuple[str, ...] = (
    "sheet",
    "pitch",
    "microns_per_pixel",
    "spot_diameter_fullres",
    "image_tags",
)
#: Sources that must agree with each other; a weaker one that disagrees is the outlier.
RELIABLE_MPP_SOURCES: tuple[str, ...] = ("sheet", "pitch", "microns_per_pixel")

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


def _rel(a: float, b: float) -> float:
    return abs(a - b) / min(a, b)


def _agreed(keys: Sequence[str]) -> str:
    if len(keys) == 1:
        return f"the value {keys[0]} gives"
    return f"the value {', '.join(keys)} agree on"


def _agreeing_groups(avail: Mapping[str, float], tolerance: float) -> list[tuple[str, ...]]:
    """Every set of estimates that agree pairwise within ``tolerance`` (largest first)."""
    from itertools import combinations

    keys = list(avail)
    groups = []
    for k in range(len(keys), 0, -1):
        for combo in combinations(keys, k):
            if all(_rel(avail[a], avail[b]) <= tolerance for a, b in combinations(combo, 2)):
                groups.append(combo)
    return groups


def reconcile_mpp(
    estimates: Mapping[str, float | None],
    tolerance: float,
    sample: str | None = None,
    order: Sequence[str] = MPP_ORDER,
    file: str | os.PathLike[str] | None = None,
) -> tuple[float, str]:
    """Choose a pixel size from several estimates; refuse, naming the outlier, when they disagree.

    Sources and how far each is trusted (:data:`MPP_ORDER`, most reliable first):

    1. ``sheet``: the sample sheet's ``mpp``, stated by the user for this image; it is the one
       way to settle a conflict, so it ranks first, but it is still cross-checked.
    2. ``pitch``: the spot pitch (100 µm Visium, 200 / 100 µm ST) measured in the coordinates
       themselves. It is the pixel size *of the pixels the coordinates index*, whatever was done
       to the image file, so it never goes stale; it fails only for an array of unknown layout.
    3. ``microns_per_pixel``: Space Ranger's own registration (Visium HD scalefactors); sound,
       but from a separate file that may belong to another run.
    4. ``spot_diameter_fullres``: the scalefactors' pixel width of a nominal 65 µm circle; a
       cross-check (the 55/65 µm ambiguity, and a scalefactors file of another section).
    5. ``image_tags``: the image's resolution tags. Least reliable: software writes default dpi,
       and an image resized in an editor keeps the tags of the original. Implausible tags are
       dropped before they get here (:func:`stpredict.ingest.images.plausible_tag_mpp`).

    Rules: when every estimate agrees within ``tolerance`` the highest-ranked one is used. The
    *reliable* sources (``sheet``, ``pitch``, ``microns_per_pixel``) must agree with each
    other, else the section is refused. When they agree but a weaker one (tags,
    ``spot_diameter_fullres``) disagrees: with the sheet's ``mpp`` given (and agreeing with
    the pitch when there is one) the weaker estimate is ignored with a warning; without it the
    section is refused. Every refusal names the outlier and suggests setting the sheet's
    ``mpp`` to the value the reliable estimates agree on; it never suggests accepting the
    outlier.

    Parameters
    ----------
    estimates
        ``{source: µm/px or None}``; unknown sources are cross-checked as weak ones.
    tolerance
        Largest allowed relative difference ``|a - b| / min(a, b)`` between two estimates.
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
        If no estimate is available or the estimates disagree as described above.
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
    rank = {k: i for i, k in enumerate(order)}
    ranked = sorted(avail, key=lambda k: (rank.get(k, len(rank)), k))

    def fmt(keys: Sequence[str]) -> str:
        return ", ".join(f"{k}={avail[k]:.4g}" for k in keys)

    listing = fmt(ranked)
    if all(_rel(avail[a], avail[b]) <= tolerance for a in avail for b in avail):
        return avail[ranked[0]], ranked[0]

    reliable = [k for k in ranked if k in RELIABLE_MPP_SOURCES]
    groups = _agreeing_groups(avail, tolerance)

    def best_group(must: Sequence[str] = ()) -> tuple[str, ...] | None:
        cands = [g for g in groups if set(must) <= set(g)]
        if not cands:
            return None
        # most members, then the most reliable members, then the best-ranked member
        return max(
            cands,
            key=lambda g: (
                len(g),
                sum(k in RELIABLE_MPP_SOURCES for k in g),
                -min(rank.get(k, len(rank)) for k in g),
            ),
        )

    reliable_agree = all(_rel(avail[a], avail[b]) <= tolerance for a in reliable for b in reliable)
    check_image = (
        "check first that the image is the full-resolution image the spot coordinates refer to"
    )
    if reliable and reliable_agree:
        agree = best_group(reliable)
        assert agree is not None
        outliers = [k for k in ranked if k not in agree]
        value = avail[reliable[0]]
        if "sheet" in reliable:  # the user settled it (and agrees with the pitch if any)
            log.warning(
                "sample %s: pixel size %.4g µm/px from %s; ignored %s (disagreeing with %s "
                "beyond %.0f%%)",
                sample,
                value,
                reliable[0],
                fmt(outliers),
                fmt(list(agree)),
                100 * tolerance,
            )
            return value, reliable[0]
        why = {
            "image_tags": "the image's resolution tag is stale or a software default",
            "spot_diameter_fullres": "the scalefactors file may belong to another section or run",
        }
        causes = "; ".join(why.get(k, f"{k} is wrong") for k in outliers)
        raise GeometryError(
            f"pixel-size estimates disagree: {listing} µm/px; the outlier is "
            f"{', '.join(outliers)} (off by {100 * max(_rel(avail[k], value) for k in outliers):.0f}"
            f"% from {', '.join(agree)} = {value:.4g}, more than the {100 * tolerance:.0f}% "
            f"tolerance): {causes}",
            file=file,
            sample=sample,
            fix=f"set the sample sheet's mpp to {value:.4g} ({_agreed(agree)}); the outlier is "
            f"then ignored; {check_image}",
        )
    if not reliable:
        raise GeometryError(
            f"pixel-size estimates disagree: {listing} µm/px (beyond the {100 * tolerance:.0f}% "
            "tolerance) and no reliable estimate (sheet mpp, spot pitch) can settle it",
            file=file,
            sample=sample,
            fix=f"set the sample sheet's mpp to the image's true µm per pixel; {check_image}",
        )
    # The reliable estimates disagree among themselves. The pitch is trusted: it measures the
    # pixels the coordinates index (then Space Ranger's microns_per_pixel, then the sheet).
    trusted = next(k for k in ("pitch", "microns_per_pixel", "sheet") if k in reliable)
    agree = best_group([trusted])
    assert agree is not None
    value = avail[trusted]
    outliers = [k for k in ranked if k not in agree]
    hint = ""
    if "sheet" in outliers:
        hint = (
            f"; if {avail['sheet']:.4g} µm/px is right, the coordinates are not in pixels of "
            "this image (e.g. it was resized after scanning): give the image the coordinates "
            "were aligned to"
        )
    raise GeometryError(
        f"pixel-size estimates disagree: {listing} µm/px; the outlier is {', '.join(outliers)} "
        f"(off by {100 * max(_rel(avail[k], value) for k in outliers):.0f}% from "
        f"{', '.join(agree)} = {value:.4g}, more than the {100 * tolerance:.0f}% tolerance)",
        file=file,
        sample=sample,
        fix=f"set the sample sheet's mpp to {value:.4g} ({_agreed(agree)}) or leave it empty{hint}",
    )


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
    band: float = 2.0,
) -> dict[str, float]:
    """Median brightness (0..1) and share on tissue of in-tissue spots and of the reference.

    The reference is the off-tissue positions ``xy_off`` (already restricted by the caller) or,
    without them, thumbnail positions between one and ``band`` pitches from the nearest spot
    (the glass around the tissue), else the image border.
    """
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
        # Background: thumbnail positions 1..band pitches from the nearest spot.
        spots = xy_in if xy_off is None or len(xy_off) == 0 else np.vstack([xy_in, xy_off])
        step = max(1, int(round(pitch_px * scale / 2)))
        gy, gx = np.mgrid[0:th:step, 0:tw:step]
        cand = np.column_stack([gx.ravel(), gy.ravel()]).astype(float)
        dist, _ = cKDTree(spots * scale).query(cand)
        bg = cand[(dist > pitch_px * scale) & (dist <= band * pitch_px * scale)]
        if len(bg) < 10:
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


#: The 8 placements of the coordinates in the image frame (the dihedral group), tested by
#: :func:`check_bounds`: ``name -> (swaps the frame, what the image looks like, the fix)``. Each
#: maps coordinates of the image they were aligned to onto the given image, in pixels
#: ``(w, h)`` of the given image; the fix undoes the transformation of the image.
ORIENTATIONS: dict[str, tuple[bool, str, str]] = {
    "identity": (False, "", ""),
    "flip_lr": (
        False,
        "the image looks mirrored left-right relative to the spot coordinates",
        "flip the image horizontally (or give the image the coordinates were aligned to)",
    ),
    "flip_ud": (
        False,
        "the image looks mirrored up-down relative to the spot coordinates",
        "flip the image vertically (or give the image the coordinates were aligned to)",
    ),
    "rot180": (
        False,
        "the image looks rotated by 180° relative to the spot coordinates",
        "rotate the image by 180° (or give the image the coordinates were aligned to)",
    ),
    "transpose": (
        True,
        "the coordinates look transposed (x and y swapped)",
        "swap the x/y (pixel column/row) columns of the coordinate file (or transpose the image)",
    ),
    "rot90_cw": (
        True,
        "the image looks rotated 90° clockwise relative to the spot coordinates",
        "rotate the image 90° counter-clockwise (or give the image the coordinates were aligned "
        "to)",
    ),
    "rot90_ccw": (
        True,
        "the image looks rotated 90° counter-clockwise relative to the spot coordinates",
        "rotate the image 90° clockwise (or give the image the coordinates were aligned to)",
    ),
    "anti_transpose": (
        True,
        "the image looks mirrored across its anti-diagonal (rotated 90° and flipped) relative "
        "to the spot coordinates",
        "rotate the image 90° clockwise, then flip it vertically (or give the image the "
        "coordinates were aligned to)",
    ),
}

#: How much larger the tissue separation (share of in-tissue spots on tissue minus that of the
#: reference positions) of another orientation must be before check_bounds refuses the given
#: one. Calibrated on the demo sections and the real fixtures (see the check_bounds docstring).
ORIENTATION_MARGIN = 0.05
#: When neither the given nor the best other orientation separates tissue better than this,
#: the image is reported as probably another section's (correctly oriented sections separate
#: at 0.54-1.00 on 45 demo sections and the real fixtures; the image of another demo patient
#: at 0.0-0.6 in its best orientation).
POOR_FIT_SEPARATION = 0.3
#: Reference positions for the brightness comparison lie within this many pitches of the
#: nearest in-tissue spot (a band of glass around the tissue).
REFERENCE_BAND = 2.0
#: Fewest in-tissue spots for the orientation test (fewer cannot tell orientations apart).
ORIENTATION_MIN_SPOTS = 30


def orient_xy(xy: np.ndarray, name: str, width: int, height: int) -> np.ndarray:
    """Place coordinates ``[x, y]`` by orientation ``name`` in a ``width x height`` image.

    ``flip_lr``: ``x -> w-1-x``; ``flip_ud``: ``y -> h-1-y``; ``rot180``: both; ``transpose``:
    ``(y, x)``; ``rot90_cw``: ``(w-1-y, x)``; ``rot90_ccw``: ``(y, h-1-x)``;
    ``anti_transpose``: ``(w-1-y, h-1-x)`` (see :data:`ORIENTATIONS`).
    """
    x, y = xy[:, 0], xy[:, 1]
    w1, h1 = float(width - 1), float(height - 1)
    table = {
        "identity": (x, y),
        "flip_lr": (w1 - x, y),
        "flip_ud": (x, h1 - y),
        "rot180": (w1 - x, h1 - y),
        "transpose": (y, x),
        "rot90_cw": (w1 - y, x),
        "rot90_ccw": (y, h1 - x),
        "anti_transpose": (w1 - y, h1 - x),
    }
    if name not in table:
        raise ValueError(f"unknown orientation {name!r}")
    nx, ny = table[name]
    return np.column_stack([nx, ny])


def _check_spots_given(xy_in: np.ndarray, file: Any, sample: str | None) -> None:
    """Refuse an empty or non-finite set of in-tissue spot centres."""
    if len(xy_in) == 0:
        raise GeometryError(
            "no in-tissue spots to check",
            file=file,
            sample=sample,
            fix="check the in_tissue / selected column of the positions file",
        )
    if not np.isfinite(xy_in).all():
        raise GeometryError(
            f"{int((~np.isfinite(xy_in).all(axis=1)).sum())} in-tissue spots have no finite "
            "pixel coordinates",
            file=file,
            sample=sample,
            fix="give the coordinate file the alignment software wrote (no NaN / inf)",
        )


def _near_reference(xy_in: np.ndarray, xy_off: np.ndarray, pitch: float) -> np.ndarray:
    """Off-tissue positions within REFERENCE_BAND pitches of an in-tissue spot (else all).

    Those near the tissue tell orientations apart; those far away are glass in every
    orientation.
    """
    from scipy.spatial import cKDTree

    finite = xy_off[np.isfinite(xy_off).all(axis=1)]
    dist, _ = cKDTree(xy_in).query(finite)
    near = finite[dist <= REFERENCE_BAND * pitch]
    return near if len(near) >= 5 else finite


def _check_contrast(
    stats: dict[str, float],
    wide: Mapping[str, float],
    img_name: str,
    min_contrast: float,
    file: Any,
    sample: str | None,
) -> None:
    """Refuse in-tissue spots that are not darker than the glass, near or (else) anywhere.

    Tissue may surround the spots (larger than the capture area): then glass is found only
    farther away, so the contrast against every off-tissue / background position (``wide``)
    is recorded as ``contrast_wide`` and used when larger.
    """
    b_in, b_off, contrast = stats["brightness_in"], stats["brightness_off"], stats["contrast"]
    stats["contrast_wide"] = wide["contrast"]
    if wide["contrast"] > contrast:
        b_off, contrast = wide["brightness_off"], wide["contrast"]
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


def _outside_error(
    xy_in: np.ndarray,
    inside: Any,
    fits: Mapping[str, bool],
    measure: Any,
    size: tuple[int, int],
    img_name: str,
    margin: float,
    min_contrast: float,
    file: Any,
    sample: str | None,
) -> GeometryError:
    """Build the error for in-tissue spots outside the image, naming the likely cause."""
    w, h = size
    n_out = int((~inside(xy_in)).sum())
    ext_x, ext_y = float(xy_in[:, 0].max()), float(xy_in[:, 1].max())
    swapped = [n for n in ORIENTATIONS if ORIENTATIONS[n][0] and fits[n]]
    if swapped:
        scores = {n: measure(n) for n in swapped}
        order = sorted(swapped, key=lambda n: scores[n]["separation"], reverse=True)
        best = order[0]
        clear = len(order) == 1 or (
            scores[best]["separation"] > scores[order[1]]["separation"] + margin
        )
        if clear and scores[best]["contrast"] >= min_contrast:
            hint = (
                f"{ORIENTATIONS[best][1]} ({100 * scores[best]['tissue_share_in']:.0f}% of "
                "in-tissue spots land on tissue that way)"
            )
            fix = ORIENTATIONS[best][2]
        else:
            hint = "the coordinates look transposed (x and y swapped) or rotated by 90°"
            fix = (
                "swap the x/y (pixel column/row) columns of the coordinate file, or rotate "
                "the image by 90° so that it matches the coordinates"
            )
    else:
        hint = "the coordinates may be for the hires image or transposed"
        fix = (
            f"give the full-resolution image the coordinates refer to (they reach "
            f"x={ext_x:.0f}, y={ext_y:.0f}); not tissue_hires_image.png / "
            "tissue_lowres_image.png or another downscaled copy"
        )
    return GeometryError(
        f"{n_out} of {len(xy_in)} in-tissue spots lie outside the {w}x{h} image "
        f"'{img_name}'; {hint}",
        file=file,
        sample=sample,
        fix=fix,
    )


def _check_orientation(
    stats: Mapping[str, float],
    others: Mapping[str, Mapping[str, float]],
    img_name: str,
    margin: float,
    min_contrast: float,
    file: Any,
    sample: str | None,
) -> None:
    """Refuse the given orientation when another one puts clearly more spots on tissue."""
    best = max(others, key=lambda n: others[n]["separation"])
    alt = others[best]
    if not (alt["contrast"] >= min_contrast and alt["separation"] > stats["separation"] + margin):
        return
    numbers = (
        f"{100 * stats['tissue_share_in']:.0f}% of in-tissue spots lie on tissue as given "
        f"(tissue separation {stats['separation']:.2f}) but "
        f"{100 * alt['tissue_share_in']:.0f}% (separation {alt['separation']:.2f}) with "
        f"the coordinates placed as if it were so (image '{img_name}')"
    )
    if max(alt["separation"], stats["separation"]) < POOR_FIT_SEPARATION:
        # no orientation fits well: more likely another section's image than a flip
        raise GeometryError(
            f"the image fits the spot coordinates poorly in every orientation: it is "
            f"probably the image of another section (or {ORIENTATIONS[best][1]}): " + numbers,
            file=file,
            sample=sample,
            fix="give the image the coordinates were aligned to; if it is this "
            f"section's image, {ORIENTATIONS[best][2].split(' (or ')[0]}",
        )
    raise GeometryError(
        f"{ORIENTATIONS[best][1]}: " + numbers, file=file, sample=sample, fix=ORIENTATIONS[best][2]
    )


def check_bounds(
    image: SlideImage,
    xy_in_tissue: Any,
    xy_off_tissue: Any | None,
    spot_radius_px: float,
    sample: str | None = None,
    file: str | os.PathLike[str] | None = None,
    pitch_px: float | None = None,
    min_contrast: float = 0.02,
    margin: float = ORIENTATION_MARGIN,
) -> dict[str, float]:
    """Check that spot coordinates fit the image, land on tissue, and in the right orientation.

    Every in-tissue spot centre must lie inside the image, and in-tissue spots must be darker
    than the off-tissue reference: the off-tissue positions (Visium, ST selection tables) or,
    without them, background positions farther than one pitch from every spot (else the image
    border). Brightness is measured on a <= 1024 px thumbnail (Otsu threshold between glass and
    tissue). The same measure is taken for the 7 other placements of the coordinates in the
    image frame (:data:`ORIENTATIONS`: mirrored left-right / up-down, rotated 180°, and, where
    they fit the image, transposed, rotated 90° either way, anti-transposed). When one of them
    separates tissue from glass clearly better (``separation`` larger by more than ``margin``),
    the image is reported as mirrored / rotated / transposed, naming the fix.

    The reference positions are those within :data:`REFERENCE_BAND` (2) pitches of the nearest
    in-tissue spot: the glass just around the tissue, which moves with the orientation (glass far
    away is glass in every orientation and only dilutes the comparison).

    Calibration of ``margin`` (:data:`ORIENTATION_MARGIN` = 0.05), on 45 correctly oriented
    sections: the demo cohort generated with seeds 7 and 3 (full: 4 Visium + 14 ST each) and 7
    (small: 3 + 3), the xfuse and STUtility MOB fixtures and the scanpy Visium fixture (lowres
    image, coordinates scaled by ``tissue_lowres_scalef``). The given orientation always had the
    largest separation, ahead of the best other one by 0.07-0.49 (median 0.25; smallest on
    legacy ST sections without off-tissue positions), so none comes within 0.12 of being
    refused. Each of the 7 wrong orientations of each of those images (315 cases) was refused
    and named correctly. The check costs 0.05-0.45 s per section (one thumbnail). Tissue that
    looks the same mirrored (a centred disc) cannot be told apart and passes.

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
    margin
        Separation by which another orientation must win to be reported.

    Returns
    -------
    dict
        ``brightness_in``, ``brightness_off`` (medians, 0..1), ``contrast`` (off - in),
        ``tissue_share_in`` / ``tissue_share_off`` (share on tissue), ``separation`` (their
        difference), ``separation_<orientation>`` for the 7 others (NaN when it does not fit
        the image; ``separation_transposed`` is ``separation_transpose``), ``n_reference``,
        ``tissue_threshold``; ``contrast_wide`` (against every reference position, not only
        those near the tissue) when the near contrast is below ``min_contrast``.

    Raises
    ------
    GeometryError
        If spots lie outside the image, another orientation fits clearly better, or in-tissue
        spots are not darker than off-tissue ones.
    """
    xy_in = _xy(xy_in_tissue)
    xy_off = None if xy_off_tissue is None else _xy(xy_off_tissue)
    h, w = image.shape
    pitch = float(pitch_px) if pitch_px else 4.0 * float(spot_radius_px)
    img_name = str(image.path)

    def inside(xy: np.ndarray) -> np.ndarray:
        return (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)

    _check_spots_given(xy_in, file, sample)

    def placed(name: str, xy: np.ndarray | None) -> np.ndarray | None:
        if xy is None:
            return None
        out = orient_xy(xy, name, w, h)
        if name != "identity" and not ORIENTATIONS[name][0]:
            # a flip keeps the frame: x in [0, w) maps to (-1, w-1]; move (-1, 0) onto 0
            out[(out > -1) & (out < 0)] = 0.0
        return out

    id_fits = bool(inside(xy_in).all())
    fits = {
        name: bool(inside(orient_xy(xy_in, name, w, h)).all()) if ORIENTATIONS[name][0] else id_fits
        for name in ORIENTATIONS
    }
    xy_off_all = xy_off
    if xy_off is not None and len(xy_off) and id_fits:
        xy_off = _near_reference(xy_in, xy_off, pitch)
    state: dict[str, Any] = {}

    def measure(name: str, wide: bool = False) -> dict[str, float]:
        if "smooth" not in state:
            from scipy.ndimage import uniform_filter

            thumb, scale = image.thumbnail(1024)
            grey = thumb.astype(np.float32).mean(axis=2) / 255.0
            r = max(1, int(round(float(spot_radius_px) * scale * 0.8)))
            state["smooth"] = uniform_filter(grey, size=2 * r + 1, mode="nearest")
            state["threshold"] = _tissue_threshold(grey)
            state["scale"] = scale
        pin = placed(name, xy_in)
        off = placed(name, xy_off_all if wide else xy_off)
        if off is not None:
            off = off[inside(off)]
        band = np.inf if wide else REFERENCE_BAND
        return _brightness_stats(
            state["smooth"], state["threshold"], state["scale"], pin, off, pitch, band
        )

    if not fits["identity"]:
        raise _outside_error(
            xy_in, inside, fits, measure, (w, h), img_name, margin, min_contrast, file, sample
        )

    stats = measure("identity")
    stats["tissue_threshold"] = state["threshold"]
    others: dict[str, dict[str, float]] = {}
    for name in ORIENTATIONS:
        if name == "identity":
            continue
        if fits[name]:
            others[name] = measure(name)
        stats[f"separation_{name}"] = others[name]["separation"] if name in others else float("nan")
    stats["separation_transposed"] = stats["separation_transpose"]
    if others and len(xy_in) >= ORIENTATION_MIN_SPOTS:
        _check_orientation(stats, others, img_name, margin, min_contrast, file, sample)
    if stats["contrast"] < min_contrast:
        _check_contrast(stats, measure("identity", wide=True), img_name, min_contrast, file, sample)
    return stats
