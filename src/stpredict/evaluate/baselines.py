"""Baselines scored against the CNN on exactly its folds, genes and target units.

Every baseline is fitted per outer fold on the fold's training side (roles ``train`` and
``val`` of the split manifest) and predicts the fold's test spots. Targets are recomputed with
the fold's own fitted gene set and target transform (``folds/{fold}/fitted.json``), so the
measured values equal those of the CNN's prediction files and the metrics are comparable.

Methods (:data:`BASELINES`):

``mean``
    The training mean of every gene. A constant has no correlation (NaN r); compare by RMSE.
``labels``
    ST-Net's tumour/normal baseline: a spot annotated ``tumor`` gets the mean of the training
    spots annotated ``tumor`` (``non``: of the normal ones); unannotated spots, and classes the
    training side lacks, get the training mean. Needs annotations.
``nuclear_rf``
    ST-Net's hand-crafted baseline: a random forest (scikit-learn) on the per-spot nuclear
    features of :mod:`stpredict.evaluate.features`.
``nmf_rf``
    ST-Net's composition baseline: NMF (10 factors, Frobenius loss, 200 iterations) fitted on
    the training spots' targets, shifted per gene by the training minimum so they are
    non-negative; a random forest on the nuclear features predicts the composition of test
    spots, mapped back through the factors. ST-Net predicted the composition with a
    DenseNet-121; we use the hand-crafted features to keep the baseline cheap (documented).
``neighbours``
    The spatial upper bound: each test spot is predicted by the mean *measured* value of its
    adjacent spots of the same section (ST: 4 grid neighbours; Visium: the 6 hexagonal
    neighbours), whatever their role in the fold — under a within-section split most neighbours
    of a test spot are training spots —, spots without a neighbour by the mean of their section.
    This peeks at measurements of held-out spots on purpose: it is an oracle bounding what local
    smoothness alone can explain, not a predictor.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from stpredict.errors import ConfigError, InputError
from stpredict.io import read_json, read_table, write_h5ad
from stpredict.outputs import attach_gene_ids, finish_result
from stpredict.vocab import ANNOTATION_LABELS, SPOT_OBS, UNITS_KEY, annotations, target_units

__all__ = [
    "BASELINES",
    "NEEDS_FEATURES",
    "fit_predict",
    "run_baseline",
    "write_baseline_predictions",
    "read_features",
]

log = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = ("mean", "labels", "nuclear_rf", "nmf_rf", "neighbours")
NEEDS_FEATURES: frozenset[str] = frozenset({"nuclear_rf", "nmf_rf"})


def read_features(paths: Mapping[str, str | os.PathLike[str]]) -> dict[str, pd.DataFrame]:
    """Per-section feature tables (TSV, first column the spot id) keyed by sample id."""
    out = {}
    for sample, p in paths.items():
        t = read_table(p, sample=sample, index_col=0, dtype={0: str})
        t.index = t.index.astype(str)
        out[sample] = t
    return out


def _feature_matrix(ads: Sequence[ad.AnnData], features: Mapping[str, pd.DataFrame]) -> np.ndarray:
    parts = []
    for a in ads:
        sample = str(a.obs["sample_id"].iloc[0])
        if sample not in features:
            raise InputError(
                "no nuclear feature table for this section",
                sample=sample,
                fix="run rule nuclear_features for it",
            )
        t = features[sample]
        pos = t.index.get_indexer(a.obs_names.astype(str))
        if (pos < 0).any():
            raise InputError(
                f"{int((pos < 0).sum())} spots have no nuclear features",
                sample=sample,
                fix="rerun rule nuclear_features (the section changed)",
            )
        parts.append(t.to_numpy(dtype=np.float64)[pos])
    return np.concatenate(parts) if parts else np.empty((0, 0))


def _annotations(ads: Sequence[ad.AnnData]) -> np.ndarray:
    return np.concatenate([annotations(a) for a in ads]) if ads else np.array([], dtype=object)


def _neighbour_mean(
    test_ads: Sequence[ad.AnnData],
    y: np.ndarray,
    platforms: Mapping[str, str],
    pools: Sequence[tuple[ad.AnnData, np.ndarray]] | None = None,
) -> np.ndarray:
    """Mean measured value of each test spot's array neighbours.

    ``pools`` gives, per test section (same order), the spots whose measurements the
    neighbours are taken from and their targets (default: the test spots themselves).
    """
    from stpredict.ingest.geometry import spot_neighbors

    out = np.empty_like(y)
    start = 0
    for k, a in enumerate(test_ads):
        n = a.n_obs
        pool, y_pool = pools[k] if pools is not None else (a, y[start : start + n])
        sample = str(a.obs["sample_id"].iloc[0])
        pos = pool.obs_names.get_indexer(a.obs_names)  # the test spots among the pool's spots
        if (pos < 0).any():
            raise InputError(
                "the neighbour pool lacks test spots",
                sample=sample,
                fix="pass the section's spots of the fold as the pool",
            )
        nbrs = spot_neighbors(
            pool.obs["array_row"].to_numpy(),
            pool.obs["array_col"].to_numpy(),
            platforms[sample],
            connectivity=4,
        )
        fallback = y_pool.mean(axis=0)
        for i, p in enumerate(pos):
            nb = nbrs[p]
            out[start + i] = y_pool[nb].mean(axis=0) if len(nb) else fallback
        start += n
    return out


def fit_predict(
    method: str,
    y_train: np.ndarray,
    test_ads: Sequence[ad.AnnData],
    *,
    train_ads: Sequence[ad.AnnData] = (),
    y_test: np.ndarray | None = None,
    x_train: np.ndarray | None = None,
    x_test: np.ndarray | None = None,
    platforms: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    n_jobs: int = 1,
    pools: Sequence[tuple[ad.AnnData, np.ndarray]] | None = None,
) -> np.ndarray:
    """Fit ``method`` on the training side and predict the test spots (targets x genes).

    ``y_test`` (measured test targets) and ``pools`` (per test section: its spots in the fold
    and their measured targets, see :func:`_neighbour_mean`) are used only by the
    ``neighbours`` oracle.
    """
    params = dict(params or {})
    n_test = sum(a.n_obs for a in test_ads)
    mean = y_train.mean(axis=0)
    if method == "mean":
        return np.tile(mean, (n_test, 1))
    if method == "labels":
        lab_tr, lab_te = _annotations(train_ads), _annotations(test_ads)
        out = np.tile(mean, (n_test, 1))
        for cls in ANNOTATION_LABELS:
            sel = lab_tr == cls
            if sel.any():
                out[lab_te == cls] = y_train[sel].mean(axis=0)
        return out
    if method in ("nuclear_rf", "nmf_rf"):
        from sklearn.ensemble import RandomForestRegressor

        rf = RandomForestRegressor(
            n_estimators=int(params.get("n_estimators", 100)),
            min_samples_leaf=int(params.get("min_samples_leaf", 5)),
            max_features=params.get("max_features", 0.33),
            max_samples=params.get("max_samples"),
            random_state=seed,
            n_jobs=n_jobs,
        )
        if method == "nuclear_rf":
            rf.fit(x_train, y_train)
            return rf.predict(x_test).reshape(n_test, -1)
        from sklearn.decomposition import NMF
        from sklearn.exceptions import ConvergenceWarning

        shift = y_train.min(axis=0)
        nmf = NMF(
            n_components=int(params.get("n_factors", 10)),
            init="nndsvda",
            solver="cd",
            beta_loss="frobenius",
            max_iter=int(params.get("max_iter", 200)),
            random_state=seed,
        )
        with warnings.catch_warnings():  # ST-Net ran a fixed 200 iterations: no convergence check
            warnings.simplefilter("ignore", ConvergenceWarning)
            w = nmf.fit_transform(np.clip(y_train - shift, 0, None))
        log.info(
            "NMF: %d factors, %d iterations, reconstruction error %.4g",
            nmf.n_components,
            nmf.n_iter_,
            nmf.reconstruction_err_,
        )
        rf.fit(x_train, w)
        w_test = np.clip(rf.predict(x_test).reshape(n_test, -1), 0, None)
        return w_test @ nmf.components_ + shift
    if method == "neighbours":
        if y_test is None or platforms is None:
            raise ValueError("the neighbours oracle needs the measured test targets and platforms")
        return _neighbour_mean(test_ads, y_test, platforms, pools)
    raise ConfigError(
        f"unknown baseline '{method}' (one of {', '.join(BASELINES)})",
        fix="correct evaluation.baselines in the config",
    )


def _obs(ads: Sequence[ad.AnnData], fold: str) -> pd.DataFrame:
    obs = pd.concat([a.obs.assign(spot_id=a.obs_names.astype(str)) for a in ads])
    obs.index = [f"{s}:{i}" for s, i in zip(obs["sample_id"], obs["spot_id"], strict=True)]
    obs = obs[[c for c in SPOT_OBS if c in obs]].copy()
    obs["fold"] = str(fold)
    return obs


def run_baseline(
    method: str,
    manifest: pd.DataFrame,
    sections: Mapping[str, ad.AnnData],
    fitted_paths: Mapping[str, str | os.PathLike[str]],
    *,
    features: Mapping[str, pd.DataFrame] | None = None,
    platforms: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    n_jobs: int = 1,
    experiment: str = "",
) -> list[ad.AnnData]:
    """Run one baseline over the outer folds; one AnnData per held-out section.

    Parameters
    ----------
    method
        One of :data:`BASELINES`.
    manifest
        The experiment's split manifest (``splits.tsv``).
    sections
        QC'd sections (without images) keyed by sample id.
    fitted_paths
        ``fitted.json`` of every outer fold, keyed by fold id.
    features
        Nuclear feature tables by sample id (``nuclear_rf``, ``nmf_rf``).
    platforms
        Platform of every section (``neighbours``).
    params, seed, n_jobs
        Method parameters, random seed, parallel jobs of the random forests.
    experiment
        Name recorded in the outputs.

    Returns
    -------
    list of anndata.AnnData
        Same layout as the CNN's per-section prediction files: ``X`` measured targets,
        ``layers["predicted"]``, ``obs`` (with ``fold``), ``obsm["spatial"]``; folds are joined
        on the genes they share.
    """
    from stpredict.learn.folds import _fold_part, _subsets, smoothed_targets
    from stpredict.learn.targets import from_dict

    if method in NEEDS_FEATURES and not features:
        raise ConfigError(
            f"baseline '{method}' needs nuclear features", fix="give the feature tables"
        )
    parts: dict[str, list[ad.AnnData]] = {}
    for fold in sorted(fitted_paths, key=str):
        fitted = read_json(fitted_paths[fold])
        if fitted.get("task", "regression") != "regression":
            raise ConfigError(
                "baselines are defined for regression experiments",
                fix=f"remove evaluation.baselines from experiment '{experiment}'",
            )
        transform = from_dict(fitted["transform"])
        genes = [str(g) for g in from_dict(fitted["genes"]).genes_]
        train = pd.concat([_fold_part(manifest, str(fold), r) for r in ("train", "val")])
        tr_ads, _, _ = _subsets(train, sections)
        te_ads, te_samples, _ = _subsets(_fold_part(manifest, str(fold), "test"), sections)
        if not te_ads:
            continue
        y_tr = np.concatenate([transform.transform(a) for a in tr_ads]).astype(np.float64)
        y_te = np.concatenate([transform.transform(a) for a in te_ads]).astype(np.float64)
        if method == "labels":
            lab_tr = _annotations(tr_ads)
            if not np.isin(lab_tr, ANNOTATION_LABELS).any():
                raise ConfigError(
                    "baseline 'labels' needs tumour/normal annotations, and no training "
                    f"spot of fold {fold} has one",
                    fix=f"add annotation files to the sheet or remove 'labels' from "
                    f"evaluation.baselines of experiment '{experiment}'",
                )
        x_tr = x_te = None
        if method in NEEDS_FEATURES:
            x_tr, x_te = _feature_matrix(tr_ads, features), _feature_matrix(te_ads, features)
        pools = None
        if method == "neighbours":  # every spot of the test sections in this fold, any role
            everything = pd.concat(
                [_fold_part(manifest, str(fold), r) for r in ("train", "val", "test")]
            )
            pool_ads, pool_samples, _ = _subsets(
                everything[everything["sample_id"].isin(te_samples)], sections
            )
            by_sample = dict(zip(pool_samples, pool_ads, strict=True))
            pools = [
                (by_sample[s], transform.transform(by_sample[s]).astype(np.float64))
                for s in te_samples
            ]
        pred = fit_predict(
            method,
            y_tr,
            te_ads,
            train_ads=tr_ads,
            y_test=y_te,
            x_train=x_tr,
            x_test=x_te,
            platforms=platforms,
            params=params,
            seed=seed,
            n_jobs=n_jobs,
            pools=pools,
        )
        log.info(
            "%s fold %s: %s fitted on %d spots, predicted %d",
            experiment,
            fold,
            method,
            len(y_tr),
            len(y_te),
        )
        start = 0
        for a, sample in zip(te_ads, te_samples, strict=True):
            sl = slice(start, start + a.n_obs)
            start += a.n_obs
            out = ad.AnnData(
                X=y_te[sl].astype(np.float32),
                obs=_obs([a], str(fold)),
                var=pd.DataFrame(index=genes),
            )
            out.layers["predicted"] = pred[sl].astype(np.float32)
            if platforms:
                out.layers["measured_smoothed"] = smoothed_targets(
                    transform, sections[sample], a.obs_names, platforms[sample]
                ).astype(np.float32)
            out.obsm["spatial"] = np.asarray(a.obsm["spatial"], dtype=np.float64)
            attach_gene_ids(out, [sections[sample].var])
            out.uns["stpredict"] = {
                "experiment": experiment,
                "method": method,
                "task": "regression",
                "target_transform": {"name": fitted["transform_name"]},
                UNITS_KEY: target_units(fitted["transform_name"]),
                "fitted_on": {"fold": str(fold), "n_spots": int(len(y_tr))},
            }
            parts.setdefault(sample, []).append(out)
    result = []
    for sample, ps in parts.items():
        genes = [g for g in ps[0].var_names if all(g in p.var_names for p in ps[1:])]
        out = ad.concat([p[:, genes] for p in ps], join="inner", merge="first")
        out.obs_names = out.obs["spot_id"].astype(str).to_numpy()
        out.uns["stpredict"] = {
            **ps[0].uns["stpredict"],
            "sample_id": sample,
            "folds": sorted({str(p.obs["fold"].iloc[0]) for p in ps}),
        }
        out.uns["stpredict"].pop("fitted_on", None)
        result.append(out)
    return result


def write_baseline_predictions(
    adatas: Sequence[ad.AnnData],
    section_paths: Mapping[str, str | os.PathLike[str]],
    out_h5ad: str | os.PathLike[str],
) -> ad.AnnData:
    """Write a baseline's per-section predictions as one self-contained AnnData.

    Parameters
    ----------
    adatas
        :func:`run_baseline`'s output (one AnnData per held-out section).
    section_paths
        Section (or QC) file of each sample id: ``uns["spatial"]`` of every section is copied
        into the file (:func:`stpredict.io.write_h5ad` ``spatial_from``).
    out_h5ad
        Output path.

    Returns
    -------
    anndata.AnnData
        What was written, without the images: the sections concatenated (``obs["sample_id"]``
        tells them apart; subset to one before ``scanpy.pl.spatial(..., library_id=sample)``),
        ``var["gene_ids"]``, the units key and the smoothness note (:mod:`stpredict.outputs`).
        The held-out scores are in the ``per_gene.tsv`` beside it (one ``var`` cannot hold
        one per section).
    """
    out = ad.concat(list(adatas), merge="first", uns_merge="first")
    samples = [str(a.uns["stpredict"]["sample_id"]) for a in adatas]
    finish_result(out, adatas[0].uns["stpredict"][UNITS_KEY])
    write_h5ad(out, out_h5ad, spatial_from={s: section_paths[s] for s in samples})
    return out
