"""The jobs of one fold: split manifest, training and prediction, and the per-section predictions.

Job-time side of an experiment (the parse-time side is :mod:`stpredict.learn.experiments`):
:func:`build_manifest` splits the kept spots and audits the result (rule ``make_splits``);
:func:`train_fold` fits the targets on the fold's training spots and trains its model
(``train_fold``); :func:`predict_fold` predicts its test spots with TTA (``predict_fold``);
:func:`collect_predictions` joins the folds per held-out section (``collect_predictions``).
Cluster labels are harmonised by :func:`apply_cluster_map` wherever they are read, and every
section must hold most of a fold's genes (:func:`check_gene_coverage`).
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from stpredict.errors import ConfigError, InputError
from stpredict.ingest.section import load_sections
from stpredict.io import (
    load_npy,
    read_h5ad,
    read_json,
    read_table,
    write_h5ad,
    write_json,
    write_table,
)
from stpredict.learn.experiments import series_sections
from stpredict.learn.targets import TRANSFORM_NAMES
from stpredict.outputs import (
    CLUSTER_COLUMNS,
    SCORE_COLUMNS,
    attach_gene_ids,
    categorical_clusters,
    cluster_categories,
    finish_result,
    held_out_scores,
)
from stpredict.vocab import CLUSTER_UNITS, SPOT_OBS, UNITS_KEY, target_units

__all__ = [
    "build_manifest",
    "choose_epochs",
    "check_gene_coverage",
    "smoothed_targets",
    "train_fold",
    "predict_fold",
    "collect_predictions",
    "write_manifest",
    "read_manifest",
    "apply_cluster_map",
    "read_cluster_map",
    "cluster_map_labels",
    "fold_data",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ manifest
def _seed(exp: Mapping[str, Any], *parts: str) -> int:
    return (int(exp["seed"]) * 1_000_003 + zlib.crc32("/".join(parts).encode())) % (2**31)


def _kept(adata: ad.AnnData) -> np.ndarray:
    return (
        adata.obs["keep"].to_numpy(dtype=bool)
        if "keep" in adata.obs
        else np.ones(adata.n_obs, bool)
    )


def build_manifest(
    exp: Mapping[str, Any],
    sections: Mapping[str, ad.AnnData],
    sheet: pd.DataFrame,
    name: str = "experiment",
) -> pd.DataFrame:
    """Split the kept spots of the experiment's sections and audit the result for leakage."""
    from stpredict.learn import splits

    apply_cluster_map(exp, sections)
    rows, xy, mpp = [], [], {}
    excluded = {str(c) for c in exp["exclude_clusters"]}
    if exp["task"] == "clusters" and excluded:
        present = set().union(*(set(a.obs["cluster"].astype(str)) for a in sections.values())) - {
            ""
        }
        unknown = sorted(excluded - present)
        if unknown and exp.get("parent"):  # sections.each: the list serves every section
            log.warning(
                "experiment '%s': exclude_clusters %s: no such cluster in this section",
                name,
                unknown,
            )
        elif unknown:
            raise ConfigError(
                f"exclude_clusters names cluster(s) {unknown} that no section of experiment "
                f"'{name}' has (its clusters: {', '.join(sorted(present))})",
                fix="use the clusters' own labels (Space Ranger numbers graphclust clusters from 1)",
            )
    for sample, a in sections.items():
        keep = _kept(a)
        if exp["task"] == "clusters":
            lab = a.obs["cluster"].astype(str).to_numpy()
            keep &= (lab != "") & ~np.isin(lab, list(excluded))
        rows.append(
            pd.DataFrame(
                {
                    "sample_id": sample,
                    "spot_id": a.obs_names[keep].astype(str),
                    "patient_id": str(sheet.loc[sample, "patient_id"]),
                }
            )
        )
        xy.append(np.asarray(a.obsm["spatial"])[keep])
        mpp[sample] = float(a.uns["stpredict"]["mpp"])
    spots = pd.concat(rows, ignore_index=True)
    split = exp["split"]
    seed = _seed(exp, name, "split")
    scheme = split["scheme"]
    if scheme == "leave_one_patient_out":
        man = splits.leave_one_patient_out(
            spots,
            inner_folds=int(split["inner_folds"]),
            seed=seed,
            inner_assignment=split["inner_assignment"],
        )
    elif scheme == "random_within_section":
        man = splits.random_within_section(
            spots, n_folds=int(split["n_folds"]), val_frac=float(split["val_frac"]), seed=seed
        )
    elif scheme == "spatial_blocks":
        spots_xy = np.concatenate(xy)
        man = splits.spatial_blocks_within_section(
            spots,
            spots_xy,
            block_um=float(split["block_um"]),
            mpp=mpp,
            n_folds=int(split["n_folds"]),
            seed=seed,
            buffer_um=float(split["buffer_um"]),
            val_frac=float(split["val_frac"]),
        )
    elif scheme == "section_imputation" and split.get("series"):
        man = splits.leave_one_section_out(
            spots,
            series_sections(exp, sheet),
            val_frac=float(split["val_frac"]),
            seed=seed,
        )
    elif scheme == "section_imputation":
        man = splits.section_imputation(
            spots,
            split["train_sections"],
            split["test_section"],
            val_frac=float(split["val_frac"]),
            seed=seed,
        )
    else:  # pragma: no cover (schema)
        raise ConfigError(f"unknown split scheme '{scheme}'")
    if float(split.get("labelled_frac", 1.0)) < 1.0:  # a scarce-label setting
        from stpredict.learn.pool import mask_labels

        man = mask_labels(man, float(split["labelled_frac"]), _seed(exp, name, "labels"))
    meta = sheet.loc[list(sections), ["sample_id", "patient_id", "series"]].reset_index(drop=True)
    splits.audit(man, meta)
    _check_folds(man, spots, name)
    return man


def _check_folds(man: pd.DataFrame, spots: pd.DataFrame, name: str) -> None:
    """Every fold must train on something and every outer fold test something."""
    for fold, g in man.groupby("fold", sort=False):
        roles = g["role"].value_counts()
        inner = "." in str(fold)
        short = [
            r for r in (("train", "val") if inner else ("train", "test")) if not roles.get(r, 0)
        ]
        if short:
            sizes = spots.groupby("sample_id").size()
            small = sizes.idxmin()
            raise InputError(
                f"experiment '{name}': fold {fold} has no {' and no '.join(short)} spots "
                f"(kept spots per section: {', '.join(f'{k} {v}' for k, v in sizes.items())})",
                sample=str(small),
                fix="lower split.n_folds, relax the QC thresholds, or leave the small section out",
            )


def choose_epochs(histories: Sequence[str | os.PathLike[str]]) -> int:
    """ST-Net's epoch choice from the inner folds' ``history.tsv`` files (1-based epoch).

    Regression (every history has finite ``val_sse``): the epoch whose squared error summed over
    all inner held-out folds, spots and outputs (the pooled ``val_sse``, computed on ``val_tta``
    predictions) is smallest — ST-Net's ``cross_validate.py``, which weighs folds by their
    number of spots. Otherwise (classification, or histories without ``val_sse``): the epoch with
    the smallest mean over folds of the per-fold mean validation loss. Only the epochs that every
    inner fold has are considered.
    """
    if not histories:
        raise InputError("choose_epochs needs at least one inner-fold history")
    tables = [read_table(h) for h in histories]
    for h, t in zip(histories, tables, strict=True):
        if t.empty or "epoch" not in t or "val_loss" not in t:
            raise InputError(
                "an inner fold has an empty training history (no epoch, val_loss)",
                file=h,
                fix="rerun the inner fold's train_fold job",
            )
    common = sorted(set.intersection(*(set(t["epoch"].astype(int)) for t in tables)))
    if not common:
        raise InputError("the inner folds share no epoch", file=histories[0])
    tabs = [
        t.assign(epoch=t["epoch"].astype(int))
        .drop_duplicates("epoch", keep="last")
        .set_index("epoch")
        .loc[common]
        for t in tables
    ]
    sse = [t["val_sse"].to_numpy(dtype=float) if "val_sse" in t else None for t in tabs]
    if all(v is not None and np.isfinite(v).all() for v in sse):
        score, what = np.sum(sse, axis=0), "pooled validation SSE"
    else:
        score, what = (
            np.mean([t["val_loss"].to_numpy(dtype=float) for t in tabs], axis=0),
            "mean validation loss",
        )
    if not np.isfinite(score).any():
        raise InputError(
            f"no finite {what} in the inner histories",
            file=histories[0],
            fix="check that the inner folds have validation spots",
        )
    best = common[int(np.nanargmin(score))]
    log.info(
        "choose_epochs: epoch %d of %d by the %s over %d inner folds",
        best,
        len(common),
        what,
        len(tables),
    )
    return int(best)


# ------------------------------------------------------------------------------ fold data
def _fold_part(manifest: pd.DataFrame, fold: str, role: str) -> pd.DataFrame:
    from stpredict.learn.splits import fold_rows

    return fold_rows(manifest, fold, role)


def _subsets(
    part: pd.DataFrame, sections: Mapping[str, ad.AnnData]
) -> tuple[list[ad.AnnData], list[str], list[np.ndarray]]:
    """Per section: the AnnData restricted to ``part``'s spots, its sample id and store rows."""
    ads, samples, rows = [], [], []
    for sample, g in part.groupby("sample_id", sort=True):
        a = sections[sample]
        pos = a.obs_names.get_indexer(g["spot_id"].astype(str))
        if (pos < 0).any():
            raise InputError(
                f"{int((pos < 0).sum())} manifest spots are not in the section",
                sample=str(sample),
                fix="rerun make_splits",
            )
        ads.append(a[pos].copy())
        samples.append(str(sample))
        rows.append(pos.astype(np.int64))
    return ads, samples, rows


def _targets_cfg(exp: Mapping[str, Any]) -> Mapping[str, Any]:
    return exp["targets"]


def _fit_targets(exp: Mapping[str, Any], train_ads: list[ad.AnnData]) -> tuple[Any, Any]:
    from stpredict.learn.targets import GeneSelector, make_transform

    tcfg = _targets_cfg(exp)
    g = tcfg["genes"]
    selector = GeneSelector(
        mode=g["mode"],
        n=int(g["n"]),
        panel=g["panel"] or None,
        min_frac=float(g["min_frac"]),
        allow_missing=bool(g.get("allow_missing", False)),
        normalization=g["rank_by"],
    )
    selector.fit(train_ads)
    transform = make_transform(TRANSFORM_NAMES[tcfg["transform"]], genes=list(selector.genes_)).fit(
        train_ads
    )
    return selector, transform


def check_gene_coverage(
    ads: Sequence[ad.AnnData], genes: Sequence[str], genes_cfg: Mapping[str, Any]
) -> None:
    """Refuse a section that lacks most of the selected genes (its targets would be zeros).

    A gene absent from a section's matrix counts as zero there (legacy ST files omit genes
    without counts), which is right for a few genes and silently wrong for most of them: a
    cohort mixing Ensembl-id and symbol sections gives all-zero targets. Below
    ``genes.min_coverage`` of the selected genes present, a section is refused; below all of
    them, a warning with the numbers is logged.
    """
    genes = [str(g) for g in genes]
    if not genes:
        return
    need = float(genes_cfg["min_coverage"])
    for a in ads:
        sample = str(a.obs["sample_id"].iloc[0]) if "sample_id" in a.obs and a.n_obs else "?"
        have = pd.Index(a.var_names.astype(str))
        missing = [g for g in genes if g not in have]
        share = 1.0 - len(missing) / len(genes)
        if not missing:
            continue
        ids = (
            np.char.startswith(np.asarray(have[:200], dtype=str), "ENS").mean() if len(have) else 0
        )
        sel_ids = np.mean([g.startswith("ENS") for g in genes])
        hint = ""
        if abs(ids - sel_ids) > 0.5:
            hint = (
                " (its genes are " + ("Ensembl ids" if ids > 0.5 else "symbols") + ", the "
                "selected genes " + ("Ensembl ids" if sel_ids > 0.5 else "symbols") + ")"
            )
        msg = (
            f"the section lacks {len(missing)} of the {len(genes)} selected genes{hint}, e.g. "
            f"{', '.join(missing[:4])}; they would be predicted against zeros"
        )
        if share < need:
            raise InputError(
                msg,
                sample=sample,
                fix="give every section the same gene naming (reading.gene_map maps "
                "Ensembl ids to symbols), leave the section out of the experiment, "
                "or lower targets.genes.min_coverage",
            )
        log.warning("sample '%s': %s (%.0f%% of the genes present)", sample, msg, 100 * share)


def smoothed_targets(
    transform: Any, section: ad.AnnData, spot_ids: Sequence[str], platform: str
) -> np.ndarray:
    """ST-Net's smoothed measurements of some spots, from every kept spot of their section.

    The section's kept spots are transformed with the fold's fitted ``transform`` and averaged
    over each spot's neighbourhood (:func:`stpredict.evaluate.metrics.smooth_measurements`: ST 3 x 3,
    Visium the spot and its six neighbours), so a spot's smoothed value does not depend on which
    of its neighbours happen to be test spots of the same fold (random within-section splits).
    """
    from stpredict.evaluate.metrics import smooth_measurements

    kept = section[_kept(section)]
    pos = kept.obs_names.get_indexer([str(i) for i in spot_ids])
    if (pos < 0).any():
        sample = str(section.obs["sample_id"].iloc[0]) if "sample_id" in section.obs else None
        raise InputError(
            f"{int((pos < 0).sum())} spots are not kept spots of the section",
            sample=sample,
            fix="rerun make_splits",
        )
    values = transform.transform(kept)
    smooth = smooth_measurements(
        values, kept.obs["array_row"].to_numpy(), kept.obs["array_col"].to_numpy(), platform
    )
    return smooth[pos]


def _labels(exp: Mapping[str, Any], ads: list[ad.AnnData]) -> np.ndarray:
    return (
        np.concatenate([a.obs["cluster"].astype(str).to_numpy() for a in ads])
        if ads
        else np.array([], str)
    )


def _train_config(
    exp: Mapping[str, Any], fold: str, name: str, epochs: int | None, num_workers: int = 0
) -> Any:
    from stpredict.learn.train import TrainConfig

    cfg = TrainConfig.from_experiment(exp, _seed(exp, name, "train", fold), num_workers=num_workers)
    if epochs is not None:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "epochs": int(epochs), "patience": None})
    return cfg


def train_fold(
    exp: Mapping[str, Any],
    name: str,
    fold: str,
    manifest: pd.DataFrame,
    sections: Mapping[str, ad.AnnData],
    stores: Mapping[str, str],
    outputs: Mapping[str, str | os.PathLike[str]],
    inner_histories: Sequence[str] = (),
    device: str | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Fit targets on the fold's training spots, audit the fit, and train the fold's model.

    Writes ``outputs["model"]`` and ``outputs["history"]`` (by :func:`stpredict.learn.train.train`,
    which keeps ``checkpoint.pt`` / ``best.pt`` beside the model only while training) and
    ``outputs["fitted"]`` (gene set, target transform and classes, each with the record of what
    it was fitted on). The manifest's train/val spot ids and the fitted transform go into the
    resume signature: a rerun after a change retrains from scratch. ``num_workers``: data-loader
    processes (a resource: :func:`stpredict.learn.train.loader_workers`).
    """
    from stpredict.learn.splits import audit_fitted
    from stpredict.learn.train import PatchDataset, encode_labels, train

    out = Path(outputs["model"]).parent
    out.mkdir(parents=True, exist_ok=True)
    written = {"model_path": outputs["model"], "history_path": outputs["history"]}
    apply_cluster_map(exp, sections)
    tr_ads, tr_samples, tr_rows = _subsets(_fold_part(manifest, fold, "train"), sections)
    va_ads, va_samples, va_rows = _subsets(_fold_part(manifest, fold, "val"), sections)
    epochs = choose_epochs(inner_histories) if inner_histories else None
    if epochs is not None:
        log.info("fold %s: %d epochs chosen on inner folds %s", fold, epochs, list(inner_histories))
        va_ads, va_samples, va_rows = [], [], []  # final retrain on all training patients
    fitted: dict[str, Any] = {
        "experiment": name,
        "fold": fold,
        "task": exp["task"],
        "epochs_from_inner_folds": epochs,
    }
    cfg = _train_config(exp, fold, name, epochs, num_workers)
    # what the weights depend on beyond the datasets (train() hashes the stores, rows, targets)
    data_sig: dict[str, Any] = {
        "experiment": name,
        "fold": str(fold),
        "task": fitted["task"],
        "train_spots": [
            f"{s}:{i}" for a, s in zip(tr_ads, tr_samples, strict=True) for i in a.obs_names
        ],
        "val_spots": [
            f"{s}:{i}" for a, s in zip(va_ads, va_samples, strict=True) for i in a.obs_names
        ],
        "targets": dict(_targets_cfg(exp)) if fitted["task"] != "clusters" else None,
    }
    tr_stores = [stores[s] for s in tr_samples]
    va_stores = [stores[s] for s in va_samples]
    if exp["task"] == "clusters":
        y_tr = _labels(exp, tr_ads)
        codes_tr, classes = encode_labels(y_tr, exclude=None)
        fitted["classes"] = [str(c) for c in classes]
        fitted["classes_fitted_on"] = {"samples": sorted(tr_samples), "n_spots": int(len(y_tr))}
        audit_fitted(fitted["classes_fitted_on"], manifest, fold, name="cluster classes")
        train_ds = PatchDataset(tr_stores, tr_rows, labels=codes_tr)
        val_ds = None
        if va_ads:
            y_va = _labels(exp, va_ads)
            lut = {c: i for i, c in enumerate(fitted["classes"])}
            codes_va = np.array([lut.get(c, -1) for c in y_va])
            ok = codes_va >= 0
            va_rows_ok, start = [], 0
            for r in va_rows:
                va_rows_ok.append(r[ok[start : start + len(r)]])
                start += len(r)
            val_ds = PatchDataset(va_stores, va_rows_ok, labels=codes_va[ok])
        result = train(
            cfg,
            train_ds,
            val_ds,
            out,
            classes=fitted["classes"],
            target_transform="clusters",
            data_signature=data_sig,
            device=device,
            **written,
        )
    else:
        selector, transform = _fit_targets(exp, tr_ads)
        check_gene_coverage(tr_ads + va_ads, selector.genes_, _targets_cfg(exp)["genes"])
        audit_fitted(selector.fitted_on, manifest, fold, name="gene selection")
        audit_fitted(transform.fitted_on, manifest, fold, name="target transform")
        fitted["genes"] = selector.to_dict()
        fitted["transform"] = transform.to_dict()
        fitted["transform_name"] = _targets_cfg(exp)["transform"]
        y_tr = np.concatenate([transform.transform(a) for a in tr_ads]).astype(np.float32)
        train_ds = PatchDataset(tr_stores, tr_rows, targets=y_tr)
        val_ds = None
        if va_ads:
            y_va = np.concatenate([transform.transform(a) for a in va_ads]).astype(np.float32)
            val_ds = PatchDataset(va_stores, va_rows, targets=y_va)
        data_sig["transform"] = fitted["transform"]
        result = train(
            cfg,
            train_ds,
            val_ds,
            out,
            genes=list(selector.genes_),
            target_transform=fitted["transform_name"],
            data_signature=data_sig,
            device=device,
            **written,
        )
    fitted["train_config"] = {k: v for k, v in cfg.to_dict().items() if k != "num_workers"}
    fitted["result"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}
    write_json(fitted, outputs["fitted"])
    return result


def _qc_failed_part(
    exp: Mapping[str, Any], test_part: pd.DataFrame, sections: Mapping[str, ad.AnnData]
) -> pd.DataFrame:
    """Spots of the fold's test sections that failed QC on tissue (section imputation only).

    A section imputation holds whole sections out, so the spots whose measurement failed
    (:func:`stpredict.patches.qc.qc_failed`: too few UMI or genes, patch on tissue) are imputed
    like the rest of the section; the split manifest, the training and every score leave them out.
    """
    from stpredict.patches.qc import qc_failed

    empty = pd.DataFrame({"sample_id": pd.Series(dtype=str), "spot_id": pd.Series(dtype=str)})
    if exp["split"]["scheme"] != "section_imputation" or exp["task"] != "regression":
        return empty
    parts = [empty]
    for sample in sorted(set(test_part["sample_id"].astype(str))):
        a = sections[sample]
        ids = a.obs_names[qc_failed(a)].astype(str)
        parts.append(pd.DataFrame({"sample_id": sample, "spot_id": ids}))
    return pd.concat(parts, ignore_index=True)


def _fold_obs(ads: Sequence[ad.AnnData], fold: str, n_failed: int) -> pd.DataFrame:
    """Build the ``obs`` of a fold's prediction file: spot columns, ``fold``, ``qc_failed``."""
    obs = pd.concat([a.obs.assign(spot_id=a.obs_names.astype(str)) for a in ads])
    obs.index = [f"{s}:{i}" for s, i in zip(obs["sample_id"], obs["spot_id"], strict=True)]
    obs = obs[[c for c in SPOT_OBS if c in obs]].copy()
    obs["fold"] = str(fold)
    obs["qc_failed"] = np.arange(len(obs)) >= len(obs) - n_failed
    return obs


def _regression_output(
    exp: Mapping[str, Any],
    fitted: Mapping[str, Any],
    te_ads: Sequence[ad.AnnData],
    te_samples: Sequence[str],
    sections: Mapping[str, ad.AnnData],
    obs: pd.DataFrame,
    preds: np.ndarray,
    uns: dict[str, Any],
) -> ad.AnnData:
    """Measured targets (NaN for QC-failed spots), predictions and smoothed targets of a fold."""
    from stpredict.learn.targets import from_dict

    transform = from_dict(fitted["transform"])
    genes = [str(g) for g in from_dict(fitted["genes"]).genes_]
    check_gene_coverage(te_ads, genes, _targets_cfg(exp)["genes"])
    n_failed = int(obs["qc_failed"].sum())
    nan = np.full((n_failed, len(genes)), np.nan, np.float32)
    X = np.concatenate([transform.transform(a) for a in te_ads] + [nan]).astype(np.float32)
    out = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))
    out.layers["predicted"] = preds.astype(np.float32)
    out.layers["measured_smoothed"] = np.concatenate(
        [
            smoothed_targets(
                transform, sections[s], a.obs_names, sections[s].uns["stpredict"]["platform"]
            )
            for s, a in zip(te_samples, te_ads, strict=True)
        ]
        + [nan]
    ).astype(np.float32)
    uns["target_transform"] = {"name": fitted["transform_name"], "fitted": fitted["transform"]}
    uns[UNITS_KEY] = target_units(fitted["transform_name"])
    uns["genes"] = {"selection": fitted["genes"], "names": genes}
    attach_gene_ids(out, [sections[s].var for s in te_samples])
    return out


def predict_fold(
    exp: Mapping[str, Any],
    name: str,
    fold: str,
    manifest: pd.DataFrame,
    sections: Mapping[str, ad.AnnData],
    stores: Mapping[str, str],
    model_path: str | os.PathLike[str],
    fitted_path: str | os.PathLike[str],
    out_h5ad: str | os.PathLike[str],
    device: str | None = None,
    batch_size: int = 128,
) -> ad.AnnData:
    """Predict the fold's test spots (with TTA) and write measured + predicted values as AnnData.

    Section imputation also predicts the test sections' spots that failed QC on tissue
    (:func:`_qc_failed_part`): they follow the test spots with ``obs["qc_failed"]`` true and NaN
    measured values (``X``, ``measured_smoothed``); every scoring step leaves them out
    (:func:`stpredict.evaluate.metrics.scored_spots`).
    """
    from stpredict.learn.predict import load_model, predict

    fitted = read_json(fitted_path)
    apply_cluster_map(exp, sections)
    test_part = _fold_part(manifest, fold, "test")
    te_ads, te_samples, te_rows = _subsets(test_part, sections)
    qf_ads, qf_samples, qf_rows = _subsets(_qc_failed_part(exp, test_part, sections), sections)
    model, meta = load_model(model_path, device=device or "cpu")
    preds, embs = predict(
        model,
        [stores[s] for s in te_samples + qf_samples],
        te_rows + qf_rows,
        batch_size=batch_size,
        tta=int(exp["tta"]),
        device=device,
        precision=str(exp["train"]["precision"]),
    )
    n_failed = sum(a.n_obs for a in qf_ads)
    if n_failed:
        log.info("fold %s: %d spots that failed QC on tissue predicted too", fold, n_failed)
    obs = _fold_obs(te_ads + qf_ads, fold, n_failed)
    spatial = np.concatenate([np.asarray(a.obsm["spatial"]) for a in te_ads + qf_ads])
    uns: dict[str, Any] = {
        "experiment": name,
        "fold": str(fold),
        "task": fitted["task"],
        "tta": int(exp["tta"]),
        "model": {k: v for k, v in meta.items() if isinstance(v, (str, int, float))},
    }
    if fitted["task"] == "clusters":
        classes = fitted["classes"]
        lut = {c: i for i, c in enumerate(classes)}
        true = _labels(exp, te_ads)
        X = np.zeros((len(true), len(classes)), np.float32)
        for i, c in enumerate(true):
            if c in lut:
                X[i, lut[c]] = 1.0
        p = np.exp(preds - preds.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        out = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"cluster_{c}" for c in classes]))
        out.layers["predicted"] = p.astype(np.float32)
        out.var["cluster"] = [str(c) for c in classes]
        out.obs["cluster_true"] = true
        out.obs["cluster_pred"] = np.asarray(classes)[preds.argmax(1)]
        categorical_clusters(out, cluster_categories(classes, true, out.obs["cluster"]))
        uns[UNITS_KEY] = CLUSTER_UNITS
        uns["classes"] = classes
    else:
        out = _regression_output(exp, fitted, te_ads, te_samples, sections, obs, preds, uns)
    out.obsm["spatial"] = spatial
    out.obsm["embedding"] = embs.astype(np.float32)
    out.uns["stpredict"] = json.loads(json.dumps(uns, default=str))
    finish_result(out, uns[UNITS_KEY])
    write_h5ad(out, out_h5ad)
    return out


def collect_predictions(
    fold_files: Sequence[str | os.PathLike[str]],
    sample: str,
    out_h5ad: str | os.PathLike[str],
    section: str | os.PathLike[str] | None = None,
    cluster_labels: Sequence[str] = (),
) -> ad.AnnData:
    """One self-contained AnnData per held-out section from the folds that tested its spots.

    Folds that selected different genes (``top_mean`` fitted per fold) are joined on the genes
    they share; the per-fold transforms stay in ``uns["folds"]``. The file carries what
    :mod:`stpredict.outputs` lists: ``uns["spatial"]`` of ``section`` (the section file), the
    genes' ids and the section's held-out scores in ``var`` (regression), Categorical cluster
    columns on one category list (clusters: ``cluster_labels``, the cluster map's labels when the
    experiment has one, plus every fold's classes and the measured labels), the units key and
    the smoothness note.
    """
    from stpredict.ingest.section import read_var

    parts, folds = [], {}
    for f in fold_files:
        a = read_h5ad(f)
        a = a[a.obs["sample_id"].astype(str) == sample].copy()
        if a.n_obs:
            folds[str(a.uns["stpredict"]["fold"])] = a.uns["stpredict"]
            parts.append(a)
    if not parts:
        raise InputError(
            "no fold holds test spots of this section",
            sample=sample,
            fix="check the experiment's split; this section may never be held out",
        )
    genes = [g for g in parts[0].var_names if all(g in p.var_names for p in parts[1:])]
    out = ad.concat([p[:, genes] for p in parts], join="inner", merge="first")
    out.obs_names = out.obs["spot_id"].astype(str).to_numpy()
    first = dict(parts[0].uns["stpredict"])
    first.pop("fold", None)
    out.uns["stpredict"] = {**first, "sample_id": sample}
    out.uns["folds"] = folds
    if first.get("task") == "clusters":
        out.var["cluster"] = [str(g).removeprefix("cluster_") for g in out.var_names]
        classes = [c for meta in folds.values() for c in meta.get("classes", [])]
        labels = [out.obs[c].astype(str) for c in CLUSTER_COLUMNS if c in out.obs]
        categorical_clusters(out, cluster_categories(cluster_labels, classes, *labels))
    else:
        if section is not None:
            attach_gene_ids(out, [read_var(section)])
        out.var[list(SCORE_COLUMNS)] = held_out_scores(out)
    finish_result(out, _units(first))
    write_h5ad(out, out_h5ad, spatial_from={sample: section} if section is not None else None)
    return out


def _units(meta: Mapping[str, Any]) -> str:
    """Units of a fold file (fold files of earlier versions kept them in ``target_transform``)."""
    if meta.get(UNITS_KEY):
        return str(meta[UNITS_KEY])
    if meta.get("task") == "clusters":
        return CLUSTER_UNITS
    tt = meta.get("target_transform", {})
    return str(tt.get("units") or target_units(tt["name"]))


def write_manifest(manifest: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write the split manifest (TSV)."""
    write_table(manifest, path)


def read_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a split manifest written by :func:`write_manifest` (ids as strings)."""
    return read_table(
        path, dtype={"sample_id": str, "spot_id": str, "patient_id": str, "fold": str}
    )


def read_cluster_map(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and check a cluster map (TSV ``sample_id``, ``cluster``, ``label``; all strings)."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(
            f"cannot read the cluster map ({exc})",
            file=path,
            fix="give a TSV with columns sample_id, cluster, label",
        ) from None
    missing = {"sample_id", "cluster", "label"} - set(table.columns)
    if missing:
        raise InputError(
            f"the cluster map lacks column(s) {sorted(missing)}",
            file=path,
            fix="give a TSV with columns sample_id, cluster, label",
        )
    if table.duplicated(["sample_id", "cluster"]).any():
        row = table[table.duplicated(["sample_id", "cluster"])].iloc[0]
        raise InputError(
            f"the cluster map lists cluster '{row.cluster}' twice",
            file=path,
            sample=row.sample_id,
            fix="map each cluster of a section once",
        )
    return table


def cluster_map_labels(path: str | os.PathLike[str] | None) -> list[str]:
    """Return the shared labels of a cluster map (its non-empty ``label`` values); none without one."""
    if not path:
        return []
    return sorted({str(v) for v in read_cluster_map(path)["label"] if str(v)})


def apply_cluster_map(exp: Mapping[str, Any], sections: Mapping[str, ad.AnnData]) -> None:
    """Replace every section's ``obs["cluster"]`` by the harmonised label of ``exp["cluster_map"]``.

    The map is a TSV with columns ``sample_id``, ``cluster`` (the section's own label) and
    ``label`` (the shared one; empty = leave the spots out). Every cluster present in a section
    must be mapped. Does nothing without a map or for regression experiments.
    """
    path = exp.get("cluster_map")
    if exp.get("task") != "clusters" or not path:
        return
    table = read_cluster_map(path)
    for sample, a in sections.items():
        lut = dict(table.loc[table["sample_id"] == str(sample), ["cluster", "label"]].to_numpy())
        labels = a.obs["cluster"].astype(str)
        present = sorted(set(labels) - {""})
        unmapped = [c for c in present if c not in lut]
        if unmapped:
            raise InputError(
                f"cluster(s) {unmapped} of this section are not in the cluster map",
                file=path,
                sample=str(sample),
                fix="add a row (sample_id, cluster, label) for each; an empty label "
                "leaves the cluster out",
            )
        a.obs["cluster"] = labels.map(lambda c, lut=lut: lut.get(c, "")).to_numpy()


def fold_data(
    qc_paths: Sequence[str], store_paths: Sequence[str]
) -> tuple[dict[str, ad.AnnData], dict[str, str]]:
    """QC'd sections (without images) and patch-store paths keyed by sample id (the file stem)."""
    samples = [Path(p).stem for p in qc_paths]
    stores = [str(p) for p in store_paths]
    if [Path(p).parent.name for p in stores] != samples:
        raise InputError(
            "the patch stores do not match the sections in order",
            fix="list results/patches/{sample}/spots.npy in the order of the QC files",
        )
    for sample, store in zip(samples, stores, strict=True):
        load_npy(store, sample=sample)  # a truncated store fails (and is removed) here
    return load_sections(dict(zip(samples, qc_paths, strict=True))), dict(
        zip(samples, stores, strict=True)
    )
