"""Super-resolution: predictions on new centres between the spots, beside the measured spots.

Job-time side of ``superres`` (DeepSpaCE's super-resolution). The centres are
:mod:`stpredict.patches.centres`, cut by the one extractor into a patch store of the same format
(``results/patches/{sample}/{grid}.npy``, whiteness flagged with the section's spot-patch
threshold); :func:`predict_superres` predicts them with TTA and writes one AnnData per
section with the measured spots and the imputed centres side by side.

Which models, and why it is honest: a centre is predicted by every outer fold model that tests
the section (the folds whose held-out predictions the section's prediction file collects) and
their predictions are averaged. Each of those models saw only its own training spots; a grid
centre is not measured, so no model was fitted on its label whichever fold it comes from
(within a section, a centre's patch overlaps training spots' patches of every fold, as any
prediction between measured spots must). The measured spots keep their HELD-OUT prediction
from the experiment's collected predictions, so the two kinds never mix a spot's own label
into its prediction.

Output (``results/superres/{experiment}/{sample}.h5ad``)
--------------------------------------------------------
* ``obs["kind"]``: ``measured`` (a scored spot: ``X`` = its measured target in the experiment's
  units, ``layers["predicted"]`` = its held-out prediction) or ``imputed`` (a grid centre, or a
  spot whose measurement failed QC on tissue: ``X`` NaN, ``layers["predicted"]``);
  ``obs["centre"]`` (``spot`` or the grid name), ``obs["qc_failed"]``, ``obs["fold"]`` (the
  held-out fold of a spot; the averaged folds of a centre, ``"0+1+2"``), ``array_row`` /
  ``array_col`` (a centre's mean array position; NaN on a stride grid), ``white_frac``.
* ``obsm["spatial"]``: full-resolution pixel ``[x, y]``; ``uns["spatial"]`` as scanpy expects.
* ``var``: the collected predictions' (``gene_ids`` and the held-out scores of the measured
  spots, :mod:`stpredict.outputs`).
* ``uns["stpredict"]``: experiment, sample, grid, folds, target transform, ``units``, genes,
  numbers of centres (all, white, predicted), the whiteness threshold and µm/px, and the
  smoothness note.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping

import anndata as ad
import numpy as np
import pandas as pd

from stpredict.errors import InputError
from stpredict.io import read_h5ad, read_json, read_table, write_h5ad
from stpredict.outputs import finish_result
from stpredict.vocab import UNITS_KEY

__all__ = ["grid_rows", "predict_grid", "predict_superres", "KINDS"]

log = logging.getLogger(__name__)

#: values of ``obs["kind"]``
KINDS: tuple[str, str] = ("measured", "imputed")


def grid_rows(table: pd.DataFrame, whiteness: bool) -> np.ndarray:
    """Rows of a grid store to predict: on the image, and not white when ``whiteness``."""
    use = table["pad_frac"].to_numpy(dtype=float) < 1.0
    if whiteness:
        use &= ~table["white"].astype(bool).to_numpy()
    return np.flatnonzero(use)


def predict_grid(
    models: Mapping[str, str | os.PathLike[str]],
    store: str | os.PathLike[str],
    rows: np.ndarray,
    genes: list[str],
    tta: int,
    precision: str = "auto",
    device: str | None = None,
    batch_size: int = 128,
) -> np.ndarray:
    """Mean over fold models of their TTA predictions of ``genes`` on some rows of a store.

    Parameters
    ----------
    models
        Fold id -> ``model.pt``.
    store, rows
        The grid's patch store and the rows to predict.
    genes
        Outputs to return, in this order; every model must predict them (``meta["genes"]``).
    tta, precision, device, batch_size
        As :func:`stpredict.learn.predict.predict` (batched; CUDA when present).

    Returns
    -------
    numpy.ndarray
        float32 ``(len(rows), len(genes))``: the mean of the folds' predictions.
    """
    from stpredict.learn.predict import load_model, predict

    total = np.zeros((len(rows), len(genes)), dtype=np.float64)
    for fold, path in sorted(models.items()):
        model, meta = load_model(path, device=device or "cpu")
        known = [str(g) for g in meta.get("genes") or []]
        missing = [g for g in genes if g not in known]
        if missing:
            raise InputError(
                f"fold {fold}'s model does not predict {len(missing)} of the section's genes "
                f"(e.g. {', '.join(missing[:3])})",
                file=path,
                fix="rerun snakemake: the model and the collected predictions are of different runs",
            )
        preds, _ = predict(
            model,
            [store],
            [np.asarray(rows, dtype=np.int64)],
            batch_size=batch_size,
            tta=int(tta),
            device=device,
            precision=precision,
        )
        total += preds[:, [known.index(g) for g in genes]]
    return (total / max(len(models), 1)).astype(np.float32)


def _measured_part(pred: ad.AnnData, sample: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Obs, measured ``X`` and held-out predictions of the section's spots (prediction file)."""
    failed = (
        pred.obs["qc_failed"].to_numpy(dtype=bool)
        if "qc_failed" in pred.obs
        else np.zeros(pred.n_obs, dtype=bool)
    )
    obs = pd.DataFrame(
        {
            "sample_id": sample,
            "kind": np.where(failed, "imputed", "measured"),
            "centre": "spot",
            "qc_failed": failed,
            "fold": pred.obs["fold"].astype(str).to_numpy(),
            "array_row": pred.obs["array_row"].to_numpy(dtype=float),
            "array_col": pred.obs["array_col"].to_numpy(dtype=float),
            "white_frac": np.nan,
        },
        index=pd.Index(pred.obs_names.astype(str)),
    )
    X = np.asarray(pred.X.toarray() if hasattr(pred.X, "toarray") else pred.X, dtype=np.float32)
    X[failed] = np.nan
    return obs, X, np.asarray(pred.layers["predicted"], dtype=np.float32)


def predict_superres(
    predictions: str | os.PathLike[str],
    section: str | os.PathLike[str],
    grid_npy: str | os.PathLike[str],
    models: Mapping[str, str | os.PathLike[str]],
    out_h5ad: str | os.PathLike[str],
    experiment: str,
    grid: str,
    tta: int,
    precision: str = "auto",
    whiteness: bool = True,
    device: str | None = None,
) -> ad.AnnData:
    """Predict a section's grid centres and write them with its measured spots (module notes).

    Parameters
    ----------
    predictions
        The experiment's collected predictions of the section (held-out spots).
    section
        The section AnnData (``uns["spatial"]``, µm/px).
    grid_npy
        The grid's patch store (``.tsv`` and ``.json`` beside it).
    models
        Fold id -> ``model.pt`` of the outer folds that test the section.
    out_h5ad
        Output path.
    experiment, grid
        Names recorded in ``uns``.
    tta, precision, device
        As :func:`predict_grid`.
    whiteness
        Leave out the white centres (``qc.whiteness.enabled``; the store's flag uses the section's
        spot-patch threshold).

    Returns
    -------
    anndata.AnnData
        What was written.
    """
    from pathlib import Path

    pred = read_h5ad(predictions, images=False)  # the section gives the images
    sec = read_h5ad(section)
    sample = str(sec.uns["stpredict"]["sample_id"])
    if pred.uns["stpredict"].get("task") != "regression":
        raise InputError(
            "super-resolution predicts gene expression; this experiment classifies clusters",
            file=predictions,
            sample=sample,
            fix="set superres.enabled: false for cluster experiments",
        )
    genes = [str(g) for g in pred.var_names]
    table = read_table(Path(grid_npy).with_suffix(".tsv"), dtype={"id": str})
    meta = read_json(Path(grid_npy).with_suffix(".json"))
    rows = grid_rows(table, whiteness)
    imputed = predict_grid(
        models, grid_npy, rows, genes, tta=tta, precision=precision, device=device
    )
    g = table.iloc[rows]
    folds = "+".join(sorted(models, key=lambda k: (len(k), k)))
    grid_obs = pd.DataFrame(
        {
            "sample_id": sample,
            "kind": "imputed",
            "centre": grid,
            "qc_failed": False,
            "fold": folds,
            "array_row": g["array_row"].to_numpy(dtype=float) if "array_row" in g else np.nan,
            "array_col": g["array_col"].to_numpy(dtype=float) if "array_col" in g else np.nan,
            "white_frac": g["white_frac"].to_numpy(dtype=float),
        },
        index=pd.Index(g["id"].astype(str).to_numpy()),
    )
    m_obs, m_X, m_pred = _measured_part(pred, sample)
    out = ad.AnnData(
        X=np.concatenate([m_X, np.full((len(rows), len(genes)), np.nan, np.float32)]),
        obs=pd.concat([m_obs, grid_obs]),
        var=pred.var.copy(),  # gene ids and the held-out scores of the measured spots
    )
    out.layers["predicted"] = np.concatenate([m_pred, imputed]).astype(np.float32)
    out.obsm["spatial"] = np.concatenate(
        [np.asarray(pred.obsm["spatial"], dtype=float), g[["x", "y"]].to_numpy(dtype=float)]
    )
    tt = dict(pred.uns["stpredict"].get("target_transform", {}))
    tt.pop("fitted", None)  # per fold; in the experiment's fold files
    out.uns["spatial"] = sec.uns["spatial"]
    out.uns["stpredict"] = json.loads(
        json.dumps(
            {
                "experiment": experiment,
                "sample_id": sample,
                "grid": grid,
                "folds": sorted(models),
                "averaged_over_folds": len(models),
                "tta": int(tta),
                "target_transform": tt,
                "genes": genes,
                "mpp": float(sec.uns["stpredict"]["mpp"]),
                "n_measured": int((m_obs["kind"] == "measured").sum()),
                "n_qc_failed": int(m_obs["qc_failed"].sum()),
                "n_centres": int(len(table)),
                "n_centres_white": int(table["white"].astype(bool).sum()),
                "n_centres_predicted": int(len(rows)),
                "whiteness": meta.get("whiteness", {}),
                "note": "measured: held-out predictions of the section's scored spots; imputed: "
                "grid centres (and QC-failed spots) predicted by the mean of the fold models "
                "that test the section",
            },
            default=str,
        )
    )
    finish_result(out, pred.uns["stpredict"][UNITS_KEY])
    write_h5ad(out, out_h5ad)
    log.info(
        "%s / %s: %d measured spots, %d of %d %s centres predicted (%d white), %d QC-failed spots",
        experiment,
        sample,
        out.uns["stpredict"]["n_measured"],
        len(rows),
        len(table),
        grid,
        out.uns["stpredict"]["n_centres_white"],
        out.uns["stpredict"]["n_qc_failed"],
    )
    return out
