"""Whole-slide tiles for the unlabelled pool of the teacher/student rounds (source ``wsi``).

The ``wsi`` source of ``semi_supervised.pool`` (:mod:`stpredict.learn.pool`) draws tiles of
whole-slide images. Each slide is tiled **at the round experiment's own geometry**: the field of
view in µm and the patch side of the experiment's spot stores (:func:`stpredict.wsi.card.
store_geometry`, what a model card of the experiment records), read from the pyramid level the
experiment's models need (:func:`stpredict.wsi.slides.choose_level`), through the spot extractor
(:func:`stpredict.wsi.tiles.tile_slide`). ST-Net's background rule (``wsi.background``) marks
glass tiles ``keep`` false; only kept tiles are pool candidates.

The tiles of ``results/wsi/{slide}/tiles.npy`` are *not* reused: they are cut for
``wsi.experiment`` by the job that predicts them, so the rounds would wait for (and rerun with)
another experiment's training. One store per slide and experiment:
``results/experiments/{experiment}/pool/wsi/{slide}.npy|.tsv|.json`` (rule ``tile_pool_slide``),
so a cluster cuts the slides side by side and a failed slide reruns alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from stpredict.io import read_json, write_json
from stpredict.patches.geometry import PatchSpec
from stpredict.wsi.card import store_geometry
from stpredict.wsi.slides import choose_level, resolve_mpp, slide_levels
from stpredict.wsi.tiles import tile_slide

__all__ = ["pool_spec", "tile_pool_slide"]

log = logging.getLogger(__name__)


def pool_spec(stores: Mapping[str, str | os.PathLike[str]]) -> tuple[PatchSpec, float]:
    """Return the experiment's patch geometry as a field of view in µm, and its patch µm/px.

    Parameters
    ----------
    stores
        ``{sample: spots.json}`` of the experiment's spot stores.

    Returns
    -------
    spec : PatchSpec
        ``fov_um`` (a pixel field of view is converted with the sections' median µm/px, as the
        model card does), ``size_px``, ``pad_value``.
    patch_mpp : float
        ``fov_um / size_px``: µm per pixel of what the experiment's models see.
    """
    geom = store_geometry(stores)
    spec = PatchSpec(
        fov_um=float(geom["fov_um"]),
        size_px=int(geom["patches"]["size_px"]),
        pad_value=int(geom["patches"].get("pad_value") or 255),
    )
    return spec, float(geom["patch_mpp"])


def tile_pool_slide(
    image: str | os.PathLike[str],
    mpp: float | str | None,
    slide: str,
    stores: Mapping[str, str | os.PathLike[str]],
    prefix: str | os.PathLike[str],
    rgb: float,
    max_frac: float,
    tolerance: float,
    experiment: str | None = None,
) -> pd.DataFrame:
    """Tile one slide at the experiment's geometry into the pool store ``prefix.{npy,tsv,json}``.

    Parameters
    ----------
    image
        The slide (pyramidal TIFF read lazily, or a plain image).
    mpp
        Its full-resolution µm/px (the slide table's; empty / ``None`` = the TIFF tags).
    slide
        Slide id: tile ids are ``{slide}:{row}_{col}``.
    stores
        ``{sample: spots.json}`` of the experiment's spot stores (:func:`pool_spec`).
    prefix
        Store path without suffix.
    rgb, max_frac
        ST-Net's background rule (``wsi.background``).
    tolerance
        ``reading.mpp_tolerance``.
    experiment
        Recorded in the store's ``.json`` (``pool`` record).

    Returns
    -------
    pandas.DataFrame
        The store's table (:mod:`stpredict.wsi.tiles`); ``keep`` false for background tiles.
    """
    from stpredict.ingest.images import open_image

    spec, patch_mpp = pool_spec(stores)
    with open_image(image, sample=slide) as img:
        value, source = resolve_mpp(img, mpp, tolerance, slide)
        level = choose_level(slide_levels(img, value), patch_mpp, tolerance, img.path, slide)
        table = tile_slide(img, level, spec, prefix, rgb=rgb, max_frac=max_frac, slide=slide)
    js = Path(prefix).with_suffix(".json")
    meta = read_json(js)
    meta["pool"] = {
        "experiment": experiment,
        "slide_id": slide,
        "mpp": value,
        "mpp_source": source,
        "patch_mpp": patch_mpp,
        "geometry_from": sorted(str(p) for p in stores.values()),
    }
    write_json(meta, js)
    log.info(
        "%s: %d of %d tiles kept for the pool (level %d, %.3g µm/px)",
        slide,
        int(table["keep"].sum()),
        len(table),
        level.index,
        level.mpp,
    )
    return table
