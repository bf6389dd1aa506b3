"""Whole-slide tiling: a grid of non-overlapping tiles, ST-Net's background rule, a patch store.

Grid (:func:`tile_grid`)
------------------------
Square tiles of ``crop`` pixels of the chosen level (:func:`stpredict.wsi.slides.choose_level`),
side by side from the level's top-left corner; only whole tiles inside the image (the right and
bottom remainders, less than a tile, are left out). Tile ``(row, col)`` covers level pixels
``[col * crop, (col + 1) * crop)`` x ``[row * crop, (row + 1) * crop)``. The tile side is the
model's field of view in µm (``wsi.tile_um: null``): each tile is exactly what the model sees,
``fov_um / level_mpp`` level pixels, resized to the model's ``size_px``. ST-Net cut 512 px at
20x (≈ 256 µm); our tiles follow the model instead, so a tile and a training spot patch cover
the same tissue area. Another ``tile_um`` sets the grid pitch; each tile is still cut at the
model's field of view around its centre (crops then overlap, or leave gaps).

Background (ST-Net's TCGA rule, :func:`background_fraction`)
------------------------------------------------------------
A pixel is background when the mean of its R, G and B is **at least** ``wsi.background.rgb``
(220); a tile is dropped when **more than** ``wsi.background.max_frac`` (50 %) of its pixels
are background. The paper writes "mean RGB lower than or equal to 220" for tissue... its intent
is close-to-white = glass, which the rule says; a value of exactly 220 is background. The
share is computed on the full-resolution crop of the chosen level, before resizing.

Store (:func:`tile_slide`)
--------------------------
The tiles go through :func:`stpredict.patches.store.extract_patches` -- the very extractor of
the spot patches -- into the same store format (``.npy`` uint8 ``(N, S, S, 3)``, ``.tsv``,
``.json``). Every grid tile is stored (row ``i`` = grid tile ``i``, row-major); the ``.tsv``
adds ``tile_row, tile_col, x_level, y_level, background_frac, keep`` and its ``x, y`` are the
tile's centre in **full-resolution** pixels (``(col + 0.5) * crop * downsample``); the
``.json`` adds a ``wsi`` record (slide, level, µm/px, tile geometry, the rule, counts).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stpredict.errors import GeometryError, InputError
from stpredict.io import read_json, write_json, write_table
from stpredict.patches.geometry import PatchSpec
from stpredict.wsi.slides import Level, LevelImage

__all__ = [
    "BACKGROUND_RULE",
    "background_fraction",
    "tile_grid",
    "tile_slide",
    "spot_patches",
    "kept_rows",
]

log = logging.getLogger(__name__)

#: bytes of full-resolution crops cut and resized per band
BAND_BYTES = 96 * 2**20

BACKGROUND_RULE = (
    "ST-Net's TCGA rule: a pixel is background when the mean of its R, G, B is >= rgb; a "
    "tile is dropped when more than max_frac of its pixels are background (full-resolution "
    "crop of the chosen level, before resizing)"
)


def background_fraction(crops: np.ndarray, rgb: float) -> np.ndarray:
    """Share of each crop's pixels whose mean RGB is at least ``rgb``.

    Parameters
    ----------
    crops
        ``(k, c, c, 3)`` uint8.
    rgb
        Threshold on the mean of R, G, B (0-255; ST-Net: 220). Compared exactly: the channel
        sum (an integer) against ``3 * rgb``.

    Returns
    -------
    numpy.ndarray
        ``(k,)`` float64 in [0, 1].
    """
    k = len(crops)
    if not k:
        return np.zeros(0)
    c = np.asarray(crops)
    sums = c[..., 0].astype(np.uint16)  # elementwise: faster than a reduction over 3 channels
    sums += c[..., 1]
    sums += c[..., 2]
    bg = (sums >= 3.0 * float(rgb)).reshape(k, -1)
    return bg.mean(axis=1, dtype=np.float64)


def tile_grid(shape: tuple[int, int], crop: int, pitch: int | None = None) -> pd.DataFrame:
    """Non-overlapping tiles of an image ``(height, width)`` (module notes).

    Parameters
    ----------
    shape
        The level's ``(height, width)``.
    crop
        Tile side in the level's pixels (the crop the model sees).
    pitch
        Grid step in the level's pixels (default ``crop``: tiles side by side). The grid is
        made of ``pitch``-px cells, whole cells inside the image only; each cell's crop of
        ``crop`` px is centred on it.

    Returns
    -------
    pandas.DataFrame
        One row per tile, row-major: ``tile_row, tile_col``, ``x0, y0`` (top-left corner of
        the cell), ``cx, cy`` (integer centre for the extractor, ``x0 + pitch // 2``: with
        ``pitch == crop`` the crop window starts at ``x0`` exactly), ``x, y`` (geometric
        centre of the cell, level px).
    """
    crop = int(crop)
    step = int(pitch or crop)
    if crop < 1 or step < 1:
        raise GeometryError(f"tile side {crop} px and pitch {step} px must be positive")
    h, w = int(shape[0]), int(shape[1])
    rows, cols = np.meshgrid(np.arange(h // step), np.arange(w // step), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    x0, y0 = cols * step, rows * step
    return pd.DataFrame(
        {
            "tile_row": rows,
            "tile_col": cols,
            "x0": x0,
            "y0": y0,
            "cx": x0 + step // 2,
            "cy": y0 + step // 2,
            "x": x0 + step / 2.0,
            "y": y0 + step / 2.0,
        }
    )


def _store_paths(prefix: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    p = Path(prefix)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p.with_suffix(".npy"), p.with_suffix(".tsv"), p.with_suffix(".json")


def _extract(
    level_image: LevelImage,
    xy_level: np.ndarray,
    spec: PatchSpec,
    prefix: str | os.PathLike[str],
    ids: list[str],
    rgb: float,
    extra: pd.DataFrame,
    progress: bool,
    row_len: int = 1,
) -> pd.DataFrame:
    """Cut the crops at ``xy_level`` through the spot extractor, with the background share.

    Bands of whole rows of ``row_len`` tiles, about :data:`BAND_BYTES` of crops each (memory
    stays bounded whatever the slide's size; a TIFF tile row is decoded by few bands).
    """
    from stpredict.patches.store import extract_patches

    npy, tsv, js = _store_paths(prefix)
    crop = spec.crop_px(level_image.level.mpp)
    row_len = max(1, int(row_len))
    rows = max(1, BAND_BYTES // (row_len * 3 * crop * crop))
    if row_len > 1:  # a tile grid: bands of whole rows, `rows` tall
        batch, band_px = rows * row_len, (rows + 1) * crop
    else:  # spots: the extractor's bands, at most 4,096 crops
        batch, band_px = min(rows, 4096), max(1024, 2 * crop)
    return extract_patches(
        level_image,
        xy_level,
        spec,
        level_image.level.mpp,
        npy,
        tsv,
        js,
        ids=ids,
        batch=batch,
        band_px=band_px,
        progress=progress,
        extra=extra,
        crop_stats={"background_frac": lambda c: background_fraction(c, rgb)},
    )


def _finish_store(
    prefix: str | os.PathLike[str],
    table: pd.DataFrame,
    level: Level,
    record: Mapping[str, Any],
) -> pd.DataFrame:
    """Full-resolution centres in ``x, y`` and the ``wsi`` record in the ``.json``."""
    _, tsv, js = _store_paths(prefix)
    d = float(level.downsample)
    table = table.copy()
    table["x_level"], table["y_level"] = table["x"].to_numpy(), table["y"].to_numpy()
    table["x"] = table["x_level"] * d
    table["y"] = table["y_level"] * d
    write_table(table, tsv)
    meta = read_json(js)
    meta["wsi"] = {**dict(record), "level": level.to_dict()}
    meta["created_by"] = "stpredict.wsi.tiles"
    write_json(meta, js)
    return table


def tile_slide(
    image: Any,
    level: Level,
    spec: PatchSpec,
    prefix: str | os.PathLike[str],
    rgb: float,
    max_frac: float,
    tile_um: float | None = None,
    slide: str | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Cut a slide into tiles at ``level`` and write the tile store ``prefix.{npy,tsv,json}``.

    Parameters
    ----------
    image
        The opened :class:`~stpredict.ingest.images.SlideImage`.
    level
        The level to read (:func:`stpredict.wsi.slides.choose_level`).
    spec
        The model's patch geometry, its field of view in µm (``fov_um``) and ``size_px``.
    prefix
        Store path without suffix (e.g. ``results/wsi/W1/tiles``).
    rgb, max_frac
        The background rule (``wsi.background``; module notes).
    tile_um
        Grid pitch in µm; ``None`` = the field of view (non-overlapping tiles).
    slide
        Slide id (ids ``{slide}:{row}_{col}`` and messages).
    progress
        Show a progress bar.

    Returns
    -------
    pandas.DataFrame
        The store's table (module notes); ``keep`` marks the tiles that are not background.

    Raises
    ------
    InputError
        When the slide is smaller than one tile, or no tile passes the background rule.
    """
    crop = spec.crop_px(level.mpp)
    pitch = crop if tile_um is None else max(1, int(round(float(tile_um) / level.mpp)))
    grid = tile_grid(level.shape, crop, pitch)
    name = slide or image.sample or Path(image.path).stem
    if grid.empty:
        raise InputError(
            f"the image ({level.shape[1]} x {level.shape[0]} px at {level.mpp:.3g} µm/px) is "
            f"smaller than one tile ({crop} px, {crop * level.mpp:.0f} µm)",
            file=image.path,
            sample=name,
            fix="check the slide's mpp, or predict given spots instead of tiles",
        )
    ids = [f"{name}:{r}_{c}" for r, c in zip(grid["tile_row"], grid["tile_col"], strict=True)]
    table = _extract(
        LevelImage(image, level),
        grid[["cx", "cy"]].to_numpy(dtype=float),
        spec,
        prefix,
        ids,
        rgb,
        grid[["tile_row", "tile_col"]],
        progress,
        row_len=int(grid["tile_col"].max()) + 1,
    )
    table["x"], table["y"] = grid["x"].to_numpy(), grid["y"].to_numpy()  # geometric centres
    table["keep"] = table["background_frac"].to_numpy() <= float(max_frac)
    n_keep = int(table["keep"].sum())
    record = {
        "slide_id": name,
        "kind": "tiles",
        "tile_um": float(pitch * level.mpp),
        "tile_px_level": int(pitch),
        "crop_px_level": int(crop),
        "tile_px_fullres": float(pitch * level.downsample),
        "background": {"rgb": float(rgb), "max_frac": float(max_frac), "rule": BACKGROUND_RULE},
        "n_tiles": len(table),
        "n_kept": n_keep,
        "n_background": len(table) - n_keep,
    }
    table = _finish_store(prefix, table, level, record)
    log.info(
        "%s: %d tiles of %d level-%d px (%.0f µm), %d kept, %d background",
        name,
        len(table),
        crop,
        level.index,
        crop * level.mpp,
        n_keep,
        len(table) - n_keep,
    )
    if not n_keep:
        raise InputError(
            f"no tissue tile: all {len(table)} tiles have more than {max_frac:.0%} background "
            f"pixels (mean RGB >= {rgb:g})",
            file=image.path,
            sample=name,
            fix="check that the image is an H&E slide with tissue (not a blank or label "
            "image), or relax wsi.background (rgb, max_frac)",
        )
    return table


def spot_patches(
    image: Any,
    level: Level,
    spec: PatchSpec,
    prefix: str | os.PathLike[str],
    xy: np.ndarray,
    ids: list[str],
    rgb: float,
    slide: str | None = None,
) -> pd.DataFrame:
    """Patches of given centres (full-resolution px) at ``level``, in the tile store's format.

    Every centre is kept (``keep`` true); a centre whose crop lies wholly outside the image is
    refused (coordinates of another image or scale).
    """
    xy = np.asarray(xy, dtype=float)
    name = slide or image.sample or Path(image.path).stem
    table = _extract(
        LevelImage(image, level),
        xy / float(level.downsample),
        spec,
        prefix,
        ids,
        rgb,
        pd.DataFrame(index=range(len(xy))),
        False,
    )
    outside = table["pad_frac"].to_numpy() >= 1.0
    if outside.any():
        first = table.loc[outside, "id"].iloc[0]
        raise GeometryError(
            f"{int(outside.sum())} of {len(table)} spots lie wholly outside the image (first: "
            f"'{first}')",
            file=image.path,
            sample=name,
            fix="give x, y in full-resolution pixels of this image (not hires / lowres px)",
        )
    table["keep"] = True
    record = {
        "slide_id": name,
        "kind": "spots",
        "crop_px_level": int(spec.crop_px(level.mpp)),
        "background": {"rgb": float(rgb), "rule": BACKGROUND_RULE},
        "n_spots": len(table),
    }
    return _finish_store(prefix, table, level, record)


def kept_rows(table: pd.DataFrame) -> np.ndarray:
    """Rows of a tile store to predict (``keep``)."""
    return np.flatnonzero(table["keep"].astype(str).str.lower().isin(["true", "1"]).to_numpy())
