"""Job time of predict-only cohorts: patches at the model's geometry, predictions, scores.

Every section is predicted by **every** fold model of the models folder, each with test-time
augmentation (the experiment's ``tta`` unless the cohort sets one), and the predictions are
averaged over the folds (``layers["predicted"]``): a cohort section was never seen by any
fold, so every fold model is honest for it.

Sections with counts (:func:`predict_section`): ``X`` holds the measured targets of the kept
spots, transformed with each fold's **fitted** target transform (``fitted.json``, fitted on the
fold's training side of the earlier run; nothing is refitted on the cohort) and averaged over
the folds like the predictions; ``layers["measured_smoothed"]`` the ST-Net smoothed targets
the same way. Model genes the section does not measure are predicted, NaN in ``X`` and
``var["measured"]`` false; they are not scored (:func:`score_cohort`). Image-only rows
(:func:`predict_image_row`) are predicted by :func:`stpredict.wsi.predict.predict_image`
(the given spots, or tiles of the model's field of view), ``X`` NaN.

Output ``results/cohorts/{cohort}/predictions/{sample}.h5ad``: self-contained like the other
result files (:mod:`stpredict.outputs`: ``uns["spatial"]``, ``var["gene_ids"]``, held-out
scores for sections with counts, units, smoothness note); ``uns["stpredict"]`` also records the
cohort, the models folder, the folds averaged, TTA and the gene matching.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stpredict.cohort.match import (
    check_gene_match,
    check_section_mpp,
    match_genes,
    matched_section,
)
from stpredict.errors import InputError
from stpredict.io import read_h5ad, read_json, read_table, write_h5ad

__all__ = [
    "cohort_patches",
    "cohort_grid",
    "predict_section",
    "predict_image_row",
    "score_cohort",
    "map_genes",
]

log = logging.getLogger(__name__)

_NOTE = (
    "layers['predicted']: mean over every fold model of the models folder of their TTA "
    "predictions (no fold saw this cohort); X: measured targets with each fold's fitted "
    "transform, averaged over the folds (NaN: not measured)"
)


def _spec_mpp(models: Any, adata: Any, tolerance: float, image: Any) -> float:
    sample = str(adata.uns["stpredict"]["sample_id"])
    mpp = float(adata.uns["stpredict"]["mpp"])
    check_section_mpp(mpp, models.patch_mpp, tolerance, file=image, sample=sample)
    return mpp


def cohort_patches(
    section: str | os.PathLike[str],
    image: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    out: Mapping[str, str],
    whiteness: Mapping[str, Any],
    tolerance: float,
) -> pd.DataFrame:
    """Spot patches of a section at the model's field of view, from its own image at its µm/px.

    Parameters
    ----------
    section
        ``results/cohorts/{cohort}/sections/{sample}.h5ad``.
    image
        Its full-resolution image.
    model_dir
        The cohort's models folder.
    out
        ``npy``, ``tsv``, ``json`` of the store.
    whiteness
        The cohort's ``qc.whiteness`` (``percentile``, ``max_white_frac``).
    tolerance
        ``reading.mpp_tolerance`` (module :mod:`stpredict.cohort.match`).

    Raises
    ------
    GeometryError
        The image is coarser than the model's stored pixels.
    """
    from stpredict.ingest.images import open_image
    from stpredict.patches.store import extract_patches
    from stpredict.wsi.card import load_model_dir

    models = load_model_dir(model_dir)
    adata = read_h5ad(section)
    mpp = _spec_mpp(models, adata, tolerance, image)
    with open_image(image, sample=str(adata.uns["stpredict"]["sample_id"])) as img:
        return extract_patches(
            img,
            adata.obsm["spatial"],
            models.spec,
            mpp,
            out["npy"],
            out["tsv"],
            out["json"],
            ids=adata.obs_names.to_list(),
            percentile=float(whiteness["percentile"]),
            max_white_frac=float(whiteness["max_white_frac"]),
            progress=False,
        )


def cohort_grid(
    section: str | os.PathLike[str],
    spots_json: str | os.PathLike[str],
    image: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    grid: str,
    out: Mapping[str, str],
    max_white_frac: float,
    tolerance: float,
) -> pd.DataFrame:
    """Super-resolution centres of a section with spots, cut at the model's geometry.

    The whiteness flag uses the threshold of the section's spot patches (``spots.json``), as
    :mod:`stpredict.learn.superres` does in the experiments.
    """
    from stpredict.ingest.images import open_image
    from stpredict.patches.centres import section_centres
    from stpredict.patches.store import extract_patches
    from stpredict.wsi.card import load_model_dir

    models = load_model_dir(model_dir)
    adata = read_h5ad(section)
    mpp = _spec_mpp(models, adata, tolerance, image)
    centres = section_centres(adata, grid)
    white = read_json(spots_json)["whiteness"]
    with open_image(image, sample=str(adata.uns["stpredict"]["sample_id"])) as img:
        return extract_patches(
            img,
            centres[["x", "y"]].to_numpy(),
            models.spec,
            mpp,
            out["npy"],
            out["tsv"],
            out["json"],
            ids=centres["id"].to_list(),
            percentile=float(white["percentile"]),
            max_white_frac=float(max_white_frac),
            threshold=float(white["threshold"]),
            extra=centres[["array_row", "array_col", "n_spots"]],
            progress=False,
        )


def _fold_transforms(models: Any) -> dict[str, dict[str, Any]]:
    """Fold id -> its ``fitted.json`` (beside its ``model.pt``)."""
    return {k: read_json(Path(p).parent / "fitted.json") for k, p in sorted(models.models.items())}


def _measured(
    fitted: Mapping[str, Mapping[str, Any]], sec: Any, kept: Any, genes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Measured and smoothed targets of ``genes``: each fold's fitted transform, averaged."""
    from stpredict.learn.folds import smoothed_targets
    from stpredict.learn.targets import from_dict

    platform = str(sec.uns["stpredict"]["platform"])
    xs, ss = [], []
    for f in fitted.values():
        transform = from_dict(dict(f["transform"]))
        idx = [list(transform.genes_).index(g) for g in genes]
        xs.append(transform.transform(kept)[:, idx])
        ss.append(smoothed_targets(transform, sec, kept.obs_names, platform)[:, idx])
    return np.mean(xs, axis=0), np.mean(ss, axis=0)


def _check_store(table: pd.DataFrame, adata: Any, store: Any) -> None:
    if table["id"].astype(str).tolist() != adata.obs_names.astype(str).tolist():
        raise InputError(
            "the patch store's spots are not the section's",
            file=store,
            sample=str(adata.uns["stpredict"]["sample_id"]),
            fix="rerun snakemake (cohort_patches rebuilds the store)",
        )


def predict_section(
    model_dir: str | os.PathLike[str],
    qc: str | os.PathLike[str],
    section: str | os.PathLike[str],
    store: str | os.PathLike[str],
    out: str | os.PathLike[str],
    cohort: str,
    min_gene_share: float,
    tta: int | None = None,
    batch_size: int = 128,
    device: str | None = None,
) -> Any:
    """Predict the kept spots of a section with counts and write them beside their measurements.

    Parameters
    ----------
    model_dir
        The cohort's models folder (``results/experiments/{experiment}`` of an earlier run).
    qc
        The QC'd section (``obs["keep"]``).
    section
        The section file (its images go to ``uns["spatial"]``).
    store
        The spot patch store (``.npy``; rows in the section's order).
    out
        The prediction file.
    cohort
        The cohort's name.
    min_gene_share
        See :func:`stpredict.cohort.match.check_gene_match`.
    tta, batch_size, device
        Dihedral transforms (``None`` = the experiment's), batch size, device.

    Returns
    -------
    anndata.AnnData
        What was written (module notes).
    """
    import anndata as ad

    from stpredict.outputs import (
        SCORE_COLUMNS,
        attach_gene_ids,
        finish_result,
        held_out_scores,
    )
    from stpredict.vocab import SPOT_OBS, target_units
    from stpredict.wsi.card import load_model_dir
    from stpredict.wsi.predict import predict_store

    models = load_model_dir(model_dir)
    adata = read_h5ad(qc, images=False)
    meta = adata.uns["stpredict"]
    sample = str(meta["sample_id"])
    match = match_genes(models.genes, adata.var, models.card.get("gene_ids"))
    check_gene_match(
        match,
        min_gene_share,
        file=meta.get("raw"),
        sample=sample,
        section_genes=adata.var_names,
        cohort=cohort,
    )
    table = read_table(Path(store).with_suffix(".tsv"), dtype={"id": str})
    _check_store(table, adata, store)
    sec = matched_section(adata, match)
    keep = sec.obs["keep"].to_numpy(dtype=bool)
    if not keep.any():
        raise InputError(
            "no spot of the section passed QC",
            file=qc,
            sample=sample,
            fix="check the section, or lower cohorts.{name}.qc thresholds",
        )
    kept = sec[keep].copy()
    genes = list(models.genes)
    measured = np.array([g in match["matched"] for g in genes])
    n_tta = int(tta or models.card["tta"])
    preds = predict_store(models, store, np.flatnonzero(keep), n_tta, device, batch_size)
    fitted = _fold_transforms(models)
    X, smooth = _measured(fitted, sec, kept, [g for g, m in zip(genes, measured, strict=True) if m])
    full = np.full((kept.n_obs, len(genes)), np.nan, np.float32)
    full_s = full.copy()
    full[:, measured], full_s[:, measured] = X, smooth
    obs = kept.obs.assign(spot_id=kept.obs_names.astype(str))
    obs = obs[[c for c in SPOT_OBS if c in obs]].copy()
    obs["fold"] = "mean"
    obs["qc_failed"] = False
    res = ad.AnnData(X=full, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    res.layers["predicted"] = preds
    res.layers["measured_smoothed"] = full_s
    res.obsm["spatial"] = np.asarray(kept.obsm["spatial"], dtype=np.float64)
    attach_gene_ids(res, [sec.var])
    res.var["measured"] = measured
    res.var[list(SCORE_COLUMNS)] = held_out_scores(res)
    name = models.transform_name
    res.uns["stpredict"] = _uns(models, model_dir, cohort, sample, n_tta, meta, match)
    res.uns["stpredict"]["target_transform"] = {
        "name": name,
        "fitted": {k: f["transform"] for k, f in fitted.items()},
    }
    res.uns["stpredict"] = json.loads(json.dumps(res.uns["stpredict"], default=str))
    finish_result(res, target_units(name))
    write_h5ad(res, out, spatial_from={sample: section})
    log.info(
        "%s: %d kept spots predicted by %d fold models of %s; %d of %d genes measured "
        "(%d by name, %d by id)",
        sample,
        res.n_obs,
        len(models.models),
        models.experiment,
        int(measured.sum()),
        len(genes),
        match["by_name"],
        match["by_id"],
    )
    return res


def _uns(
    models: Any,
    model_dir: Any,
    cohort: str,
    sample: str,
    tta: int,
    meta: Mapping[str, Any],
    match: Mapping[str, Any] | None,
) -> dict[str, Any]:
    out = {
        "task": "regression",
        "cohort": cohort,
        "sample_id": sample,
        "patient_id": str(meta.get("patient_id", "")),
        "platform": str(meta.get("platform", "image")),
        "mpp": meta.get("mpp"),
        "experiment": models.experiment,
        "model_dir": str(model_dir),
        "folds": sorted(models.models, key=lambda k: (len(k), k)),
        "averaged_over_folds": len(models.models),
        "tta": int(tta),
        "fov_um": models.spec.fov_um,
        "patch_mpp": models.patch_mpp,
        "size_px": models.spec.size_px,
        "note": _NOTE,
    }
    if match is not None:
        out["gene_match"] = {
            "n_model_genes": match["n_model_genes"],
            "by_name": match["by_name"],
            "by_id": match["by_id"],
            "share": match["share"],
            "missing": match["missing"],
        }
    return out


def predict_image_row(
    model_dir: str | os.PathLike[str],
    row: Mapping[str, Any],
    out: str | os.PathLike[str],
    store: str | os.PathLike[str],
    cohort: str,
    tile_um: float | None = None,
    background: Mapping[str, Any] | None = None,
    tta: int | None = None,
    batch_size: int = 128,
    tolerance: float | None = None,
    device: str | None = None,
) -> Any:
    """Predict an image-only row of a cohort sheet (its spots, or tiles; module notes).

    Parameters
    ----------
    row
        The sheet row (``sample_id``, ``patient_id``, ``image``, ``spots``, ``mpp``).
    store
        Patch store prefix (``{store}.npy|.tsv|.json``).
    tile_um
        Tile pitch in µm (``None``: the field of view; less: overlapping tiles, the
        super-resolution of an image-only row).
    background
        ``wsi.background`` (``rgb``, ``max_frac``).
    """
    from stpredict.outputs import finish_result
    from stpredict.vocab import target_units
    from stpredict.wsi.predict import predict_image

    sample = str(row["sample_id"])
    bg = dict(background or {})
    a = predict_image(
        model_dir,
        row["image"],
        spots=row.get("spots") or None,
        mpp=float(row["mpp"]) if row.get("mpp") else None,
        slide_id=sample,
        store=store,
        tile_um=tile_um,
        background_rgb=bg.get("rgb"),
        max_background_frac=bg.get("max_frac"),
        batch_size=batch_size,
        tta=tta,
        device=device,
        mpp_tolerance=tolerance,
    )
    a.obs.insert(0, "sample_id", sample)
    a.obs.insert(1, "patient_id", str(row.get("patient_id", "")))
    if "gene_ids" not in a.var:  # predict_image gives the card's ids (training sections')
        a.var["gene_ids"] = ""
    a.var["measured"] = False
    meta = dict(a.uns["stpredict"])
    meta.update(
        cohort=cohort,
        sample_id=sample,
        patient_id=str(row.get("patient_id", "")),
        platform="image",
        task="regression",
    )
    a.uns["stpredict"] = meta
    finish_result(a, target_units(str(meta["target_transform"]["name"])))
    write_h5ad(a, out)
    return a


def score_cohort(
    predictions: Sequence[str | os.PathLike[str]], alpha: float = 0.05
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """External validation: per-gene metrics of every section with counts, and their summary.

    Each section is a unit (:func:`stpredict.evaluate.metrics.score_experiment`, ``unit =
    sample_id``), scored on the genes it measures (``var["measured"]``), raw and smoothed
    targets, every kept spot. Nothing is tuned on the cohort.
    """
    from stpredict.evaluate.metrics import score_experiment

    adatas, platforms = [], {}
    for p in predictions:
        a = read_h5ad(p, images=False)
        a = a[:, a.var["measured"].to_numpy(dtype=bool)].copy()
        sample = str(a.uns["stpredict"]["sample_id"])
        platforms[sample] = str(a.uns["stpredict"]["platform"])
        adatas.append(a)
    return score_experiment(adatas, platforms, unit="sample_id", alpha=alpha)


def map_genes(adata: Any, genes: Sequence[str], n: int = 2) -> list[str]:
    """Choose the genes of a section's maps: those given that it predicts, else the ``n`` most variable.

    "Most variable" is the spread (SD) of the predictions over the section: no measured value
    is used to choose what is shown.
    """
    if genes:
        return [g for g in genes if g in set(adata.var_names)]
    pred = np.asarray(adata.layers["predicted"], dtype=float)
    sd = np.nanstd(pred, axis=0) if len(pred) else np.zeros(adata.n_vars)
    order = np.argsort(-np.nan_to_num(sd, nan=-1.0), kind="stable")
    return [str(adata.var_names[i]) for i in order[:n]]
