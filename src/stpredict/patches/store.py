"""Patch stores: image patches around centres, one contiguous uint8 array per section.

The crop geometry (centre rounding, padding, resizing) is :mod:`stpredict.patches.geometry`; one
extractor, :func:`extract_patches`, serves every kind of centres.

Reading
-------
Centres are processed sorted by row, in horizontal bands: one region per group of centres is
read from the image (``SlideImage.read_region``; a TIFF is read by region through zarr and never
decoded whole) and every crop of the group is cut from it. Rows are written in the original
order of the centres.

Store (see docs/DESIGN.md)
--------------------------
``.npy`` C-contiguous ``(N, S, S, 3)`` uint8 (memory-mappable), ``.tsv`` with
``id, x, y, pad_frac, white_frac, mean_r, mean_g, mean_b, mean_rgb, white`` (row i = patch i) and
``.json`` with the geometry and the whiteness threshold.

Whiteness (DeepSpaCE's rule, ``CropImage.py``)
----------------------------------------------
Computed on the full-resolution crops, before any resizing: ``mean_rgb`` is the mean of a crop
over all its pixels and the three channels; the section's threshold is the ``percentile``-th
percentile of ``mean_rgb`` over the section's crops (one scalar); a pixel is white when all three
channels exceed it, and a crop is flagged ``white`` when more than ``max_white_frac`` of its
pixels are white. (``mean_r, mean_g, mean_b`` are the channel means of the *stored* patch, used
as trivial predictors by the OLS table.)
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from stpredict.errors import GeometryError
from stpredict.ingest.images import SlideImage
from stpredict.io import atomic_path, load_npy, read_table, write_json, write_table
from stpredict.patches.geometry import (
    TORCH_RESIZE_MIN_PIXELS,
    PatchSpec,
    _pad_fraction,
    crop_windows,
    resize_batch,
)

__all__ = [
    "extract_patches",
    "load_patches",
    "patch_means",
    "whiteness",
    "whiteness_from_histograms",
    "crop_statistics",
    "patches_for_spots",
]

log = logging.getLogger(__name__)

PATCH_COLUMNS = [
    "id",
    "x",
    "y",
    "pad_frac",
    "white_frac",
    "mean_r",
    "mean_g",
    "mean_b",
    "mean_rgb",
    "white",
]


def _bands(
    y0: np.ndarray, order: np.ndarray, crop: int, band_px: int, batch: int
) -> list[np.ndarray]:
    """Split centres (``order`` = indices sorted by ``y0``) into groups spanning few rows."""
    groups: list[np.ndarray] = []
    span = max(band_px, crop)
    start = 0
    n = len(order)
    while start < n:
        top = y0[order[start]]
        stop = start + 1
        while stop < n and stop - start < batch and y0[order[stop]] + crop - top <= span:
            stop += 1
        groups.append(order[start:stop])
        start = stop
    return groups


def _release(store: np.memmap) -> None:
    """Write the store's pages to its file and drop them from this process's memory.

    A store of whole-slide tiles at 224 px is gigabytes: without this its written pages stay
    mapped and count in the job's resident memory (peak RSS = the store's size). The data stay
    in the file (and the page cache, reclaimable).
    """
    store.flush()
    mm = getattr(store, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


def _channel_means(block: np.ndarray) -> np.ndarray:
    """Channel means of ``(k, S, S, 3)`` uint8 patches (exact integer sums, then divide)."""
    k, h, w = block.shape[:3]
    # sum whole rows first (contiguous, vectorised), then the columns of each channel
    sums = block.reshape(k, h, w * 3).sum(axis=1, dtype=np.uint32).reshape(k, w, 3).sum(axis=1)
    return sums / float(h * w)


def patch_means(patches: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Per-patch mean of each channel, ``(N, 3)`` float64, computed in chunks."""
    n = len(patches)
    out = np.empty((n, 3), dtype=np.float64)
    for a in range(0, n, chunk):
        out[a : a + chunk] = _channel_means(np.asarray(patches[a : a + chunk]))
    return out


def whiteness(
    crops: np.ndarray,
    percentile: float = 80.0,
    max_white_frac: float = 0.5,
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray, float]:
    """DeepSpaCE's whiteness filter on an array of one section's full-resolution crops.

    ``(N, c, c, 3)`` uint8 crops (an array or memmap, read ``chunk`` at a time); see
    :func:`crop_statistics` and :func:`whiteness_from_histograms` for the rule and the returns
    ``(white_frac, white_flag, threshold)``.
    """
    n = len(crops)
    mean_rgb = np.empty(n, dtype=np.float64)
    min_hist = np.zeros((n, 256), dtype=np.int64)
    for a in range(0, n, chunk):
        mean_rgb[a : a + chunk], min_hist[a : a + chunk] = crop_statistics(
            np.asarray(crops[a : a + chunk])
        )
    return whiteness_from_histograms(mean_rgb, min_hist, percentile, max_white_frac)


def crop_statistics(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over pixels and channels, and the histogram of each pixel's smallest channel.

    Parameters
    ----------
    crops
        ``(k, c, c, 3)`` uint8 full-resolution crops.

    Returns
    -------
    mean_rgb : numpy.ndarray
        ``(k,)`` float64 mean of every crop over all its pixels and the 3 channels (0-255).
    min_hist : numpy.ndarray
        ``(k, 256)`` int64: ``min_hist[i, v]`` = pixels of crop ``i`` whose smallest channel is
        ``v``. A pixel exceeds a threshold ``t`` in all three channels exactly when its smallest
        channel does, so the white share for any ``t`` follows from the histogram
        (:func:`whiteness_from_histograms`), in one pass over the crops.
    """
    k = len(crops)
    if not k:
        return np.zeros(0), np.zeros((0, 256), dtype=np.int64)
    crops = np.asarray(crops)
    flat = crops.reshape(k, -1)  # contiguous reductions: an order faster than over axis 3
    mean_rgb = flat.sum(axis=1, dtype=np.uint64) / float(flat.shape[1])
    mins = np.minimum(np.minimum(crops[..., 0], crops[..., 1]), crops[..., 2]).reshape(k, -1)
    hist = np.empty((k, 256), dtype=np.int64)
    for i in range(k):  # uint8 per crop: no int64 copy of every pixel
        hist[i] = np.bincount(mins[i], minlength=256)
    return np.asarray(mean_rgb, dtype=np.float64), hist


def whiteness_from_histograms(
    mean_rgb: np.ndarray,
    min_hist: np.ndarray,
    percentile: float = 80.0,
    max_white_frac: float = 0.5,
    threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """DeepSpaCE's whiteness filter from :func:`crop_statistics` of a section's crops.

    Parameters
    ----------
    mean_rgb, min_hist
        Per-crop mean RGB and smallest-channel histograms.
    percentile
        The threshold is this percentile of ``mean_rgb`` over the section (DeepSpaCE: 80).
    max_white_frac
        A crop is white when strictly more than this share of its pixels is white (0.5).
    threshold
        A threshold fixed beforehand instead of the percentile of these crops: the section's
        threshold of its spot patches, for super-resolution centres (whose crops straddle
        spots and glass, so their own percentile would be another threshold).

    Returns
    -------
    white_frac : numpy.ndarray
        ``(N,)`` share of pixels whose three channels all exceed the threshold (strictly).
    white_flag : numpy.ndarray
        ``(N,)`` bool, ``white_frac > max_white_frac``.
    threshold : float
        The scalar threshold (NaN without crops).
    """
    n = len(mean_rgb)
    if n == 0:
        return np.zeros(0), np.zeros(0, dtype=bool), float("nan")
    if threshold is None:
        threshold = float(np.percentile(mean_rgb, percentile))
    threshold = float(threshold)
    # uint8 pixels: v > t  <=>  v > floor(t). The cut is capped at 254 so that pure white (255,
    # bare glass) always counts as white: otherwise a blank image (threshold 255) would pass.
    cut = int(np.clip(np.floor(threshold), 0, 254))
    white = min_hist[:, cut + 1 :].sum(axis=1)
    white_frac = white / np.maximum(min_hist.sum(axis=1), 1)
    return white_frac.astype(np.float64), white_frac > max_white_frac, threshold


def extract_patches(
    image: SlideImage,
    xy: np.ndarray,
    spec: PatchSpec,
    mpp: float | None,
    out_npy: str | os.PathLike[str],
    out_tsv: str | os.PathLike[str],
    out_json: str | os.PathLike[str],
    ids: list[str] | np.ndarray | pd.Index | None = None,
    batch: int = 256,
    band_px: int = 1024,
    percentile: float = 80.0,
    max_white_frac: float = 0.5,
    progress: bool = True,
    threshold: float | None = None,
    extra: pd.DataFrame | None = None,
    crop_stats: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
) -> pd.DataFrame:
    """Cut one patch per centre and write the section's patch store.

    Parameters
    ----------
    image
        The full-resolution image the coordinates refer to.
    xy
        ``(N, 2)`` centres in full-resolution pixels, ``[x, y]`` = ``[column, row]``.
    spec
        Field of view and stored size.
    mpp
        Microns per pixel of ``image`` (needed when ``spec.fov_um`` is set; recorded otherwise).
    out_npy, out_tsv, out_json
        Output paths; each is written to a temporary path and renamed when complete.
    ids
        One id per centre (spot barcodes); defaults to ``"0", "1", ...``.
    batch
        Maximum number of crops cut from one band and resized together.
    band_px
        Maximum height in pixels of one band read from the image.
    percentile, max_white_frac
        Parameters of :func:`whiteness_from_histograms` (DeepSpaCE's rule, on the
        full-resolution crops; see the module notes).
    progress
        Show a tqdm progress bar.
    threshold
        Whiteness threshold fixed beforehand (the section's spot-patch threshold, for
        super-resolution centres); ``None`` computes it from these crops with ``percentile``.
    extra
        Further per-centre columns (``len(xy)`` rows, e.g. the array position of grid
        centres), written after :data:`PATCH_COLUMNS`.
    crop_stats
        Further per-crop statistics computed on the full-resolution crops before resizing:
        column name -> function of a ``(k, c, c, 3)`` uint8 batch returning ``(k,)`` values
        (e.g. the background share of whole-slide tiles, :mod:`stpredict.wsi.tiles`); written
        after :data:`PATCH_COLUMNS`, before ``extra``.

    Returns
    -------
    pandas.DataFrame
        The table written to ``out_tsv``.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise GeometryError(
            f"centres must be an (n, 2) array of [x, y], got shape {xy.shape}",
            file=image.path,
            sample=image.sample,
        )
    if not np.isfinite(xy).all():
        raise GeometryError(
            "centres contain NaN or infinite coordinates",
            file=image.path,
            sample=image.sample,
            fix="check the spot coordinates of the section",
        )
    n = len(xy)
    ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(ids) != n:
        raise GeometryError(f"{len(ids)} ids for {n} centres", sample=image.sample)
    crop = spec.crop_px(mpp)
    size = int(spec.size_px)
    x0, y0 = crop_windows(xy, crop)
    pad_frac = _pad_fraction(x0, y0, crop, image.shape)
    n_out = int((pad_frac >= 1.0).sum())
    if n_out:
        log.warning(
            "%s: %d of %d crops lie entirely outside the image %s",
            image.sample,
            n_out,
            n,
            image.path,
        )
    order = np.argsort(y0, kind="stable")
    groups = _bands(y0, order, crop, band_px, batch)
    backend = "torch" if n * crop * crop >= TORCH_RESIZE_MIN_PIXELS else "pil"
    log.info(
        "%s: %d patches, crop %d px -> %d px, %d bands", image.sample, n, crop, size, len(groups)
    )

    means = np.empty((n, 3), dtype=np.float64)
    mean_rgb = np.empty(n, dtype=np.float64)
    min_hist = np.zeros((n, 256), dtype=np.int64)
    stats = {name: np.empty(n, dtype=np.float64) for name in crop_stats or {}}
    with atomic_path(out_npy) as tmp_npy:
        store = np.lib.format.open_memmap(
            tmp_npy, mode="w+", dtype=np.uint8, shape=(n, size, size, 3)
        )
        with tqdm(
            total=n,
            desc=f"patches {image.sample or image.path.name}",
            unit="patch",
            disable=not progress,
            leave=False,
        ) as bar:
            for grp in groups:
                bx0 = int(x0[grp].min())
                by0 = int(y0[grp].min())
                bw = int(x0[grp].max()) + crop - bx0
                bh = int(y0[grp].max()) + crop - by0
                region = image.read_region(bx0, by0, bw, bh, fill=int(spec.pad_value))
                crops = np.empty((len(grp), crop, crop, 3), dtype=np.uint8)
                for k, i in enumerate(grp):
                    ox, oy = int(x0[i]) - bx0, int(y0[i]) - by0
                    crops[k] = region[oy : oy + crop, ox : ox + crop]
                mean_rgb[grp], min_hist[grp] = crop_statistics(crops)
                for name, fn in (crop_stats or {}).items():
                    stats[name][grp] = fn(crops)
                out = resize_batch(crops, size, backend)
                store[np.sort(grp)] = out[np.argsort(grp)]
                means[grp] = _channel_means(out)
                _release(store)
                bar.update(len(grp))
        store.flush()
        del store
    fixed = threshold is not None
    white_frac, white_flag, threshold = whiteness_from_histograms(
        mean_rgb, min_hist, percentile, max_white_frac, threshold=threshold
    )
    table = pd.DataFrame(
        {
            "id": ids,
            "x": xy[:, 0],
            "y": xy[:, 1],
            "pad_frac": pad_frac,
            "white_frac": white_frac,
            "mean_r": means[:, 0],
            "mean_g": means[:, 1],
            "mean_b": means[:, 2],
            "mean_rgb": mean_rgb,
            "white": white_flag,
            **stats,
        }
    )
    if extra is not None:
        if len(extra) != n:
            raise GeometryError(f"{len(extra)} rows of extra columns for {n} centres")
        extra = extra.drop(columns=[c for c in extra.columns if c in PATCH_COLUMNS])
        table = pd.concat([table, extra.reset_index(drop=True)], axis=1)
    write_table(table, out_tsv)
    meta = {
        "fov_um": spec.fov_um if spec.fov_um is not None else (crop * mpp if mpp else None),
        "fov_px": crop,
        "size_px": size,
        "pad_value": int(spec.pad_value),
        "mpp": mpp,
        "image": str(image.path),
        "image_shape": list(image.shape),
        "spec": spec.to_dict(),
        "n": n,
        "n_white": int(white_flag.sum()),
        "whiteness": {
            "rule": "DeepSpaCE: full-resolution crops; threshold = percentile of the per-crop "
            "mean RGB; white pixel = all channels > threshold",
            "percentile": float(percentile),
            "threshold_source": "given (the section's spot patches)" if fixed else "percentile",
            "max_white_frac": float(max_white_frac),
            # null when there are no crops (strict JSON has no NaN)
            "threshold": threshold if np.isfinite(threshold) else None,
        },
        "created_by": "stpredict.patches.store.extract_patches",
    }
    write_json(meta, out_json)
    log.info("%s: wrote %s (%d patches, %d white)", image.sample, out_npy, n, int(white_flag.sum()))
    return table


def load_patches(npy: str | os.PathLike[str]) -> np.memmap:
    """Open a patch store read-only as a memory map ``(N, S, S, 3)`` uint8."""
    arr = load_npy(npy)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise GeometryError(
            f"not a patch store: dtype {arr.dtype}, shape {arr.shape}",
            file=npy,
            fix="re-run the patch extraction rule",
        )
    return arr


def patches_for_spots(npy: str | os.PathLike[str], spot_ids: list[str] | np.ndarray) -> np.ndarray:
    """Return the stored patches of the given spot ids, in their order (the ``.tsv`` read once)."""
    tsv = Path(npy).with_suffix(".tsv")
    ids = read_table(tsv, usecols=["id"], dtype=str)["id"]
    rows = pd.Index(ids).get_indexer([str(i) for i in spot_ids])
    if (rows < 0).any():
        missing = [str(i) for i, r in zip(spot_ids, rows, strict=True) if r < 0][:5]
        raise GeometryError(
            f"spots {missing} are not in the patch store",
            file=tsv,
            fix="rerun extract_patches for this section",
        )
    return np.asarray(load_npy(npy)[rows])
