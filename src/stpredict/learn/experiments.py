"""Experiments: a cohort, a split, targets, a model and its training, as one named unit.

An experiment (``config["experiments"][name]``) combines the sections it uses, the split design,
the target transform and gene set (fitted per fold, on training spots only), the model, the
optimiser, augmentation and test-time augmentation. This module turns one into fold ids (known
before anything runs, so Snakemake can build the DAG), a split manifest, per-fold training and
per-fold prediction.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from stpredict.errors import ConfigError, InputError
from stpredict.io import (
    checked_read,
    load_npy,
    read_h5ad,
    read_json,
    read_table,
    write_h5ad,
    write_json,
    write_table,
)

__all__ = [
    "TRANSFORM_NAMES",
    "experiment_samples",
    "check_experiment",
    "section_gene_names",
    "fold_ids",
    "outer_folds",
    "inner_folds",
    "fold_test_samples",
    "build_manifest",
    "choose_epochs",
    "train_fold",
    "predict_fold",
    "collect_predictions",
]

log = logging.getLogger(__name__)

#: config name -> :mod:`stpredict.targets` transform kind
TRANSFORM_NAMES = {
    "log1p": "log1p_normalized",
    "log_proportion": "log_proportion",
    "pearson_minmax": "pearson_residuals_minmax",
}
UNITS = {
    "log1p": "log1p of UMI counts normalised to 10,000 per spot",
    "log_proportion": "natural log of (count + 1) / sum over genes of (count + 1)",
    "pearson_minmax": "analytic Pearson residuals (theta 100), min-max scaled on the training spots",
}


# ------------------------------------------------------------------------------ parse time
def experiment_samples(exp: Mapping[str, Any], sheet: pd.DataFrame) -> list[str]:
    """Sample ids an experiment uses, in sheet order."""
    sel = exp.get("sections", {}) or {}
    split = exp["split"]
    ids = sheet["sample_id"].tolist()
    if split["scheme"] == "section_imputation":
        train, test = list(split.get("train_sections", []) or []), str(split.get("test_section", "") or "")
        if not test or not train:
            raise ConfigError("section_imputation needs split.train_sections and split.test_section",
                              fix="name the training sections and the imputed section (sample_id values "
                              "of the sheet), e.g. train_sections: [D1, D3], test_section: D2")
        if test in train:
            raise ConfigError(f"section_imputation: the test section '{test}' is also a training section",
                              fix="remove it from split.train_sections (a section cannot be imputed from itself)")
        wanted = train + [test]
        ids = [s for s in ids if s in wanted]
        missing = sorted(set(wanted) - set(ids))
        if missing:
            raise ConfigError(f"section_imputation names section(s) {missing} that are not in the sample sheet",
                              fix="use sample_id values from the sheet in split.train_sections / split.test_section")
        return ids
    if sel.get("samples"):
        missing = sorted(set(sel["samples"]) - set(ids))
        if missing:
            raise ConfigError(f"sections.samples names {missing}, absent from the sample sheet",
                              fix="use sample_id values from the sheet")
        ids = [s for s in ids if s in set(sel["samples"])]
    if sel.get("patients"):
        pats = {str(p) for p in sel["patients"]}
        unknown = sorted(pats - set(sheet["patient_id"].astype(str)))
        if unknown:
            raise ConfigError(f"sections.patients names {unknown}, absent from the sample sheet",
                              fix="use patient_id values from the sheet")
        ids = [s for s in ids if sheet.loc[s, "patient_id"] in pats]
    if sel.get("platform"):
        ids = [s for s in ids if sheet.loc[s, "platform"] == sel["platform"]]
    if not ids:
        raise ConfigError(f"the experiment selects no section (sections: {dict(sel)})",
                          fix="check its 'sections' settings against the sample sheet (samples, patients, "
                          "platform)")
    return ids


def _patients(exp: Mapping[str, Any], sheet: pd.DataFrame) -> list[str]:
    return sorted({str(sheet.loc[s, "patient_id"]) for s in experiment_samples(exp, sheet)})


def outer_folds(exp: Mapping[str, Any], sheet: pd.DataFrame) -> list[str]:
    """Folds whose test predictions are reported (``"0"``, ``"1"``, ...)."""
    scheme = exp["split"]["scheme"]
    if scheme == "leave_one_patient_out":
        return [str(k) for k in range(len(_patients(exp, sheet)))]
    if scheme in ("random_within_section", "spatial_blocks"):
        return [str(k) for k in range(int(exp["split"]["n_folds"]))]
    return ["0"]


def inner_folds(exp: Mapping[str, Any], sheet: pd.DataFrame, fold: str) -> list[str]:
    """Inner folds of an outer fold (ST-Net's epoch selection); empty when there are none."""
    if exp["split"]["scheme"] != "leave_one_patient_out" or "." in str(fold):
        return []
    n = min(int(exp["split"].get("inner_folds", 0)), len(_patients(exp, sheet)) - 1)
    return [f"{fold}.{i}" for i in range(n)] if n >= 2 else []


def fold_ids(exp: Mapping[str, Any], sheet: pd.DataFrame) -> list[str]:
    """Every fold that trains a model (inner folds first)."""
    out = []
    for k in outer_folds(exp, sheet):
        out += inner_folds(exp, sheet, k) + [k]
    return out


def fold_test_samples(exp: Mapping[str, Any], sheet: pd.DataFrame, fold: str) -> list[str]:
    """Sections with test spots in an outer fold."""
    samples = experiment_samples(exp, sheet)
    scheme = exp["split"]["scheme"]
    if scheme == "leave_one_patient_out":
        held = _patients(exp, sheet)[int(str(fold).split(".")[0])]
        return [s for s in samples if str(sheet.loc[s, "patient_id"]) == held]
    if scheme == "section_imputation":
        return [exp["split"]["test_section"]]
    return samples


_SPOT_ID_RE = re.compile(r"^-?\d+(\.\d+)?x-?\d+(\.\d+)?$")
_VISIUM_CLUSTERS = ("analysis/clustering/gene_expression_graphclust/clusters.csv",
                    "analysis/clustering/graphclust/clusters.csv")


def _first_two_lines(path: Path) -> list[str]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        return [fh.readline().rstrip("\r\n"), fh.readline().rstrip("\r\n")]


def section_gene_names(row: Mapping[str, Any], gene_map: str | os.PathLike[str] | None = None) -> set[str] | None:
    """Return the gene names of a section's raw counts when they are cheap to know, else ``None``.

    Visium: the feature names of ``filtered_feature_bc_matrix.h5`` or of the matrix folder's
    ``features.tsv(.gz)``; ST: the header of the count file, mapped to symbols with ``gene_map``
    (a TSV ``gene_id, gene``) as the reader does. ``None`` when the files do not exist yet, the
    layout is unusual (a genes x spots ST file) or anything fails: the reader reports real
    problems later.
    """
    try:
        raw = Path(str(row["raw"]))
        if row["platform"] == "visium":
            h5 = raw / "filtered_feature_bc_matrix.h5"
            if h5.is_file():
                import h5py

                with h5py.File(h5, "r") as f:
                    if "matrix" in f and "features" in f["matrix"]:
                        names = f["matrix/features/name"][:]
                    else:  # Cell Ranger 2 layout: one group per genome
                        names = next(iter(f.values()))["gene_names"][:]
                return {n.decode() if isinstance(n, bytes) else str(n) for n in names}
            for name in ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"):
                p = raw / "filtered_feature_bc_matrix" / name
                if p.is_file():
                    t = pd.read_csv(p, sep="\t", header=None, dtype=str)
                    return set(t.iloc[:, 1 if t.shape[1] > 1 else 0].astype(str))
            return None
        if not raw.is_file():
            return None
        header, first = _first_two_lines(raw)
        sep = "\t" if "\t" in header else ","
        fields = header.split(sep)
        if len(fields) == len(first.split(sep)):
            fields = fields[1:]  # the corner cell
        ids = [f.strip().strip('"') for f in fields]
        if not ids or any(_SPOT_ID_RE.match(i) for i in ids[:20]):
            return None  # genes x spots layout: the genes are the first column
        if gene_map:
            if not Path(gene_map).is_file():
                return None
            from stpredict.readers import _gene_symbols

            ids = _gene_symbols(ids, pd.read_csv(gene_map, sep="\t", dtype=str))
        return set(ids)
    except Exception:  # noqa: BLE001 - a cheap look only; the reader reports real problems
        return None


def check_experiment(exp: Mapping[str, Any], sheet: pd.DataFrame, *, gene_map: str | os.PathLike[str] | None = None,
                     thorough: bool = True) -> None:
    """Refuse, at parse time, an experiment that the config and the sheet already show cannot run.

    Parameters
    ----------
    exp
        The resolved experiment (:func:`resolve_experiment`).
    sheet
        The validated sample sheet (indexed by sample id).
    gene_map
        ``reading.gene_map`` (ST Ensembl ids -> symbols), for the panel check.
    thorough
        Also run the checks that read files or import torchvision (the panel genes against the
        sections' gene names, the backbone name); Snakemake's main process runs them, its jobs
        skip them.

    Raises
    ------
    ConfigError
        The experiment selects no section; names samples, patients or sections absent from the
        sheet; leaves one patient out among a single patient; imputes a section it trains on;
        classifies clusters of sections that have none; names a weights file that does not
        exist, an unknown backbone, panel genes that none of its sections measures, or maps /
        attributions of genes outside its panel.
    """
    samples = experiment_samples(exp, sheet)
    split = exp["split"]
    if split["scheme"] == "leave_one_patient_out":
        patients = _patients(exp, sheet)
        if len(patients) < 2:
            raise ConfigError(
                f"leave_one_patient_out needs at least 2 patients, but the experiment's sections "
                f"{samples} all come from patient '{patients[0]}' (nothing would be left to train on)",
                fix="add sections of other patients, or use split.scheme random_within_section or "
                "spatial_blocks within this patient's sections")
        if int(split.get("inner_folds", 0) or 0) == 1:
            raise ConfigError("split.inner_folds is 1: an inner cross-validation needs at least 2 folds",
                              fix="set split.inner_folds to 0 (no inner folds) or to 2 or more")
    task = exp.get("task", "regression")
    if task == "regression" and exp["train"]["loss"] == "cross_entropy":
        raise ConfigError("train.loss cross_entropy is for task: clusters, but this experiment regresses genes",
                          fix="use train.loss mse or smoothl1, or set task: clusters")
    if task == "clusters":
        for s in samples:
            row = sheet.loc[s]
            if row["clusters"]:
                continue
            if row["platform"] == "st":
                raise ConfigError(
                    f"a clusters experiment uses the ST section '{s}', which has no clusters",
                    sample=s,
                    fix="fill the sheet's 'clusters' column (CSV Barcode,Cluster) or leave the section "
                    "out of the experiment (sections: {platform: visium})")
            raw = Path(str(row["raw"]))
            filled = (raw / "spatial").is_dir() or (raw / "filtered_feature_bc_matrix.h5").is_file()
            if filled and not any((raw / c).is_file() for c in _VISIUM_CLUSTERS):
                raise ConfigError(
                    f"a clusters experiment uses '{s}', whose Space Ranger outs/ has no graphclust "
                    f"clusters ({raw / _VISIUM_CLUSTERS[0]})",
                    sample=s,
                    fix="fill the sheet's 'clusters' column (CSV Barcode,Cluster) or leave the section out")
    model = exp["model"]
    weights = str(model.get("weights", "none"))
    if weights not in ("none", "imagenet") and not Path(weights).is_file():
        raise ConfigError(f"model.weights names a file that does not exist: {weights}",
                          fix="give a state_dict file, 'imagenet' (torchvision's cache) or 'none'")
    if thorough and model["backbone"] != "tiny":
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if model["backbone"] not in known:
            import difflib

            close = difflib.get_close_matches(model["backbone"], known, n=3)
            raise ConfigError(
                f"unknown model.backbone '{model['backbone']}'"
                + (f" (did you mean {', '.join(close)}?)" if close else ""),
                fix="use 'tiny' or a torchvision classification model name such as densenet121, "
                "vgg16, resnet50")
    genes = exp["targets"]["genes"]
    if genes["mode"] == "panel":
        from stpredict.targets import load_panel

        if not genes.get("panel"):
            raise ConfigError("targets.genes.mode is panel but targets.genes.panel is empty",
                              fix="name a shipped panel (deepspace_21, deepspace_3) or a file of gene symbols")
        panel = load_panel(genes["panel"])
        ev = exp.get("evaluation", {}) or {}
        shown = list((ev.get("maps", {}) or {}).get("genes", []) or [])
        explained = (ev.get("attributions", {}) or {}).get("gene", "")
        outside = [g for g in shown + ([explained] if explained else []) if g not in panel]
        if outside:
            raise ConfigError(
                f"evaluation.maps.genes / evaluation.attributions.gene name {', '.join(outside)}, which "
                f"the panel '{genes['panel']}' does not predict",
                fix=f"choose among the panel's genes ({', '.join(panel[:8])}{' ...' if len(panel) > 8 else ''})")
        if thorough:
            names = [section_gene_names(sheet.loc[s], gene_map) for s in samples]
            if names and all(n is not None for n in names):
                known = set().union(*names)
                missing = [g for g in panel if g not in known]
                allow = bool(genes.get("allow_missing", False))
                if missing and (not allow or len(missing) == len(panel)):
                    raise ConfigError(
                        f"{len(missing)} of the {len(panel)} genes of panel '{genes['panel']}' are measured "
                        f"in none of the experiment's sections {samples}: {', '.join(missing[:10])}"
                        + (" ..." if len(missing) > 10 else ""),
                        fix="check the symbols (ST files may use Ensembl ids: set reading.gene_map), edit "
                        "the panel, or set targets.genes.allow_missing: true to drop them")
    elif thorough:  # genes chosen per fold: the evaluation's gene names must at least be measured
        ev = exp.get("evaluation", {}) or {}
        named = list((ev.get("maps", {}) or {}).get("genes", []) or [])
        explained = (ev.get("attributions", {}) or {}).get("gene", "")
        named += [explained] if explained else []
        names = [section_gene_names(sheet.loc[s], gene_map) for s in samples] if named else []
        if names and all(n is not None for n in names):
            known = set().union(*names)
            absent = [g for g in named if g not in known]
            if absent:
                raise ConfigError(
                    f"evaluation.maps.genes / evaluation.attributions.gene name {', '.join(absent)}, "
                    f"which none of the experiment's sections measures",
                    fix="use the sections' gene names (ST files may use Ensembl ids: set "
                    "reading.gene_map to map them to symbols), or leave the setting empty")
    if thorough and str(model.get("weights", "none")).lower() == "imagenet":
        from stpredict.errors import StpredictError
        from stpredict.models import require_imagenet_weights

        try:
            require_imagenet_weights(model["backbone"])
        except StpredictError as exc:
            raise ConfigError(exc.problem, fix=exc.fix) from None


# ------------------------------------------------------------------------------ manifest
def _seed(exp: Mapping[str, Any], *parts: str) -> int:
    return (int(exp.get("seed", 0)) * 1_000_003 + zlib.crc32("/".join(parts).encode())) % (2**31)


def _kept(adata: ad.AnnData) -> np.ndarray:
    return adata.obs["keep"].to_numpy(dtype=bool) if "keep" in adata.obs else np.ones(adata.n_obs, bool)


def build_manifest(exp: Mapping[str, Any], sections: Mapping[str, ad.AnnData], sheet: pd.DataFrame,
                   name: str = "experiment") -> pd.DataFrame:
    """Split the kept spots of the experiment's sections and audit the result for leakage."""
    from stpredict import splits

    apply_cluster_map(exp, sections)
    rows, xy, mpp = [], [], {}
    excluded = {str(c) for c in exp.get("exclude_clusters", [])}
    if exp.get("task", "regression") == "clusters" and excluded:
        present = set().union(*(set(a.obs["cluster"].astype(str)) for a in sections.values())) - {""}
        unknown = sorted(excluded - present)
        if unknown and exp.get("parent"):  # sections.each: the list serves every section
            log.warning("experiment '%s': exclude_clusters %s: no such cluster in this section",
                        name, unknown)
        elif unknown:
            raise ConfigError(
                f"exclude_clusters names cluster(s) {unknown} that no section of experiment "
                f"'{name}' has (its clusters: {', '.join(sorted(present))})",
                fix="use the clusters' own labels (Space Ranger numbers graphclust clusters from 1)")
    for sample, a in sections.items():
        keep = _kept(a)
        if exp.get("task", "regression") == "clusters":
            lab = a.obs["cluster"].astype(str).to_numpy()
            keep &= (lab != "") & ~np.isin(lab, list(excluded))
        rows.append(pd.DataFrame({"sample_id": sample, "spot_id": a.obs_names[keep].astype(str),
                                  "patient_id": str(sheet.loc[sample, "patient_id"])}))
        xy.append(np.asarray(a.obsm["spatial"])[keep])
        mpp[sample] = float(a.uns["stpredict"]["mpp"])
    spots = pd.concat(rows, ignore_index=True)
    split = exp["split"]
    seed = _seed(exp, name, "split")
    scheme = split["scheme"]
    if scheme == "leave_one_patient_out":
        man = splits.leave_one_patient_out(spots, inner_folds=int(split.get("inner_folds", 0)), seed=seed,
                                           inner_assignment=split.get("inner_assignment", "stride"))
    elif scheme == "random_within_section":
        man = splits.random_within_section(spots, n_folds=int(split["n_folds"]),
                                           val_frac=float(split["val_frac"]), seed=seed)
    elif scheme == "spatial_blocks":
        spots_xy = np.concatenate(xy)
        man = splits.spatial_blocks_within_section(
            spots, spots_xy, block_um=float(split["block_um"]), mpp=mpp, n_folds=int(split["n_folds"]),
            seed=seed, buffer_um=float(split.get("buffer_um", 0.0)), val_frac=float(split["val_frac"]))
    elif scheme == "section_imputation":
        man = splits.section_imputation(spots, split["train_sections"], split["test_section"],
                                        val_frac=float(split["val_frac"]), seed=seed)
    else:  # pragma: no cover (schema)
        raise ConfigError(f"unknown split scheme '{scheme}'")
    meta = sheet.loc[list(sections), ["sample_id", "patient_id", "series"]].reset_index(drop=True)
    splits.audit(man, meta)
    _check_folds(man, spots, name)
    return man


def _check_folds(man: pd.DataFrame, spots: pd.DataFrame, name: str) -> None:
    """Every fold must train on something and every outer fold test something."""
    for fold, g in man.groupby("fold", sort=False):
        roles = g["role"].value_counts()
        inner = "." in str(fold)
        short = [r for r in (("train", "val") if inner else ("train", "test")) if not roles.get(r, 0)]
        if short:
            sizes = spots.groupby("sample_id").size()
            small = sizes.idxmin()
            raise InputError(
                f"experiment '{name}': fold {fold} has no {' and no '.join(short)} spots "
                f"(kept spots per section: {', '.join(f'{k} {v}' for k, v in sizes.items())})",
                sample=str(small),
                fix="lower split.n_folds, relax the QC thresholds, or leave the small section out")


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
            raise InputError("an inner fold has an empty training history (no epoch, val_loss)",
                             file=h, fix="rerun the inner fold's train_fold job")
    common = sorted(set.intersection(*(set(t["epoch"].astype(int)) for t in tables)))
    if not common:
        raise InputError("the inner folds share no epoch", file=histories[0])
    tabs = [t.assign(epoch=t["epoch"].astype(int)).drop_duplicates("epoch", keep="last")
            .set_index("epoch").loc[common] for t in tables]
    sse = [t["val_sse"].to_numpy(dtype=float) if "val_sse" in t else None for t in tabs]
    if all(v is not None and np.isfinite(v).all() for v in sse):
        score, what = np.sum(sse, axis=0), "pooled validation SSE"
    else:
        score, what = np.mean([t["val_loss"].to_numpy(dtype=float) for t in tabs], axis=0), \
            "mean validation loss"
    if not np.isfinite(score).any():
        raise InputError(f"no finite {what} in the inner histories", file=histories[0],
                         fix="check that the inner folds have validation spots")
    best = common[int(np.nanargmin(score))]
    log.info("choose_epochs: epoch %d of %d by the %s over %d inner folds", best, len(common),
             what, len(tables))
    return int(best)


# ------------------------------------------------------------------------------ fold data
def _fold_part(manifest: pd.DataFrame, fold: str, role: str) -> pd.DataFrame:
    from stpredict.splits import fold_rows

    return fold_rows(manifest, fold, role)


def _subsets(part: pd.DataFrame, sections: Mapping[str, ad.AnnData]) -> tuple[list[ad.AnnData], list[str], list[np.ndarray]]:
    """Per section: the AnnData restricted to ``part``'s spots, its sample id and store rows."""
    ads, samples, rows = [], [], []
    for sample, g in part.groupby("sample_id", sort=True):
        a = sections[sample]
        pos = a.obs_names.get_indexer(g["spot_id"].astype(str))
        if (pos < 0).any():
            raise InputError(f"{int((pos < 0).sum())} manifest spots are not in the section",
                             sample=str(sample), fix="rerun make_splits")
        ads.append(a[pos].copy())
        samples.append(str(sample))
        rows.append(pos.astype(np.int64))
    return ads, samples, rows


def _targets_cfg(exp: Mapping[str, Any]) -> Mapping[str, Any]:
    return exp["targets"]


def _fit_targets(exp: Mapping[str, Any], train_ads: list[ad.AnnData]) -> tuple[Any, Any]:
    from stpredict.targets import GeneSelector, make_transform

    tcfg = _targets_cfg(exp)
    g = tcfg["genes"]
    selector = GeneSelector(mode=g["mode"], n=int(g["n"]), panel=g["panel"] or None,
                            min_frac=float(g["min_frac"]), allow_missing=bool(g.get("allow_missing", False)),
                            normalization=g.get("rank_by", "log1p"))
    selector.fit(train_ads)
    transform = make_transform(TRANSFORM_NAMES[tcfg["transform"]], genes=list(selector.genes_)).fit(train_ads)
    return selector, transform


def check_gene_coverage(ads: Sequence[ad.AnnData], genes: Sequence[str],
                        genes_cfg: Mapping[str, Any]) -> None:
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
    need = float(genes_cfg.get("min_coverage", 0.5))
    for a in ads:
        sample = str(a.obs["sample_id"].iloc[0]) if "sample_id" in a.obs and a.n_obs else "?"
        have = pd.Index(a.var_names.astype(str))
        missing = [g for g in genes if g not in have]
        share = 1.0 - len(missing) / len(genes)
        if not missing:
            continue
        ids = np.char.startswith(np.asarray(have[:200], dtype=str), "ENS").mean() if len(have) else 0
        sel_ids = np.mean([g.startswith("ENS") for g in genes])
        hint = ""
        if abs(ids - sel_ids) > 0.5:
            hint = (" (its genes are " + ("Ensembl ids" if ids > 0.5 else "symbols") + ", the "
                    "selected genes " + ("Ensembl ids" if sel_ids > 0.5 else "symbols") + ")")
        msg = (f"the section lacks {len(missing)} of the {len(genes)} selected genes{hint}, e.g. "
               f"{', '.join(missing[:4])}; they would be predicted against zeros")
        if share < need:
            raise InputError(msg, sample=sample,
                             fix="give every section the same gene naming (reading.gene_map maps "
                             "Ensembl ids to symbols), leave the section out of the experiment, "
                             "or lower targets.genes.min_coverage")
        log.warning("sample '%s': %s (%.0f%% of the genes present)", sample, msg, 100 * share)


def smoothed_targets(transform: Any, section: ad.AnnData, spot_ids: Sequence[str],
                     platform: str) -> np.ndarray:
    """ST-Net's smoothed measurements of some spots, from every kept spot of their section.

    The section's kept spots are transformed with the fold's fitted ``transform`` and averaged
    over each spot's neighbourhood (:func:`stpredict.metrics.smooth_measurements`: ST 3 x 3,
    Visium the spot and its six neighbours), so a spot's smoothed value does not depend on which
    of its neighbours happen to be test spots of the same fold (random within-section splits).
    """
    from stpredict.metrics import smooth_measurements

    kept = section[_kept(section)]
    pos = kept.obs_names.get_indexer([str(i) for i in spot_ids])
    if (pos < 0).any():
        sample = str(section.obs["sample_id"].iloc[0]) if "sample_id" in section.obs else None
        raise InputError(f"{int((pos < 0).sum())} spots are not kept spots of the section",
                         sample=sample, fix="rerun make_splits")
    values = transform.transform(kept)
    smooth = smooth_measurements(values, kept.obs["array_row"].to_numpy(),
                                 kept.obs["array_col"].to_numpy(), platform)
    return smooth[pos]


def _labels(exp: Mapping[str, Any], ads: list[ad.AnnData]) -> np.ndarray:
    return np.concatenate([a.obs["cluster"].astype(str).to_numpy() for a in ads]) if ads else np.array([], str)


def _train_config(exp: Mapping[str, Any], fold: str, name: str, epochs: int | None) -> Any:
    from stpredict.training import TrainConfig

    t = dict(exp["train"])
    m = exp["model"]
    cfg = TrainConfig(backbone=m["backbone"], weights=m["weights"], tiny_width=int(m.get("tiny_width", 8)),
                      seed=_seed(exp, name, "train", fold), **t)
    if epochs is not None:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "epochs": int(epochs), "patience": None})
    return cfg


def train_fold(exp: Mapping[str, Any], name: str, fold: str, manifest: pd.DataFrame,
               sections: Mapping[str, ad.AnnData], stores: Mapping[str, str], out_dir: str | os.PathLike[str],
               inner_histories: Sequence[str] = (), device: str | None = None) -> dict[str, Any]:
    """Fit targets on the fold's training spots, audit the fit, and train the fold's model.

    Writes ``model.pt``, ``history.tsv``, ``loss.png`` (by :func:`stpredict.training.train`,
    which keeps ``checkpoint.pt`` / ``best.pt`` only while training) and ``fitted.json`` (gene
    set, target transform and classes, each with the record of what it was fitted on) into
    ``out_dir``. The manifest's train/val spot ids and the fitted transform go into the resume
    signature: a rerun after a change retrains from scratch.
    """
    from stpredict.splits import audit_fitted
    from stpredict.training import PatchDataset, encode_labels, train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    apply_cluster_map(exp, sections)
    tr_ads, tr_samples, tr_rows = _subsets(_fold_part(manifest, fold, "train"), sections)
    va_ads, va_samples, va_rows = _subsets(_fold_part(manifest, fold, "val"), sections)
    epochs = choose_epochs(inner_histories) if inner_histories else None
    if epochs is not None:
        log.info("fold %s: %d epochs chosen on inner folds %s", fold, epochs, list(inner_histories))
        va_ads, va_samples, va_rows = [], [], []  # final retrain on all training patients
    fitted: dict[str, Any] = {"experiment": name, "fold": fold, "task": exp.get("task", "regression"),
                              "epochs_from_inner_folds": epochs}
    cfg = _train_config(exp, fold, name, epochs)
    # what the weights depend on beyond the datasets (train() hashes the stores, rows, targets)
    data_sig: dict[str, Any] = {
        "experiment": name, "fold": str(fold), "task": fitted["task"],
        "train_spots": [f"{s}:{i}" for a, s in zip(tr_ads, tr_samples, strict=True) for i in a.obs_names],
        "val_spots": [f"{s}:{i}" for a, s in zip(va_ads, va_samples, strict=True) for i in a.obs_names],
        "targets": dict(_targets_cfg(exp)) if fitted["task"] != "clusters" else None,
    }
    tr_stores = [stores[s] for s in tr_samples]
    va_stores = [stores[s] for s in va_samples]
    if exp.get("task", "regression") == "clusters":
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
                va_rows_ok.append(r[ok[start:start + len(r)]])
                start += len(r)
            val_ds = PatchDataset(va_stores, va_rows_ok, labels=codes_va[ok])
        result = train(cfg, train_ds, val_ds, out, classes=fitted["classes"], target_transform="clusters",
                       data_signature=data_sig, device=device)
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
        result = train(cfg, train_ds, val_ds, out, genes=list(selector.genes_),
                       target_transform=fitted["transform_name"], data_signature=data_sig, device=device)
    fitted["train_config"] = cfg.to_dict()
    fitted["result"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}
    write_json(fitted, out / "fitted.json")
    return result


def predict_fold(exp: Mapping[str, Any], name: str, fold: str, manifest: pd.DataFrame,
                 sections: Mapping[str, ad.AnnData], stores: Mapping[str, str], model_dir: str | os.PathLike[str],
                 out_h5ad: str | os.PathLike[str], device: str | None = None, batch_size: int = 128) -> ad.AnnData:
    """Predict the fold's test spots (with TTA) and write measured + predicted values as AnnData."""
    from stpredict.inference import load_model, predict
    from stpredict.targets import from_dict

    model_dir = Path(model_dir)
    fitted = read_json(model_dir / "fitted.json")
    apply_cluster_map(exp, sections)
    te_ads, te_samples, te_rows = _subsets(_fold_part(manifest, fold, "test"), sections)
    model, meta = load_model(model_dir / "model.pt", device=device or "cpu")
    preds, embs = predict(model, [stores[s] for s in te_samples], te_rows, batch_size=batch_size,
                          tta=int(exp.get("tta", 8)), device=device,
                          precision=str(exp["train"].get("precision", "auto")))
    obs = pd.concat([a.obs.assign(spot_id=a.obs_names.astype(str)) for a in te_ads])
    obs.index = [f"{s}:{i}" for s, i in zip(obs["sample_id"], obs["spot_id"], strict=True)]
    keep_cols = [c for c in ("sample_id", "patient_id", "spot_id", "in_tissue", "array_row", "array_col",
                             "annotation", "cluster", "total_counts") if c in obs]
    obs = obs[keep_cols].copy()
    obs["fold"] = str(fold)
    spatial = np.concatenate([np.asarray(a.obsm["spatial"]) for a in te_ads])
    uns: dict[str, Any] = {"experiment": name, "fold": str(fold), "task": fitted["task"],
                           "tta": int(exp.get("tta", 8)), "model": {k: v for k, v in meta.items()
                                                                     if isinstance(v, (str, int, float))}}
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
        out.obs["cluster_true"] = true
        out.obs["cluster_pred"] = np.asarray(classes)[preds.argmax(1)]
        uns["units"] = "X: one-hot measured cluster; predicted: class probabilities (softmax)"
        uns["classes"] = classes
    else:
        transform = from_dict(fitted["transform"])
        genes = [str(g) for g in from_dict(fitted["genes"]).genes_]
        check_gene_coverage(te_ads, genes, _targets_cfg(exp)["genes"])
        X = np.concatenate([transform.transform(a) for a in te_ads]).astype(np.float32)
        out = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))
        out.layers["predicted"] = preds.astype(np.float32)
        out.layers["measured_smoothed"] = np.concatenate(
            [smoothed_targets(transform, sections[s], a.obs_names, sections[s].uns["stpredict"]["platform"])
             for s, a in zip(te_samples, te_ads, strict=True)]
        ).astype(np.float32)
        uns["target_transform"] = {"name": fitted["transform_name"], "fitted": fitted["transform"],
                                   "units": UNITS[fitted["transform_name"]]}
        uns["genes"] = {"selection": fitted["genes"], "names": genes}
    out.obsm["spatial"] = spatial
    out.obsm["embedding"] = embs.astype(np.float32)
    out.uns["stpredict"] = json.loads(json.dumps(uns, default=str))
    write_h5ad(out, out_h5ad)
    return out


def collect_predictions(fold_files: Sequence[str | os.PathLike[str]], sample: str,
                        out_h5ad: str | os.PathLike[str]) -> ad.AnnData:
    """One AnnData per held-out section from the folds that tested its spots.

    Folds that selected different genes (``top_mean`` fitted per fold) are joined on the genes
    they share; the per-fold transforms stay in ``uns["folds"]``.
    """
    parts, folds = [], {}
    for f in fold_files:
        a = read_h5ad(f)
        a = a[a.obs["sample_id"].astype(str) == sample].copy()
        if a.n_obs:
            folds[str(a.uns["stpredict"]["fold"])] = a.uns["stpredict"]
            parts.append(a)
    if not parts:
        raise InputError("no fold holds test spots of this section", sample=sample,
                         fix="check the experiment's split; this section may never be held out")
    genes = [g for g in parts[0].var_names if all(g in p.var_names for p in parts[1:])]
    out = ad.concat([p[:, genes] for p in parts], join="inner", merge="first")
    out.obs_names = out.obs["spot_id"].astype(str).to_numpy()
    first = dict(parts[0].uns["stpredict"])
    first.pop("fold", None)
    out.uns["stpredict"] = {**first, "sample_id": sample}
    out.uns["folds"] = folds
    write_h5ad(out, out_h5ad)
    return out


def write_manifest(manifest: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write the split manifest (TSV)."""
    write_table(manifest, path)


def read_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a split manifest written by :func:`write_manifest` (ids as strings)."""
    return read_table(path, dtype={"sample_id": str, "spot_id": str, "patient_id": str, "fold": str})


def read_section_light(path: str | os.PathLike[str]) -> ad.AnnData:
    """Read a section AnnData without its images: ``X``, ``obs``, ``var``, ``obsm`` and ``uns["stpredict"]``.

    The H&E copies in ``uns["spatial"]`` make up most of a section file; training and prediction
    never need them, so they are not decoded.
    """
    import h5py
    from anndata.io import read_elem

    with checked_read(path) as p, h5py.File(p, "r") as f:
        a = ad.AnnData(X=read_elem(f["X"]), obs=read_elem(f["obs"]), var=read_elem(f["var"]),
                       obsm=read_elem(f["obsm"]) if "obsm" in f else None)
        uns = f.get("uns")
        if uns is not None:
            for key in ("stpredict", "qc"):
                if key in uns:
                    a.uns[key] = read_elem(uns[key])
    return a


def load_sections(paths: Mapping[str, str]) -> dict[str, ad.AnnData]:
    """Read QC'd section AnnData files (without images) keyed by sample id."""
    return {s: read_section_light(p) for s, p in paths.items()}


#: defaults of every experiment key (the schema documents them; see config/README.md)
EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "task": "regression",
    "sections": {"samples": [], "patients": [], "platform": "", "each": False},
    "split": {"scheme": "leave_one_patient_out", "inner_folds": 0, "inner_assignment": "stride",
              "n_folds": 5, "val_frac": 0.2,
              "block_um": 600.0, "buffer_um": 0.0, "train_sections": [], "test_section": ""},
    "model": {"backbone": "tiny", "weights": "none", "tiny_width": 8},
    "train": {"loss": "mse", "optimiser": "adam", "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0,
              "batch_size": 64, "epochs": 10, "patience": None, "augmentation": "dihedral",
              "num_workers": 0, "head_init": None, "loss_reduction": "mean", "precision": "auto",
              "val_tta": 1},
    "tta": 8,
    "exclude_clusters": [],
    "cluster_map": "",
}


#: defaults of the ``evaluation`` section (the schema documents them)
EVALUATION_DEFAULTS: dict[str, Any] = {
    "baselines": ["mean", "labels", "nuclear_rf", "nmf_rf", "neighbours"],
    "alpha": 0.05,
    "ols": True,
    "latent": True,
    "attributions": {"enabled": True, "gene": "", "n_patches": 3, "n_steps": 32},
    "maps": {"genes": [], "n_sections": 2},
    "gene_groups": "",
    "nuclear": {"fov_um": None, "min_area_um2": 10.0},
    "random_forest": {"n_estimators": 100, "min_samples_leaf": 5, "max_features": 0.33, "max_samples": None},
    "nmf": {"n_factors": 10, "max_iter": 200},
}


def _check_keys(over: Mapping[str, Any], base: Mapping[str, Any], where: str) -> None:
    for k, v in over.items():
        if k not in base:
            raise ConfigError(f"unknown key '{where}.{k}' in an experiment",
                              fix=f"use one of {', '.join(sorted(base))} (config/README.md)")
        if isinstance(v, Mapping) and isinstance(base[k], Mapping):
            _check_keys(v, base[k], f"{where}.{k}")


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = _merge(base[k], v) if isinstance(v, Mapping) and isinstance(base.get(k), Mapping) else v
    return out


def resolve_experiment(exp: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Fill an experiment's unset keys from :data:`EXPERIMENT_DEFAULTS` and the global config.

    ``targets`` defaults to the global ``targets`` section, ``evaluation`` to the global
    ``evaluation`` section (itself filled from :data:`EVALUATION_DEFAULTS`) and ``seed`` to the
    global seed.
    """
    base = {**EXPERIMENT_DEFAULTS, "targets": config.get("targets", {}), "seed": config.get("seed", 0),
            "evaluation": _merge(EVALUATION_DEFAULTS, config.get("evaluation", {}))}
    _check_keys(exp.get("evaluation") or {}, EVALUATION_DEFAULTS, "evaluation")
    # a deep copy: the nested defaults (and the global sections) must never be changed below
    out = copy.deepcopy(_merge(base, exp))
    if out["task"] == "clusters" and out["train"]["loss"] != "cross_entropy":
        # a new dict: out["train"] may be EXPERIMENT_DEFAULTS["train"] itself
        out["train"] = {**out["train"], "loss": "cross_entropy"}
    return out


#: split schemes that train within a section, so that ``sections.each`` makes sense
WITHIN_SECTION_SCHEMES = ("random_within_section", "spatial_blocks")


def expand_experiments(experiments: Mapping[str, Any], config: Mapping[str, Any],
                       sheet: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Resolve every experiment; one with ``sections.each`` becomes one experiment per section.

    DeepSpaCE trained and tested within one section at a time; ``sections: {each: true}`` keeps
    that protocol for any cohort: experiment ``name`` with sections ``S1, S2`` becomes
    ``name.S1`` and ``name.S2`` (each with its own splits, models and metrics). The expanded
    experiments' cluster labels are then checked (:func:`check_cluster_labels`; the other
    parse-time checks are :func:`check_experiment`).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, raw in experiments.items():
        try:
            out.update(_expand_one(name, raw, experiments, config, sheet))
        except ConfigError as exc:
            problem = exc.problem if f"'{name}'" in exc.problem else f"experiment '{name}': {exc.problem}"
            raise ConfigError(problem, file=exc.file, sample=exc.sample, fix=exc.fix) from None
    return out


def _expand_one(name: str, raw: Mapping[str, Any], experiments: Mapping[str, Any],
                config: Mapping[str, Any], sheet: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Resolve one experiment of :func:`expand_experiments` (its expansion when ``sections.each``)."""
    if ((raw or {}).get("evaluation") or {}).get("nuclear"):
        raise ConfigError(f"experiment '{name}' sets evaluation.nuclear, but nuclear features are "
                          "computed once per section (results/features/{sample}/nuclear.tsv) "
                          "and shared by every experiment",
                          fix="set evaluation.nuclear in the global evaluation section")
    exp = resolve_experiment(raw, config)
    _check_validation(name, exp)
    if not exp["sections"].get("each"):
        check_cluster_labels(name, exp, sheet)
        return {name: exp}
    scheme = exp["split"]["scheme"]
    if scheme not in WITHIN_SECTION_SCHEMES:
        raise ConfigError(f"experiment '{name}': sections.each needs a within-section split, "
                          f"not '{scheme}'",
                          fix=f"use split.scheme {' or '.join(WITHIN_SECTION_SCHEMES)}, or drop "
                          "sections.each")
    out: dict[str, dict[str, Any]] = {}
    for sample in experiment_samples(exp, sheet):
        sub = json.loads(json.dumps(exp))
        sub["sections"] = {"samples": [sample], "patients": [], "platform": "", "each": False}
        sub["parent"] = name
        key = f"{name}.{sample}"
        if key in experiments:
            raise ConfigError(f"experiment '{name}' (sections.each) would create '{key}', which "
                              "is already an experiment name", fix="rename one of them")
        check_cluster_labels(key, sub, sheet)
        out[key] = sub
    return out


def _check_validation(name: str, exp: Mapping[str, Any]) -> None:
    """Refuse early stopping in an experiment whose folds have no validation spots."""
    split = exp["split"]
    if not exp["train"].get("patience"):
        return
    scheme = split["scheme"]
    no_val = (scheme == "leave_one_patient_out" and int(split.get("inner_folds", 0) or 0) < 2) or (
        scheme != "leave_one_patient_out" and not float(split.get("val_frac", 0) or 0) > 0)
    if no_val:
        raise ConfigError(
            f"experiment '{name}' sets train.patience {exp['train']['patience']} (early stopping on "
            f"the validation loss), but its {scheme} folds have no validation spots"
            + (" (val_frac 0)" if scheme != "leave_one_patient_out" else " (no inner folds)"),
            fix="set split.val_frac above 0 (DeepSpaCE 0.2), or train.patience: null"
            if scheme != "leave_one_patient_out" else
            "set split.inner_folds (ST-Net 4: the epoch count is chosen on them) or train.patience: null")


def check_cluster_labels(name: str, exp: Mapping[str, Any], sheet: pd.DataFrame) -> None:
    """Refuse a clusters task over several sections without harmonised labels.

    Space Ranger numbers graphclust clusters per section, so cluster 3 of one section is not
    cluster 3 of another; such an experiment needs ``cluster_map`` (or ``sections.each``).
    """
    samples = experiment_samples(exp, sheet)
    if exp.get("task") == "clusters" and len(samples) > 1 and not exp.get("cluster_map"):
        shown = ", ".join(samples[:4]) + (" ..." if len(samples) > 4 else "")
        raise ConfigError(
            f"experiment '{name}' classifies clusters across {len(samples)} sections ({shown}), "
            "but Space Ranger numbers its clusters per section (cluster 3 of one section is not "
            "cluster 3 of another)",
            fix="set sections.each: true (one model per section, as DeepSpaCE), or give "
            "cluster_map: a TSV with columns sample_id, cluster, label that harmonises the labels")
    if exp.get("cluster_map") and exp.get("task") != "clusters":
        raise ConfigError(f"experiment '{name}' sets cluster_map but its task is not clusters",
                          fix="remove cluster_map or set task: clusters")


def apply_cluster_map(exp: Mapping[str, Any], sections: Mapping[str, ad.AnnData]) -> None:
    """Replace every section's ``obs["cluster"]`` by the harmonised label of ``exp["cluster_map"]``.

    The map is a TSV with columns ``sample_id``, ``cluster`` (the section's own label) and
    ``label`` (the shared one; empty = leave the spots out). Every cluster present in a section
    must be mapped. Does nothing without a map or for regression experiments.
    """
    path = exp.get("cluster_map")
    if exp.get("task") != "clusters" or not path:
        return
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the cluster map ({exc})", file=path,
                         fix="give a TSV with columns sample_id, cluster, label") from None
    missing = {"sample_id", "cluster", "label"} - set(table.columns)
    if missing:
        raise InputError(f"the cluster map lacks column(s) {sorted(missing)}", file=path,
                         fix="give a TSV with columns sample_id, cluster, label")
    if table.duplicated(["sample_id", "cluster"]).any():
        row = table[table.duplicated(["sample_id", "cluster"])].iloc[0]
        raise InputError(f"the cluster map lists cluster '{row.cluster}' twice", file=path,
                         sample=row.sample_id, fix="map each cluster of a section once")
    for sample, a in sections.items():
        lut = dict(table.loc[table["sample_id"] == str(sample), ["cluster", "label"]].to_numpy())
        labels = a.obs["cluster"].astype(str)
        present = sorted(set(labels) - {""})
        unmapped = [c for c in present if c not in lut]
        if unmapped:
            raise InputError(f"cluster(s) {unmapped} of this section are not in the cluster map",
                             file=path, sample=str(sample),
                             fix="add a row (sample_id, cluster, label) for each; an empty label "
                             "leaves the cluster out")
        a.obs["cluster"] = labels.map(lambda c, lut=lut: lut.get(c, "")).to_numpy()


def fold_data(qc_paths: Sequence[str], store_paths: Sequence[str]) -> tuple[dict[str, ad.AnnData], dict[str, str]]:
    """QC'd sections (without images) and patch-store paths keyed by sample id (the file stem)."""
    samples = [Path(p).stem for p in qc_paths]
    stores = [str(p) for p in store_paths]
    if [Path(p).parent.name for p in stores] != samples:
        raise InputError("the patch stores do not match the sections in order",
                         fix="list results/patches/{sample}/spots.npy in the order of the QC files")
    for sample, store in zip(samples, stores, strict=True):
        load_npy(store, sample=sample)  # a truncated store fails (and is removed) here
    return load_sections(dict(zip(samples, qc_paths, strict=True))), dict(zip(samples, stores, strict=True))
