"""A large synthetic whole-slide image written tile by tile (never held in memory).

:func:`write_big_slide` writes an RGB tiled, pyramidal, JPEG-compressed TIFF of any size (the
lazy-reading test and ``benchmarks/bench_tiling.py`` use 40,000 x 40,000 px): white glass and an
elliptical tissue region, decided per TIFF tile. A handful of tiles (a few tissue textures and
the glass) are JPEG-encoded once, by tifffile itself, and their bytes are written for every tile
of their kind, so writing costs I/O only and the file stays small. Every tissue pixel has a mean
RGB well below 220 and every glass pixel well above, so the background share of any window of
full resolution follows exactly from :func:`tissue_tiles` (:func:`background_pixels`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["write_big_slide", "tissue_tiles", "background_pixels"]

#: glass and tissue colours (mean RGB 245 and about 150)
_GLASS = (245, 245, 245)
_TISSUE = ((185, 105, 190), (150, 80, 170), (205, 130, 200), (120, 60, 150))


def tissue_tiles(shape: Sequence[int], tile: int, downsample: float = 1.0) -> np.ndarray:
    """Which TIFF tiles of a level are tissue: those whose centre is inside the ellipse.

    ``shape`` is full resolution's ``(height, width)``; the level has ``downsample`` times fewer
    pixels per side. Returns a bool ``(tile rows, tile cols)`` array.
    """
    h, w = float(shape[0]), float(shape[1])
    side = tile * downsample
    ny, nx = int(np.ceil(h / side)), int(np.ceil(w / side))
    cy = (np.arange(ny) + 0.5) * side
    cx = (np.arange(nx) + 0.5) * side
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    return ((xx - w / 2) / (0.4 * w)) ** 2 + ((yy - h / 2) / (0.35 * h)) ** 2 <= 1.0


def _encoded(kind: int, tile: int, quality: int, seed: int) -> bytes:
    """JPEG bytes of one tile as tifffile encodes it (kind -1 = glass, else a texture)."""
    import tifffile

    rng = np.random.default_rng([seed, kind + 1])
    colour = _GLASS if kind < 0 else _TISSUE[kind % len(_TISSUE)]
    arr = np.empty((tile, tile, 3), np.uint8)
    arr[:] = colour
    if kind >= 0:
        noise = rng.integers(-10, 11, size=(tile, tile, 1))
        arr[:] = np.clip(arr.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        arr,
        tile=(tile, tile),
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": quality},
    )
    with tifffile.TiffFile(io.BytesIO(buf.getvalue())) as tif:
        page = tif.pages[0]
        fh = tif.filehandle
        fh.seek(page.dataoffsets[0])
        return fh.read(page.databytecounts[0])


def _tiles(mask: np.ndarray, encoded: dict[int, bytes]) -> Iterator[bytes]:
    n = len(encoded) - 1
    for r in range(mask.shape[0]):
        for c in range(mask.shape[1]):
            yield encoded[(r * 7 + c * 3) % n] if mask[r, c] else encoded[-1]


def write_big_slide(
    path: str | os.PathLike[str],
    size: int | Sequence[int] = 40_000,
    mpp: float = 0.5,
    tile: int = 256,
    downsamples: Sequence[int] = (8, 64),
    quality: int = 80,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the slide (module notes) and return what it holds.

    Parameters
    ----------
    path
        The ``.tif`` to write (BigTIFF).
    size
        ``height`` = ``width``, or ``(height, width)``, of full resolution.
    mpp
        µm per pixel of full resolution (written in the resolution tags).
    tile
        TIFF tile side.
    downsamples
        Reduced levels (SubIFDs), each this many times smaller than full resolution.
    quality
        JPEG quality.
    seed
        Seed of the textures.

    Returns
    -------
    dict
        ``shape``, ``mpp``, ``tile``, ``tissue`` (:func:`tissue_tiles` of full resolution),
        ``bytes`` (file size).
    """
    import tifffile

    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    encoded = {k: _encoded(k, tile, quality, seed) for k in range(-1, len(_TISSUE))}
    common = {
        "photometric": "rgb",
        "compression": "jpeg",
        "tile": (tile, tile),
        "dtype": np.uint8,
        "resolutionunit": "CENTIMETER",
    }
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k, d in enumerate((1, *downsamples)):
            lh, lw = int(np.ceil(h / d)), int(np.ceil(w / d))
            ppcm = 1e4 / (mpp * d)
            mask = tissue_tiles((h, w), tile, d)
            extra = {"subifds": len(downsamples)} if k == 0 else {"subfiletype": 1}
            tw.write(
                _tiles(mask, encoded),
                shape=(lh, lw, 3),
                resolution=(ppcm, ppcm),
                **common,
                **extra,
            )
    return {
        "shape": (h, w),
        "mpp": float(mpp),
        "tile": int(tile),
        "tissue": tissue_tiles((h, w), tile),
        "bytes": os.path.getsize(path),
    }


def background_pixels(
    tissue: np.ndarray, tile: int, shape: Sequence[int], crop: int, pitch: int | None = None
) -> np.ndarray:
    """Background pixels of every window of a tile grid (:func:`stpredict.wsi.tiles.tile_grid`).

    Exact: the glass tiles' area inside each ``crop``-px window, from the overlaps of the window
    with the TIFF tiles (full resolution, clipped to the image). Returns ``(rows, cols)`` ints.
    """
    step = int(pitch or crop)
    h, w = int(shape[0]), int(shape[1])

    def overlap(n_cells: int, n_tiles: int, extent: int) -> np.ndarray:
        a = np.arange(n_cells)[:, None] * step
        t0 = np.arange(n_tiles)[None, :] * tile
        t1 = np.minimum(t0 + tile, extent)
        return np.clip(np.minimum(a + crop, t1) - np.maximum(a, t0), 0, None)

    oy = overlap(h // step, tissue.shape[0], h)
    ox = overlap(w // step, tissue.shape[1], w)
    return oy @ (~tissue).astype(np.int64) @ ox.T
