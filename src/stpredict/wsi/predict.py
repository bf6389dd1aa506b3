"""One call for one image: a trained model folder and an H&E image to a predicted AnnData.

:func:`predict_image` is what the ``predict_slide`` rule, the ``stpredict predict`` command and a
notebook call. Steps: read the model folder (:func:`stpredict.wsi.card.load_model_dir`: fold
models, genes, transform, patch geometry and µm/px), open the image and settle its µm/px
(:func:`stpredict.wsi.slides.resolve_mpp`), choose the pyramid level
(:func:`~stpredict.wsi.slides.choose_level`), cut the patches -- the given spots, or every tile
that passes the background rule (:mod:`stpredict.wsi.tiles`) -- through the spot extractor into
a patch store, and predict them with test-time augmentation, batched, on CUDA when present
(:func:`stpredict.learn.predict.predict`), averaging the fold models.

Output AnnData (``results/wsi/{slide}.h5ad``)
---------------------------------------------
Laid out like the spot prediction files: ``layers["predicted"]`` = the mean over the fold
models of their TTA predictions, in the experiment's target units (``uns["stpredict"]
["target_transform"]``); ``X`` is NaN (nothing was measured, as for the imputed rows of the
super-resolution files); ``var_names`` = the genes every fold model predicts. One row per kept
tile (or per given spot): ``obs`` ``slide_id, x, y`` (full-resolution px), ``background_frac``,
``mean_rgb`` and, for tiles, ``tile_row, tile_col`` (for spots ``pad_frac``);
``obsm["spatial"]`` = ``[x, y]`` full-resolution px; ``obsm["embedding"]`` = the penultimate
features (TTA-averaged) of the first fold model (``uns["stpredict"]["embedding"]``; the image
features of the subtype classifier, :mod:`stpredict.wsi.subtype`); ``uns["spatial"][slide_id]``
hires (1,000 px) and lowres (400 px) thumbnails with their scale factors and
``spot_diameter_fullres`` = the tile side (scanpy and squidpy draw the file directly);
``var["gene_ids"]`` from the card; ``uns["stpredict"]``: slide, image, µm/px and its source,
level, experiment, folds, TTA, target transform, ``units`` (the one units key of
:mod:`stpredict.outputs`) and the smoothness note, genes, tile geometry, background rule and
counts. Predicted maps are smoother than measured ones: do not run spatially-variable
gene tests on predictions.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stpredict.errors import GeometryError, InputError
from stpredict.outputs import finish_result
from stpredict.wsi.card import ModelSet, load_model_dir
from stpredict.wsi.slides import choose_level, resolve_mpp, slide_levels
from stpredict.wsi.tiles import kept_rows, spot_patches, tile_slide

__all__ = ["predict_image", "wsi_defaults", "read_spots", "predict_store", "embedding_fold"]

log = logging.getLogger(__name__)

#: longest sides of the thumbnails stored in ``uns["spatial"]`` (hires, lowres)
THUMBNAIL_PX = 1000
LOWRES_PX = 400
_ID_COLUMNS = ("id", "spot_id", "barcode")


def wsi_defaults() -> dict[str, Any]:
    """Return the ``wsi`` defaults and ``reading.mpp_tolerance``, from the config schema."""
    from stpredict.config import CONFIG_SCHEMA, load_schema, schema_defaults

    props = load_schema(CONFIG_SCHEMA)["properties"]
    out = schema_defaults(props["wsi"])
    out["mpp_tolerance"] = schema_defaults(props["reading"])["mpp_tolerance"]
    return out


def read_spots(spots: Any, image: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Spot centres as a table ``id, x, y`` (full-resolution px).

    Parameters
    ----------
    spots
        A TSV / CSV file (``.csv`` = comma-separated) or a DataFrame with columns ``x``, ``y``
        and optionally an id column (``id``, ``spot_id`` or ``barcode``), or an ``(n, 2)``
        array of ``[x, y]``.
    image
        The image, for the error message.
    """
    if isinstance(spots, (str, os.PathLike)):
        path = Path(spots)
        if not path.is_file():
            raise InputError(
                "the spots table does not exist", file=path, fix="give a TSV with columns x, y"
            )
        sep = "," if path.suffix.lower() == ".csv" else "\t"
        table = pd.read_csv(path, sep=sep, dtype={c: str for c in _ID_COLUMNS})
        where: Any = path
    elif isinstance(spots, pd.DataFrame):
        table, where = spots.copy(), "spots table"
    else:
        arr = np.asarray(spots, dtype=float)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise GeometryError(
                f"spots must be an (n, 2) array of [x, y], got shape {arr.shape}", file=image
            )
        table, where = pd.DataFrame(arr, columns=["x", "y"]), "spots array"
    missing = [c for c in ("x", "y") if c not in table.columns]
    if missing:
        raise InputError(
            f"the spots table lacks column(s) {missing} (it has {list(table.columns)})",
            file=where,
            fix="give columns x, y (full-resolution pixel column and row) and optionally id",
        )
    xy = table[["x", "y"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    if not len(xy) or not np.isfinite(xy).all():
        raise GeometryError(
            "the spots table is empty or has non-numeric / missing x, y",
            file=where,
            fix="give one row per spot with numeric x, y in full-resolution pixels",
        )
    col = next((c for c in _ID_COLUMNS if c in table.columns), None)
    ids = table[col].astype(str).to_numpy() if col else np.arange(len(xy)).astype(str)
    if len(set(ids)) != len(ids):
        raise InputError("the spots table repeats an id", file=where, fix="give unique ids")
    return pd.DataFrame({"id": ids, "x": xy[:, 0], "y": xy[:, 1]})


def predict_store(
    models: ModelSet,
    npy: str | os.PathLike[str],
    rows: np.ndarray,
    tta: int,
    device: str | None = None,
    batch_size: int = 128,
    embeddings: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Mean over the fold models of their TTA predictions of ``models.genes`` on store rows.

    Batched; CUDA when present (``device`` None); the backbone's precision is the experiment's.

    Parameters
    ----------
    embeddings
        Also return the penultimate-layer features (TTA-averaged) of the first fold model in
        fold order (:func:`embedding_fold`): one feature space for every image (the fold
        models' spaces differ, so they are not averaged).

    Returns
    -------
    numpy.ndarray
        float32 ``(len(rows), len(models.genes))``; with ``embeddings`` a tuple
        ``(predictions, features)``, features float32 ``(len(rows), n_features)``.
    """
    from stpredict.learn.predict import load_model, predict

    total = np.zeros((len(rows), len(models.genes)), dtype=np.float64)
    first = embedding_fold(models)
    feats = None
    for fold, path in sorted(models.models.items()):
        model, meta = load_model(path, device=device)
        known = [str(g) for g in meta.get("genes") or []]
        missing = [g for g in models.genes if g not in set(known)]
        if missing or int(meta.get("patch_size") or models.spec.size_px) != models.spec.size_px:
            raise InputError(
                f"fold {fold}'s model.pt does not match the model card (genes missing: "
                f"{missing[:3]}, patch size {meta.get('patch_size')} vs {models.spec.size_px})",
                file=path,
                fix="copy the experiment folder whole, or rerun snakemake for the experiment",
            )
        preds, emb = predict(
            model,
            [str(npy)],
            [np.asarray(rows, dtype=np.int64)],
            batch_size=int(batch_size),
            tta=int(tta),
            device=device,
            precision=str(models.card.get("precision", "auto")),
        )
        total += preds[:, [known.index(g) for g in models.genes]]
        if fold == first:
            feats = emb
    mean = (total / len(models.models)).astype(np.float32)
    return (mean, np.asarray(feats, dtype=np.float32)) if embeddings else mean


def embedding_fold(models: ModelSet) -> str:
    """Return the fold whose model's penultimate features go to ``obsm["embedding"]`` (the first)."""
    return sorted(models.models, key=lambda k: (len(str(k)), str(k)))[0]


def _plain(obj: Any) -> Any:
    """JSON round trip without nulls (h5ad cannot store None)."""

    def drop(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: drop(v) for k, v in o.items() if v is not None}
        if isinstance(o, list):
            return [drop(v) for v in o if v is not None]
        return o

    return drop(json.loads(json.dumps(obj, default=str)))


def _anndata(
    table: pd.DataFrame,
    rows: np.ndarray,
    preds: np.ndarray,
    models: ModelSet,
    slide: str,
    spatial: dict[str, Any],
    uns: dict[str, Any],
    embedding: np.ndarray | None = None,
) -> Any:
    import anndata as ad

    t = table.iloc[rows]
    cols = ["x", "y", "tile_row", "tile_col", "background_frac", "mean_rgb", "pad_frac"]
    obs = t[[c for c in cols if c in t.columns and (c != "pad_frac" or "tile_row" not in t)]]
    obs = obs.copy()
    obs.insert(0, "slide_id", slide)
    obs.index = pd.Index(t["id"].astype(str).to_numpy())
    out = ad.AnnData(
        X=np.full(preds.shape, np.nan, dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(models.genes)),
    )
    out.layers["predicted"] = preds
    out.obsm["spatial"] = t[["x", "y"]].to_numpy(dtype=np.float64)
    if embedding is not None:
        out.obsm["embedding"] = embedding
    out.uns["spatial"] = {slide: spatial}
    out.uns["stpredict"] = _plain(uns)
    # the contract of every result file (stpredict.outputs): gene ids where the card has them,
    # the one units key and the smoothness note
    ids = models.card.get("gene_ids") or {}
    out.var["gene_ids"] = [str(ids.get(g, "")) for g in models.genes]
    finish_result(out, str(models.card["target_transform"]["units"]))
    return out


def _spatial(image: Any, spot_px: float) -> dict[str, Any]:
    # both keys scanpy / squidpy look for: hires (THUMBNAIL_PX, squidpy's default) and lowres
    hires, h_scale = image.thumbnail(THUMBNAIL_PX)
    low, l_scale = image.thumbnail(LOWRES_PX)
    return {
        "images": {"hires": np.ascontiguousarray(hires), "lowres": np.ascontiguousarray(low)},
        "scalefactors": {
            "tissue_hires_scalef": float(h_scale),
            "tissue_lowres_scalef": float(l_scale),
            "spot_diameter_fullres": float(spot_px),
        },
        "metadata": {"source_image_path": str(image.path)},
    }


def _settings(**given: Any) -> dict[str, Any]:
    out = wsi_defaults()
    bg = dict(out["background"])
    for key, value in given.items():
        if value is None:
            continue
        if key in ("rgb", "max_frac"):
            bg[key] = value
        else:
            out[key] = value
    out["background"] = bg
    return out


def _cut(
    image: Any,
    level: Any,
    models: ModelSet,
    prefix: Path,
    spots: Any,
    settings: Mapping[str, Any],
    slide: str,
    progress: bool,
) -> pd.DataFrame:
    bg = settings["background"]
    if spots is None:
        return tile_slide(
            image,
            level,
            models.spec,
            prefix,
            rgb=float(bg["rgb"]),
            max_frac=float(bg["max_frac"]),
            tile_um=settings.get("tile_um"),
            slide=slide,
            progress=progress,
        )
    sp = read_spots(spots, image.path)
    return spot_patches(
        image,
        level,
        models.spec,
        prefix,
        sp[["x", "y"]].to_numpy(),
        sp["id"].tolist(),
        rgb=float(bg["rgb"]),
        slide=slide,
    )


def predict_image(
    model_dir: str | os.PathLike[str],
    image: str | os.PathLike[str],
    spots: Any = None,
    mpp: float | str | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    slide_id: str | None = None,
    store: str | os.PathLike[str] | None = None,
    tile_um: float | None = None,
    background_rgb: float | None = None,
    max_background_frac: float | None = None,
    batch_size: int | None = None,
    tta: int | None = None,
    device: str | None = None,
    mpp_tolerance: float | None = None,
    progress: bool = False,
) -> Any:
    """Predict gene expression on an H&E image with a trained model folder (module notes).

    Parameters
    ----------
    model_dir
        ``results/experiments/{experiment}`` of a run (every fold model, averaged) or one of
        its ``folds/{fold}`` folders (that model only).
    image
        The H&E image: a pyramidal / tiled TIFF (read lazily, at the level the model needs),
        a plain TIFF, JPEG or PNG.
    spots
        Optional spot centres (a TSV / CSV with columns ``x, y`` in full-resolution px and an
        optional ``id``, a DataFrame, or an ``(n, 2)`` array): those are predicted. Without
        spots the image is tiled (non-overlapping tiles of the model's field of view; the
        background rule drops glass).
    mpp
        µm per pixel of the image's full resolution; ``None`` = its TIFF tags (refused when it
        has none). Cross-checked against the tags when both exist.
    out
        ``.h5ad`` to write (atomically); ``None`` writes nothing.
    slide_id
        Name of the image in the output (default: the file name without suffix).
    store
        Where the patch store goes (a path without suffix: ``{store}.npy|.tsv|.json``);
        ``None`` = a temporary folder beside ``out``, removed afterwards.
    tile_um, background_rgb, max_background_frac, batch_size, mpp_tolerance
        ``wsi.tile_um``, ``wsi.background.rgb`` / ``max_frac``, ``wsi.batch_size`` and
        ``reading.mpp_tolerance``; ``None`` = the config schema's defaults.
    tta
        Dihedral transforms averaged (1, 4, 8); ``None`` = the experiment's.
    device
        ``None`` = CUDA when present, else the CPU.
    progress
        Show a progress bar while cutting tiles.

    Returns
    -------
    anndata.AnnData
        Predicted expression (module notes).
    """
    from stpredict.ingest.images import open_image
    from stpredict.io import write_h5ad

    t0 = time.perf_counter()
    models = load_model_dir(model_dir)
    settings = _settings(
        tile_um=tile_um,
        rgb=background_rgb,
        max_frac=max_background_frac,
        batch_size=batch_size,
        mpp_tolerance=mpp_tolerance,
    )
    tol = float(settings["mpp_tolerance"])
    name = slide_id or Path(image).name.split(".")[0]
    tmp = None
    if store is None:
        base = Path(out).parent if out is not None else None
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".stpredict-patches.", dir=base))
        prefix = tmp / "patches"
    else:
        prefix = Path(store)
    try:
        with open_image(image, sample=name) as img:
            value, source = resolve_mpp(img, mpp, tol, name)
            level = choose_level(slide_levels(img, value), models.patch_mpp, tol, img.path, name)
            table = _cut(img, level, models, prefix, spots, settings, name, progress)
            rows = kept_rows(table)
            n_tta = int(tta or models.card["tta"])
            preds, emb = predict_store(
                models,
                prefix.with_suffix(".npy"),
                rows,
                n_tta,
                device=device,
                batch_size=int(settings["batch_size"]),
                embeddings=True,
            )
            meta = json.loads(prefix.with_suffix(".json").read_text())["wsi"]
            side = meta.get("tile_px_fullres") or models.spec.fov_um / value
            uns = {
                "slide_id": name,
                "image": str(image),
                "mpp": value,
                "mpp_source": source,
                "kind": meta["kind"],
                "level": level.to_dict(),
                "experiment": models.experiment,
                "model_dir": str(model_dir),
                "folds": sorted(models.models, key=lambda k: (len(k), k)),
                "averaged_over_folds": len(models.models),
                "tta": n_tta,
                "target_transform": models.card["target_transform"],
                "genes": models.genes,
                "fov_um": models.spec.fov_um,
                "patch_mpp": models.patch_mpp,
                "size_px": models.spec.size_px,
                "tiles": meta,
                "embedding": {
                    "fold": embedding_fold(models),
                    "layer": "penultimate (the features before the head), TTA-averaged",
                    "n_features": int(emb.shape[1]),
                },
                "note": "layers['predicted']: mean over the fold models of their TTA "
                "predictions, in the experiment's target units; X is NaN (nothing measured)",
            }
            spatial = _spatial(img, side)
            adata = _anndata(table, rows, preds, models, name, spatial, uns, emb)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if out is not None:
        write_h5ad(adata, out)
    seconds = time.perf_counter() - t0
    log.info(
        "%s: %d %s predicted by %d fold model(s) of %s (level %d, %.3g µm/px) in %.1f s",
        name,
        adata.n_obs,
        "tiles" if spots is None else "spots",
        len(models.models),
        models.experiment,
        level.index,
        level.mpp,
        seconds,
    )
    return adata
