"""The unlabelled pool of the teacher/student rounds: its sources, the draw, and its audits.

DeepSpaCE's semi-supervised rounds (:mod:`stpredict.learn.rounds`) pseudo-label patches that carry
no measurement. This module says where they come from and guarantees that they never include a
spot the fold validates or tests on.

Sources (``semi_supervised.pool``, a list; :data:`POOL_SOURCES`)
-----------------------------------------------------------------
``sections``
    The kept spots (QC ``keep``) of named sections that are *not* part of the experiment, from
    their patch stores ``results/patches/{sample}/spots.npy`` (DeepSpaCE: sections A–C).
``images``
    Tiles of unlabelled H&E images listed in a table (``image_id, image, mpp``; the demo writes
    ``results/demo/unlabeled/images.tsv``), cut on a non-overlapping grid at the experiment's field
    of view through the one extractor :func:`stpredict.patches.store.extract_patches`
    (:func:`tile_images`); white tiles (the whiteness rule, per image) and tiles reaching outside
    the image are left out.
``unlabelled_spots``
    The experiment's own spots that the fold does not label: role ``unlabelled`` of the split
    manifest, made by ``split.labelled_frac`` < 1 (:func:`mask_labels`; a scarce-label setting).
``interspot``
    Crops centred between spots (DeepSpaCE's inter-spot patches): the super-resolution centres
    of ``patches/centres.py`` — ``grid: auto`` (triangle centroids on Visium, 2x2-block centres
    on ST), ``triangles`` or ``squares`` — of the named sections (default: the experiment's own),
    from their grid stores ``results/patches/{sample}/{grid}.npy`` (rule ``extract_grid``, the
    section's whiteness threshold). A centre whose crop overlaps the crop of a ``val`` or ``test``
    spot of the fold is left out (:func:`interspot_overlap`): its pixels are held-out pixels.
``wsi``
    Tiles of whole-slide images: the slides of a slide table (``table``; default ``wsi.slides``,
    columns ``slide_id, image, mpp``), all of them or those named in ``slides``. Each slide is
    tiled at the round experiment's own geometry (its stores' field of view in µm and patch
    side, the pyramid level its models need) by :func:`stpredict.wsi.pool.tile_pool_slide`
    (rule ``tile_pool_slide`` -> ``results/experiments/{experiment}/pool/wsi/{slide}/tiles.npy``);
    tiles that ST-Net's background rule (``wsi.background``) drops are never candidates.

A new source is one entry of :data:`POOL_SOURCES` plus a ``_candidates_<source>`` function here.
Every job of a round writes the pool's size beside its pseudo-labels (``pool.tsv``:
:func:`pool_counts`): candidates per source after the overlap rule, those the rule left out,
and those drawn.

The irrelevant control replaces the pool by tiles of ``semi_supervised.irrelevant`` (an images
table of non-tissue pictures; the demo writes ``results/demo/irrelevant/images.tsv``).

Leakage rules (each tested)
---------------------------
* the pool never holds a spot of the fold's ``val`` or ``test`` role (:func:`audit_pool`, run when
  the pool is drawn and again when a student trains);
* ``sections`` may not name a section of the experiment (its val/test spots would enter);
* an ``interspot`` crop never overlaps the crop of a ``val`` or ``test`` spot of the fold
  (checked when drawn and again when a student trains);
* every patch of the pool is unlabelled: only its image is used, with the teacher's label.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from stpredict.errors import ConfigError, InputError, LeakageError
from stpredict.io import atomic_path, read_h5ad, read_json, read_table, write_json, write_table
from stpredict.patches.centres import resolve_grid

__all__ = [
    "POOL_SOURCES",
    "RESERVED_SOURCES",
    "CONTROLS",
    "POOL_COLUMNS",
    "POOL_COUNT_COLUMNS",
    "TILE_SOURCES",
    "mask_labels",
    "check_semi_supervised",
    "other_sections",
    "resolve_pool",
    "images_of_tables",
    "check_stores",
    "pool_sections",
    "pool_tables",
    "interspot_grids",
    "interspot_overlap",
    "read_images_table",
    "tile_images",
    "pool_candidates",
    "pool_candidates_counted",
    "pool_counts",
    "pool_slides",
    "select_slides",
    "draw_pool",
    "audit_pool",
]

log = logging.getLogger(__name__)

#: implemented pool sources
POOL_SOURCES = ("sections", "images", "unlabelled_spots", "interspot", "wsi")
#: sources the schema accepts but that are not implemented yet (documented hooks; none now)
RESERVED_SOURCES: dict[str, str] = {}
#: sources whose patches are tiles or crops, not measured spots (the spot audit skips them)
TILE_SOURCES = ("images", "irrelevant", "interspot", "wsi")
#: columns of a round job's pool summary (``pool.tsv``)
POOL_COUNT_COLUMNS = ["source", "candidates", "left_out", "drawn"]
#: grids of an ``interspot`` source (patches/centres.py): auto = triangles on Visium, squares on ST
INTERSPOT_GRIDS = ("auto", "triangles", "squares")
#: ``semi_supervised.control`` values
CONTROLS = ("none", "permuted", "random", "irrelevant")
#: columns of a drawn pool (``pseudo.tsv`` adds one column per gene)
POOL_COLUMNS = ["source", "origin", "id", "store", "row"]
#: columns of an images table
IMAGE_COLUMNS = ("image_id", "image", "mpp")


def _seed(*parts: Any) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode()) % (2**31)


# ------------------------------------------------------------------------------ labelled share
def mask_labels(manifest: pd.DataFrame, labelled_frac: float, seed: int) -> pd.DataFrame:
    """Keep the labels of ``labelled_frac`` of each fold's training spots; the rest become ``unlabelled``.

    Per fold and section, ``round(labelled_frac * n)`` training spots (at least one) drawn at
    random keep role ``train``; the others get role ``unlabelled``: nothing is fitted on them and
    no model trains on their measurements (the ``unlabelled_spots`` pool uses their images).
    Validation and test spots are untouched. ``labelled_frac`` 1 returns the manifest unchanged.
    """
    if labelled_frac >= 1.0:
        return manifest
    if not 0.0 < labelled_frac < 1.0:
        raise ConfigError(
            f"split.labelled_frac must be in (0, 1], got {labelled_frac}",
            fix="give the share of training spots whose labels are used, e.g. 0.1",
        )
    man = manifest.reset_index(drop=True)
    role = man["role"].to_numpy(dtype=object).copy()
    pos = np.flatnonzero(role == "train")
    train = man.iloc[pos].assign(fold=lambda d: d["fold"].astype(str))
    for (fold, sample), local in train.groupby(["fold", "sample_id"], sort=True).indices.items():
        rows = pos[np.sort(local)]
        keep = max(1, int(round(labelled_frac * len(rows))))
        rng = np.random.default_rng([int(seed), _seed(fold, sample)])
        masked = rows[rng.permutation(len(rows))[keep:]]
        role[masked] = "unlabelled"
    man["role"] = role
    return man


# ------------------------------------------------------------------------------ parse time
def _chains(ss: Mapping[str, Any]) -> list[str]:
    out = [str(ss["control"])]
    out += [str(c) for c in ss.get("controls", []) if str(c) not in out]
    return out


def _check_entry(
    entry: Mapping[str, Any],
    exp_samples: Sequence[str],
    sheet: pd.DataFrame,
    produced: Sequence[str],
) -> None:
    source = str(entry["source"])
    if source in RESERVED_SOURCES:
        raise ConfigError(
            f"semi_supervised.pool source '{source}' ({RESERVED_SOURCES[source]}) is not "
            "implemented yet",
            fix=f"use {', '.join(POOL_SOURCES)}",
        )
    if source == "sections":
        samples = [str(s) for s in entry.get("samples", []) or []]
        if not samples:
            samples = other_sections(sheet, exp_samples)
            if not samples:
                raise ConfigError(
                    "semi_supervised.pool: a 'sections' source without samples takes the "
                    "sheet's other sections of the experiment's platform, and there are none",
                    fix="list them: {source: sections, samples: [A1, B1]}, or add sections "
                    "to the sample sheet",
                )
        unknown = sorted(set(samples) - set(sheet["sample_id"]))
        if unknown:
            raise ConfigError(
                f"semi_supervised.pool names section(s) {unknown}, absent from the sample sheet",
                fix="use sample_id values of the sheet",
            )
        inside = sorted(set(samples) & set(exp_samples))
        if inside:
            raise ConfigError(
                f"semi_supervised.pool names section(s) {inside} of the experiment itself: "
                "their validation and test spots would be pseudo-labelled and trained on",
                fix="name other sections, or use {source: unlabelled_spots} with "
                "split.labelled_frac for the experiment's own unlabelled spots",
            )
        no_image = [s for s in samples if not str(sheet.loc[s, "image"])]
        if no_image:
            raise ConfigError(
                f"semi_supervised.pool section(s) {no_image} have no image (no patches)",
                fix="fill the sheet's image column or leave them out of the pool",
            )
    elif source == "images":
        _check_table(
            str(entry.get("table", "") or ""), "semi_supervised.pool images table", produced
        )
    elif source == "interspot":
        _check_interspot(entry, exp_samples, sheet)
    elif source == "wsi":
        table = str(entry.get("table", "") or "")
        if not table:
            raise ConfigError(
                "semi_supervised.pool source wsi takes the slides of wsi.slides, and it is empty",
                fix="set wsi.slides to a slide table (slide_id, image, mpp) or give the source "
                "its own: {source: wsi, table: slides.tsv}",
            )
        if table not in produced and not Path(table).is_file():
            raise ConfigError(
                "semi_supervised.pool wsi slide table does not exist",
                file=table,
                fix="correct the path (a TSV with columns slide_id, image, mpp)",
            )


def _check_interspot(
    entry: Mapping[str, Any], exp_samples: Sequence[str], sheet: pd.DataFrame
) -> None:
    samples = [str(s) for s in entry.get("samples", []) or []] or list(exp_samples)
    unknown = sorted(set(samples) - set(sheet["sample_id"]))
    if unknown:
        raise ConfigError(
            f"semi_supervised.pool interspot names section(s) {unknown}, absent from the "
            "sample sheet",
            fix="use sample_id values of the sheet (without samples: the experiment's own)",
        )
    grid = str(entry.get("grid", "auto") or "auto")
    if grid not in INTERSPOT_GRIDS:
        raise ConfigError(
            f"semi_supervised.pool interspot grid '{grid}' is not a grid between spots",
            fix=f"use one of {', '.join(INTERSPOT_GRIDS)}",
        )
    for s in samples:
        resolve_grid(
            grid,
            str(sheet.loc[s, "platform"]),
            sample=s,
            what="semi_supervised.pool interspot grid",
        )
        if not str(sheet.loc[s, "image"]):
            raise ConfigError(
                "semi_supervised.pool interspot section has no image (no patches)",
                sample=s,
                fix="fill the sheet's image column or leave it out of the pool",
            )


def _check_table(table: str, what: str, produced: Sequence[str]) -> None:
    if not table:
        raise ConfigError(
            f"{what} is empty",
            fix="name a TSV with columns image_id, image, mpp (the demo's "
            "results/demo/unlabeled/images.tsv)",
        )
    if table not in produced and not Path(table).is_file():
        raise ConfigError(
            f"{what} names a file that does not exist", file=table, fix="correct the path"
        )


def check_semi_supervised(
    exp: Mapping[str, Any],
    sheet: pd.DataFrame,
    exp_samples: Sequence[str],
    produced: Sequence[str] = (),
) -> None:
    """Refuse, at parse time, a ``semi_supervised`` block that cannot run (one line naming the fix).

    ``produced``: files a rule of the workflow writes (the demo's), accepted before they exist.
    """
    ss = exp.get("semi_supervised") or {}
    if not ss.get("enabled"):
        return
    split = exp["split"]
    if exp["task"] != "regression":
        raise ConfigError(
            "semi_supervised rounds are implemented for gene regression, not for task clusters",
            fix="set semi_supervised.enabled: false for the clusters experiment",
        )
    if split["scheme"] == "leave_one_patient_out":
        raise ConfigError(
            "semi_supervised chooses the best round on the outer folds' validation spots, and "
            "leave_one_patient_out outer folds have none",
            fix="use random_within_section, spatial_blocks or section_imputation with "
            "split.val_frac > 0",
        )
    if not float(split["val_frac"]) > 0:
        raise ConfigError(
            "semi_supervised needs validation spots (the best round is chosen on them), but "
            "split.val_frac is 0",
            fix="set split.val_frac above 0 (DeepSpaCE 0.2)",
        )
    pool = list(ss.get("pool") or [])
    if not pool:
        raise ConfigError(
            "semi_supervised.pool is empty",
            fix="list at least one source, e.g. [{source: sections, samples: [A1]}] or "
            "[{source: images, table: results/demo/unlabeled/images.tsv}]",
        )
    for entry in pool:
        _check_entry(entry, exp_samples, sheet, produced)
    if (
        any(e["source"] == "unlabelled_spots" for e in pool)
        and float(split.get("labelled_frac", 1.0)) >= 1.0
    ):
        raise ConfigError(
            "semi_supervised.pool uses unlabelled_spots, but split.labelled_frac is 1 (every "
            "training spot is labelled: there are none)",
            fix="set split.labelled_frac below 1 (e.g. 0.1) or use another source",
        )
    if "irrelevant" in _chains(ss):
        _check_table(str(ss.get("irrelevant", "")), "semi_supervised.irrelevant", produced)


def other_sections(sheet: pd.DataFrame, exp_samples: Sequence[str]) -> list[str]:
    """List the sheet's sections outside the experiment, on its platform(s), with an image."""
    platforms = {str(sheet.loc[s, "platform"]) for s in exp_samples}
    return [
        str(s)
        for s in sheet["sample_id"]
        if s not in set(exp_samples)
        and str(sheet.loc[s, "platform"]) in platforms
        and str(sheet.loc[s, "image"])
    ]


def resolve_pool(
    exp: Mapping[str, Any],
    sheet: pd.DataFrame,
    exp_samples: Sequence[str],
    wsi_slides: str = "",
) -> dict[str, Any]:
    """Return the experiment with every ``sections`` source's samples filled in (parse time).

    A ``sections`` source without ``samples`` takes :func:`other_sections`: every section of the
    sheet outside the experiment, on its platform (DeepSpaCE's sections A-C beside D1-D3); an
    ``interspot`` source without ``samples`` takes the experiment's own sections, its ``grid``
    defaults to ``auto``; a ``wsi`` source without ``table`` takes ``wsi_slides`` (the config's
    ``wsi.slides``), without ``slides`` every slide of its table.
    """
    out = dict(exp)
    ss = dict(out.get("semi_supervised") or {})
    if not ss.get("enabled"):
        return out
    pool = []
    for entry in ss.get("pool", []) or []:
        entry = dict(entry)
        if entry["source"] == "sections" and not entry.get("samples"):
            entry["samples"] = other_sections(sheet, exp_samples)
        if entry["source"] == "interspot":
            entry["samples"] = [str(s) for s in entry.get("samples") or exp_samples]
            entry["grid"] = str(entry.get("grid") or "auto")
        if entry["source"] == "wsi":
            entry["table"] = str(entry.get("table") or wsi_slides or "")
            entry["slides"] = [str(s) for s in entry.get("slides") or []]
        pool.append(entry)
    ss["pool"] = pool
    out["semi_supervised"] = ss
    return out


# ------------------------------------------------------------------------------ job inputs
def pool_sections(exp: Mapping[str, Any]) -> list[str]:
    """List the sections the ``sections`` sources of the pool name (in order, once each)."""
    out: list[str] = []
    for entry in (exp.get("semi_supervised") or {}).get("pool", []) or []:
        if entry["source"] == "sections":
            out += [str(s) for s in entry.get("samples", []) if str(s) not in out]
    return out


def interspot_grids(exp: Mapping[str, Any], sheet: pd.DataFrame) -> list[tuple[str, str]]:
    """``(sample, grid file name)`` of every ``interspot`` source (resolved pool), once each.

    The grid stores are ``results/patches/{sample}/{grid}.npy`` (rule ``extract_grid``).
    """
    out: list[tuple[str, str]] = []
    for entry in (exp.get("semi_supervised") or {}).get("pool", []) or []:
        if entry["source"] != "interspot":
            continue
        for s in entry.get("samples", []) or []:
            kind = resolve_grid(str(entry.get("grid", "auto")), str(sheet.loc[s, "platform"]), s)
            if (str(s), kind) not in out:
                out.append((str(s), kind))
    return out


def select_slides(
    table: pd.DataFrame, names: Sequence[str], file: str | os.PathLike[str]
) -> pd.DataFrame:
    """Rows of a slide table (``slide_id, image, mpp``) named in ``names`` (all when empty)."""
    table = table.reset_index(drop=True)
    if not names:
        return table
    unknown = [n for n in names if n not in set(table["slide_id"].astype(str))]
    if unknown:
        raise ConfigError(
            f"semi_supervised.pool wsi names slide(s) {unknown}, absent from the slide table",
            file=file,
            fix="use slide_id values of the table, or leave slides out (every slide)",
        )
    return table.set_index("slide_id", drop=False).loc[list(names)].reset_index(drop=True)


def pool_slides(exp: Mapping[str, Any], read: Callable[[str], pd.DataFrame]) -> pd.DataFrame:
    """List the slides of every ``wsi`` source (resolved pool) once: ``slide_id, image, mpp``.

    ``read`` reads and validates a slide table (the workflow's reader, which knows the demo's
    table before it is written). A slide id that two tables give different images is refused.
    """
    parts = []
    for entry in (exp.get("semi_supervised") or {}).get("pool", []) or []:
        if entry["source"] == "wsi":
            table = str(entry["table"])
            parts.append(select_slides(read(table), entry.get("slides") or [], table))
    if not parts:
        return pd.DataFrame(columns=["slide_id", "image", "mpp"])
    out = pd.concat(parts, ignore_index=True)[["slide_id", "image", "mpp"]].astype(str)
    clash = out.drop_duplicates().loc[lambda d: d["slide_id"].duplicated(), "slide_id"]
    if len(clash):
        raise ConfigError(
            f"semi_supervised.pool wsi: slide '{clash.iloc[0]}' is in two slide tables with "
            "different images or mpp",
            fix="give every slide its own slide_id",
        )
    return out.drop_duplicates("slide_id").reset_index(drop=True)


def pool_tables(exp: Mapping[str, Any], kind: str) -> list[str]:
    """Images tables of a tile store: ``kind`` ``images`` (the pool's) or ``irrelevant``."""
    ss = exp.get("semi_supervised") or {}
    if kind == "irrelevant":
        return [str(ss["irrelevant"])] if ss.get("irrelevant") else []
    return [str(e["table"]) for e in ss.get("pool", []) or [] if e["source"] == "images"]


def read_images_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read an images table (``image_id, image, mpp``); paths relative to the working directory."""
    table = read_table(path, dtype={"image_id": str, "image": str})
    missing = [c for c in IMAGE_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(
            f"the images table lacks column(s) {missing}",
            file=path,
            fix="give a TSV with columns image_id, image, mpp (µm per pixel)",
        )
    if table["image_id"].duplicated().any():
        dup = table.loc[table["image_id"].duplicated(), "image_id"].iloc[0]
        raise InputError(f"image_id '{dup}' is listed twice", file=path, fix="give unique ids")
    mpp = pd.to_numeric(table["mpp"], errors="coerce")
    if not (mpp > 0).all():
        raise InputError(
            "the images table has a missing or non-positive mpp",
            file=path,
            fix="give every image its µm per pixel",
        )
    return table.assign(mpp=mpp.astype(float))


def images_of_tables(tables: Sequence[str]) -> list[str]:
    """List the images the existing tables name (for a rule's inputs; [] for a table not written yet)."""
    out: list[str] = []
    for t in tables:
        if Path(t).is_file():
            out += [p for p in read_images_table(t)["image"] if p not in out]
    return out


# ------------------------------------------------------------------------------ tiling
def _grid(shape: Sequence[int], crop: int) -> np.ndarray:
    """Centres ``[x, y]`` of non-overlapping ``crop``-px tiles inside an image ``(h, w)``."""
    h, w = int(shape[0]), int(shape[1])
    xs = np.arange(crop / 2.0, w - crop / 2.0 + 1e-9, crop)
    ys = np.arange(crop / 2.0, h - crop / 2.0 + 1e-9, crop)
    gx, gy = np.meshgrid(xs, ys)
    return np.column_stack([gx.ravel(), gy.ravel()])


def tile_images(
    tables: Sequence[str | os.PathLike[str]],
    spec: Any,
    out_npy: str | os.PathLike[str],
    out_tsv: str | os.PathLike[str],
    out_json: str | os.PathLike[str],
    percentile: float = 80.0,
    max_white_frac: float = 0.5,
    background_rgb: float = 220.0,
    max_background_frac: float = 0.5,
) -> pd.DataFrame:
    """Cut every image of the tables into tiles at the field of view and write one tile store.

    Tiles lie on a non-overlapping grid of crop-sized squares inside each image; each image is
    cut by :func:`stpredict.patches.store.extract_patches` (its own whiteness threshold, DeepSpaCE's
    rule), and the stores are joined into one (the store layout of docs/DESIGN.md, with the
    columns ``image_id``, ``background_frac`` and ``usable`` added: not white, not glass and
    wholly inside the image). The whiteness threshold is relative to each image (a percentile
    of its crops' mean RGB), so on an image that is half glass it passes glass tiles; ST-Net's
    absolute background rule (``wsi.background``: a pixel is background at mean RGB >=
    ``background_rgb``, a tile with more than ``max_background_frac`` of them is glass,
    :func:`stpredict.wsi.tiles.background_fraction`) drops those.
    """
    from stpredict.ingest.images import open_image
    from stpredict.patches.store import extract_patches
    from stpredict.wsi.tiles import background_fraction

    def background(crops: np.ndarray) -> np.ndarray:
        return background_fraction(crops, background_rgb)

    rows = []
    for t in tables:
        rows.append(read_images_table(t))
    images = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=IMAGE_COLUMNS)
    if images["image_id"].duplicated().any():
        dup = images.loc[images["image_id"].duplicated(), "image_id"].iloc[0]
        raise InputError(f"image_id '{dup}' is in two images tables", file=str(tables[-1]))
    tmp = Path(tempfile.mkdtemp(prefix=".tiles.", dir=Path(out_npy).parent))
    try:
        parts, tsvs, shapes = [], [], {}
        for i, img in enumerate(images.itertuples(index=False)):
            with open_image(img.image, sample=img.image_id) as image:
                crop = spec.crop_px(float(img.mpp))
                xy = _grid(image.shape, crop)
                shapes[img.image_id] = list(image.shape)
                if not len(xy):
                    log.warning("image %s is smaller than one tile: no tiles", img.image)
                    continue
                ids = [f"{img.image_id}:{k}" for k in range(len(xy))]
                npy = tmp / f"{i}.npy"
                table = extract_patches(
                    image,
                    xy,
                    spec,
                    float(img.mpp),
                    npy,
                    tmp / f"{i}.tsv",
                    tmp / f"{i}.json",
                    ids=ids,
                    percentile=percentile,
                    max_white_frac=max_white_frac,
                    progress=False,
                    crop_stats={"background_frac": background},
                )
            parts.append(npy)
            tsvs.append(table.assign(image_id=img.image_id))
        table = _join_tiles(parts, tsvs, spec, out_npy)
        if len(table):
            table["usable"] &= table["background_frac"].to_numpy(float) <= max_background_frac
        write_table(table, out_tsv)
        write_json(
            {
                "fov_um": spec.fov_um,
                "fov_px": spec.fov_px,
                "size_px": int(spec.size_px),
                "pad_value": int(spec.pad_value),
                "spec": spec.to_dict(),
                "images": {str(k): {"shape": v} for k, v in shapes.items()},
                "tables": [str(t) for t in tables],
                "n": len(table),
                "n_usable": int(table["usable"].sum()) if len(table) else 0,
                "background": {"rgb": background_rgb, "max_frac": max_background_frac},
                "created_by": "stpredict.learn.pool.tile_images",
            },
            out_json,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "tiles: %d of %d usable from %d image(s)", table["usable"].sum(), len(table), len(images)
    )
    return table


def _join_tiles(
    parts: Sequence[Path], tsvs: Sequence[pd.DataFrame], spec: Any, out_npy: str | os.PathLike[str]
) -> pd.DataFrame:
    """Concatenate per-image stores into ``out_npy``; return the joined table."""
    n = sum(len(t) for t in tsvs)
    size = int(spec.size_px)
    with atomic_path(out_npy) as tmp_npy:
        store = np.lib.format.open_memmap(
            tmp_npy, mode="w+", dtype=np.uint8, shape=(n, size, size, 3)
        )
        start = 0
        for npy, t in zip(parts, tsvs, strict=True):
            store[start : start + len(t)] = np.load(npy, mmap_mode="r")
            start += len(t)
        store.flush()
        del store
    if not tsvs:
        cols = ["id", "x", "y", "pad_frac", "white", "background_frac", "image_id", "usable"]
        return pd.DataFrame(columns=cols)
    table = pd.concat(tsvs, ignore_index=True)
    table["usable"] = ~table["white"].astype(bool) & (table["pad_frac"] <= 0)
    return table


# ------------------------------------------------------------------------------ candidates
def _store_ids(store: str) -> pd.Index:
    tsv = Path(store).with_suffix(".tsv")
    return pd.Index(read_table(tsv, usecols=["id"], dtype={"id": str})["id"].astype(str))


def _spot_candidates(source: str, sample: str, spot_ids: Sequence[str], store: str) -> pd.DataFrame:
    ids = _store_ids(store)
    rows = ids.get_indexer([str(i) for i in spot_ids])
    if (rows < 0).any():
        raise InputError(
            f"{int((rows < 0).sum())} spots are not in the patch store",
            file=store,
            sample=sample,
            fix="rerun extract_patches for this section",
        )
    return pd.DataFrame(
        {
            "source": source,
            "origin": sample,
            "id": [str(i) for i in spot_ids],
            "store": store,
            "row": rows,
        }
    )


def _candidates_sections(
    exp: Mapping[str, Any], inputs: Mapping[str, Any], manifest: pd.DataFrame, fold: str
) -> list[pd.DataFrame]:
    out = []
    for sample in pool_sections(exp):
        qc = read_h5ad(inputs["pool_qc"][sample], sample=sample)
        keep = qc.obs["keep"].to_numpy(dtype=bool) if "keep" in qc.obs else np.ones(qc.n_obs, bool)
        out.append(
            _spot_candidates("sections", sample, qc.obs_names[keep], inputs["pool_stores"][sample])
        )
    return out


def _tile_candidates(source: str, store: str) -> pd.DataFrame:
    table = read_table(Path(store).with_suffix(".tsv"), dtype={"id": str, "image_id": str})
    usable = table["usable"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
    return pd.DataFrame(
        {
            "source": source,
            "origin": table["image_id"].astype(str).to_numpy()[usable],
            "id": table["id"].astype(str).to_numpy()[usable],
            "store": store,
            "row": np.flatnonzero(usable),
        }
    )


def _candidates_images(
    exp: Mapping[str, Any], inputs: Mapping[str, Any], manifest: pd.DataFrame, fold: str
) -> list[pd.DataFrame]:
    return [_tile_candidates("images", inputs["tiles"])] if inputs.get("tiles") else []


def _candidates_unlabelled_spots(
    exp: Mapping[str, Any], inputs: Mapping[str, Any], manifest: pd.DataFrame, fold: str
) -> list[pd.DataFrame]:
    m = manifest[(manifest["fold"].astype(str) == str(fold)) & (manifest["role"] == "unlabelled")]
    return [
        _spot_candidates(
            "unlabelled_spots", str(s), g["spot_id"].astype(str).tolist(), inputs["stores"][s]
        )
        for s, g in m.groupby("sample_id", sort=True)
    ]


def _candidates_interspot(
    exp: Mapping[str, Any], inputs: Mapping[str, Any], manifest: pd.DataFrame, fold: str
) -> list[pd.DataFrame]:
    """Usable centres between spots (not white, wholly inside the image).

    A crop centred between spots shares pixels with the crops of the spots around it: where one
    of them is a validation or test spot of the fold, the student would train on its image (with
    the teacher's label), so :func:`pool_candidates_counted` leaves such centres out
    (:func:`interspot_overlap`). Within-section random splits leave few.
    """
    parts = []
    for sample, store in (inputs.get("interspot_stores") or {}).items():
        table = read_table(Path(store).with_suffix(".tsv"), dtype={"id": str})
        white = table["white"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
        usable = ~white & (table["pad_frac"].to_numpy(float) <= 0)
        parts.append(
            pd.DataFrame(
                {
                    "source": "interspot",
                    "origin": str(sample),
                    "id": table["id"].astype(str).to_numpy()[usable],
                    "store": str(store),
                    "row": np.flatnonzero(usable),
                }
            )
        )
    return parts


def _candidates_wsi(
    exp: Mapping[str, Any], inputs: Mapping[str, Any], manifest: pd.DataFrame, fold: str
) -> list[pd.DataFrame]:
    """Kept tiles (not background: ST-Net's rule, ``keep``) of the slides' pool stores."""
    from stpredict.wsi.tiles import kept_rows

    out = []
    for slide, store in (inputs.get("wsi_stores") or {}).items():
        table = read_table(Path(store).with_suffix(".tsv"), dtype={"id": str})
        rows = kept_rows(table)
        out.append(
            pd.DataFrame(
                {
                    "source": "wsi",
                    "origin": str(slide),
                    "id": table["id"].astype(str).to_numpy()[rows],
                    "store": str(store),
                    "row": rows,
                }
            )
        )
    return out


def interspot_overlap(pool: pd.DataFrame, manifest: pd.DataFrame, fold: str) -> np.ndarray:
    """Mask of the ``interspot`` rows of ``pool`` whose crop overlaps a held-out spot's crop.

    Held out: ``val`` or ``test`` in the fold. Two square crops of side ``fov_px`` (the grid
    store's, full-resolution px) overlap when their centres are less than ``fov_px`` apart along
    both axes. Spot centres come from the section's spot store (``spots.tsv`` beside the grid's).
    """
    mask = np.zeros(len(pool), dtype=bool)
    inter = np.flatnonzero((pool["source"] == "interspot").to_numpy())
    if not inter.size:
        return mask
    m = manifest[manifest["fold"].astype(str) == str(fold)]
    held = m[m["role"].isin(["val", "test"])]
    sub = pool.iloc[inter]
    for store in dict.fromkeys(sub["store"].astype(str)):
        pos = inter[(sub["store"].astype(str) == store).to_numpy()]
        sample = str(pool["origin"].iloc[pos[0]])
        ids = held.loc[held["sample_id"].astype(str) == sample, "spot_id"].astype(str)
        if ids.empty:
            continue
        spot_tsv = Path(store).parent / "spots.tsv"
        spots = read_table(spot_tsv, usecols=["id", "x", "y"], dtype={"id": str}).set_index("id")
        missing = ids[~ids.isin(spots.index)]
        if len(missing):
            raise InputError(
                f"{len(missing)} held-out spots of fold {fold} are not in the spot store",
                file=str(spot_tsv),
                sample=sample,
                fix="rerun extract_patches for this section",
            )
        grid = read_table(Path(store).with_suffix(".tsv"), usecols=["x", "y"])
        fov = float(read_json(Path(store).with_suffix(".json"))["fov_px"])
        centres = grid[["x", "y"]].to_numpy(float)[pool["row"].iloc[pos].to_numpy(np.int64)]
        dist, _ = cKDTree(spots.loc[ids, ["x", "y"]].to_numpy(float)).query(centres, p=np.inf)
        mask[pos] = dist < fov
    return mask


_SOURCES = {
    "sections": _candidates_sections,
    "images": _candidates_images,
    "unlabelled_spots": _candidates_unlabelled_spots,
    "interspot": _candidates_interspot,
    "wsi": _candidates_wsi,
}


def pool_candidates_counted(
    exp: Mapping[str, Any],
    fold: str,
    manifest: pd.DataFrame,
    inputs: Mapping[str, Any],
    irrelevant: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every patch the fold's pool could draw, audited, and the pool's size per source.

    ``inputs``: ``stores`` (the experiment's patch stores by sample), ``pool_qc`` and
    ``pool_stores`` (the ``sections`` sources' QC files and stores by sample), ``tiles`` (the
    ``images`` tile store), ``interspot_stores`` (grid stores by sample), ``wsi_stores`` (the
    slides' pool stores by slide) and ``irrelevant_tiles``. ``irrelevant``: the irrelevant
    images' tiles instead of the pool.

    Returns
    -------
    candidates : pandas.DataFrame
        Columns :data:`POOL_COLUMNS`; ``interspot`` centres whose crop overlaps a held-out
        spot's crop are left out.
    counts : pandas.DataFrame
        Per source: ``candidates`` (after the overlap rule) and ``left_out`` (by it).
    """
    if irrelevant:
        parts = [_tile_candidates("irrelevant", inputs["irrelevant_tiles"])]
    else:
        parts = []
        done: set[str] = set()
        for entry in (exp.get("semi_supervised") or {}).get("pool", []) or []:
            source = str(entry["source"])
            if source in RESERVED_SOURCES:
                raise ConfigError(f"pool source '{source}' is not implemented yet")
            if source not in done:
                parts += _SOURCES[source](exp, inputs, manifest, fold)
                done.add(source)
    cands = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=POOL_COLUMNS)
    cands = cands.drop_duplicates(["store", "row"]).reset_index(drop=True)
    overlap = interspot_overlap(cands, manifest, fold)
    if overlap.any():
        log.info(
            "interspot: %d of %d usable centres overlap a validation/test spot's crop in fold "
            "%s: left out",
            int(overlap.sum()),
            int((cands["source"] == "interspot").sum()),
            fold,
        )
    sources = list(dict.fromkeys(cands["source"].astype(str)))
    counts = pd.DataFrame(
        {
            "source": sources,
            "candidates": [int(((cands["source"] == x) & ~overlap).sum()) for x in sources],
            "left_out": [int(((cands["source"] == x) & overlap).sum()) for x in sources],
        }
    )
    cands = cands[~overlap].reset_index(drop=True)
    if cands.empty:
        raise InputError(
            f"fold {fold}: the unlabelled pool is empty",
            fix="check semi_supervised.pool (sections without kept spots, images without "
            "usable tiles)",
        )
    audit_pool(cands, manifest, fold)
    return cands, counts


def pool_candidates(
    exp: Mapping[str, Any],
    fold: str,
    manifest: pd.DataFrame,
    inputs: Mapping[str, Any],
    irrelevant: bool = False,
) -> pd.DataFrame:
    """Every patch the fold's pool could draw (:func:`pool_candidates_counted`, without counts)."""
    return pool_candidates_counted(exp, fold, manifest, inputs, irrelevant)[0]


def pool_counts(counts: pd.DataFrame, drawn: pd.DataFrame) -> pd.DataFrame:
    """Summarise a round job's pool (``pool.tsv``): :data:`POOL_COUNT_COLUMNS` per source.

    ``candidates`` (the pool after the interspot overlap rule), ``left_out`` (by that rule) and
    ``drawn`` (pseudo-labelled), one row per source and a ``total`` row.
    """
    drawn_n = drawn["source"].astype(str).value_counts()
    out = counts.assign(drawn=[int(drawn_n.get(x, 0)) for x in counts["source"]])
    total = pd.DataFrame([{"source": "total", **out[POOL_COUNT_COLUMNS[1:]].sum().to_dict()}])
    return pd.concat([out, total], ignore_index=True)[POOL_COUNT_COLUMNS]


def draw_pool(cands: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Draw ``n`` patches without replacement (all of them when the pool is smaller).

    The result is sorted by store and row (prediction reads each store in order).
    """
    if len(cands) < n:
        log.warning("the pool holds %d patches, fewer than n_pseudo %d: using all", len(cands), n)
        n = len(cands)
    rng = np.random.default_rng(int(seed))
    pick = np.sort(rng.choice(len(cands), size=n, replace=False))
    out = cands.iloc[pick]
    return out.sort_values(["store", "row"], kind="stable").reset_index(drop=True)


def audit_pool(pool: pd.DataFrame, manifest: pd.DataFrame, fold: str) -> None:
    """Fail when a pool patch is a spot the fold labels, validates or tests on, or overlaps one.

    Spots are matched by ``(sample, spot id)``: a pool row's ``origin`` is its section (spot
    sources). A pool spot that is ``val`` or ``test`` in the fold is a :class:`LeakageError`; so
    is a ``train`` spot (a labelled spot pseudo-labelled again: its measurement is used already),
    and an ``interspot`` patch whose crop overlaps a ``val`` or ``test`` spot's
    (:func:`interspot_overlap`).
    """
    m = manifest[manifest["fold"].astype(str) == str(fold)]
    if m.empty:
        raise InputError(f"fold {fold} is not in the manifest")
    overlap = interspot_overlap(pool, manifest, fold)
    if overlap.any():
        first = pool[overlap].iloc[0]
        raise LeakageError(
            f"fold {fold}: {int(overlap.sum())} interspot pool patch(es) overlap the crop of a "
            f"validation or test spot (first: sample '{first['origin']}', centre '{first['id']}')",
            fix="rerun the pseudo_label job (interspot centres next to held-out spots are left "
            "out of the pool)",
        )
    spots = pool[~pool["source"].isin(list(TILE_SOURCES))]
    if spots.empty:
        return
    labelled = m[m["role"].isin(["train", "val", "test"])]
    keys = pd.MultiIndex.from_arrays(
        [labelled["sample_id"].astype(str), labelled["spot_id"].astype(str)]
    )
    pk = pd.MultiIndex.from_arrays([spots["origin"].astype(str), spots["id"].astype(str)])
    hit = pk.isin(keys)
    if hit.any():
        first = spots[hit].iloc[0]
        role = labelled.loc[
            (labelled["sample_id"].astype(str) == str(first["origin"]))
            & (labelled["spot_id"].astype(str) == str(first["id"])),
            "role",
        ].iloc[0]
        raise LeakageError(
            f"fold {fold}: {int(hit.sum())} pool patch(es) are labelled spots of the fold "
            f"(first: sample '{first['origin']}', spot '{first['id']}', role {role})",
            fix="draw the pool from other sections or from the fold's unlabelled spots only",
        )


def check_stores(pool: pd.DataFrame, allowed: Sequence[str], file: str) -> None:
    """Fail when a drawn pool names a store that is not among the job's inputs."""
    extra = sorted(set(pool["store"].astype(str)) - {str(s) for s in allowed})
    if extra:
        raise InputError(
            f"the pseudo-labels name patch store(s) {extra[:3]} that are not inputs of this job",
            file=file,
            fix="rerun the pseudo_label job (the pool settings changed)",
        )
