"""Experiments: a cohort, a split, targets, a model and its training, as one named unit.

An experiment (``config["experiments"][name]``) combines the sections it uses, the split design,
the target transform and gene set (fitted per fold, on training spots only), the model, the
optimiser, augmentation and test-time augmentation. This module is the parse-time side: it
fills an experiment's unset keys from the schema's defaults (:func:`resolve_experiment`),
expands ``sections.each`` (:func:`expand_experiments`) and refuses what the config and the sheet
already show cannot run (:func:`check_experiment`). The fold ids are
:mod:`stpredict.learn.splits`; the jobs of one fold are :mod:`stpredict.learn.folds`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from stpredict.config import CONFIG_SCHEMA, load_schema, schema_defaults
from stpredict.errors import ConfigError
from stpredict.ingest.files import _first_lines
from stpredict.ingest.st import _SPOT_ID, _gene_symbols
from stpredict.ingest.visium import GRAPHCLUST_CLUSTERS

__all__ = [
    "JOB_KEYS",
    "ROUND_JOB_OMITS",
    "BASELINE_EVALUATION_KEYS",
    "SHEET_COLUMNS_OF_SPLITS",
    "job_settings",
    "experiment_samples",
    "series_sections",
    "check_experiment",
    "section_gene_names",
]


# ------------------------------------------------------------------------------ parse time
def experiment_samples(exp: Mapping[str, Any], sheet: pd.DataFrame) -> list[str]:
    """Sample ids an experiment uses, in sheet order."""
    sel = exp.get("sections", {}) or {}
    split = exp["split"]
    ids = sheet["sample_id"].tolist()
    if split["scheme"] == "section_imputation" and split.get("series"):
        return series_sections(exp, sheet)
    if split["scheme"] == "section_imputation":
        train, test = (
            list(split.get("train_sections", []) or []),
            str(split.get("test_section", "") or ""),
        )
        if not test or not train:
            raise ConfigError(
                "section_imputation needs split.train_sections and split.test_section",
                fix="name the training sections and the imputed section (sample_id values "
                "of the sheet), e.g. train_sections: [D1, D3], test_section: D2",
            )
        if test in train:
            raise ConfigError(
                f"section_imputation: the test section '{test}' is also a training section",
                fix="remove it from split.train_sections (a section cannot be imputed from itself)",
            )
        wanted = train + [test]
        ids = [s for s in ids if s in wanted]
        missing = sorted(set(wanted) - set(ids))
        if missing:
            raise ConfigError(
                f"section_imputation names section(s) {missing} that are not in the sample sheet",
                fix="use sample_id values from the sheet in split.train_sections / split.test_section",
            )
        return ids
    if sel.get("samples"):
        missing = sorted(set(sel["samples"]) - set(ids))
        if missing:
            raise ConfigError(
                f"sections.samples names {missing}, absent from the sample sheet",
                fix="use sample_id values from the sheet",
            )
        ids = [s for s in ids if s in set(sel["samples"])]
    if sel.get("patients"):
        pats = {str(p) for p in sel["patients"]}
        unknown = sorted(pats - set(sheet["patient_id"].astype(str)))
        if unknown:
            raise ConfigError(
                f"sections.patients names {unknown}, absent from the sample sheet",
                fix="use patient_id values from the sheet",
            )
        ids = [s for s in ids if sheet.loc[s, "patient_id"] in pats]
    if sel.get("platform"):
        ids = [s for s in ids if sheet.loc[s, "platform"] == sel["platform"]]
    if not ids:
        raise ConfigError(
            f"the experiment selects no section (sections: {dict(sel)})",
            fix="check its 'sections' settings against the sample sheet (samples, patients, "
            "platform)",
        )
    return ids


def series_sections(exp: Mapping[str, Any], sheet: pd.DataFrame) -> list[str]:
    """Return the sections of ``split.series`` in their ``order`` (imputation over a series).

    Leave-one-section-out over a series: fold ``k`` imputes the ``k``-th section (by the sheet's
    ``order``, ties by sample id) from the other sections of the series.

    Raises
    ------
    ConfigError
        The series is not in the sheet, has fewer than 2 sections, a section lacks an integer
        ``order``, or ``train_sections`` / ``test_section`` are also set.
    """
    split = exp["split"]
    series = str(split["series"])
    if split.get("train_sections") or split.get("test_section"):
        raise ConfigError(
            f"section_imputation sets both split.series '{series}' and "
            "split.train_sections / split.test_section",
            fix="use either series (leave one section out over the series) or "
            "train_sections + test_section (one imputed section)",
        )
    col = sheet["series"].astype(str) if "series" in sheet else pd.Series("", index=sheet.index)
    ids = sheet.index[col == series].astype(str).tolist()
    if len(ids) == 1:
        raise ConfigError(
            f"split.series '{series}' holds one section ({ids[0]}): there is no other section "
            "of the block to impute it from",
            sample=ids[0],
            fix=f"give the block's other consecutive sections series '{series}' and an 'order' "
            "in the sample sheet, or split within the section (split.scheme "
            "random_within_section or spatial_blocks)",
        )
    if not ids:
        known = sorted({v for v in col if v})
        raise ConfigError(
            f"split.series '{series}' has no section in the sample sheet; leaving one section "
            "out needs at least 2",
            fix="name a series of the sheet's 'series' column"
            + (f" ({', '.join(known)})" if known else " (fill the 'series' and 'order' columns)"),
        )
    order = {}
    for s in ids:
        try:
            order[s] = int(str(sheet.loc[s, "order"]).strip())
        except (KeyError, ValueError):
            raise ConfigError(
                f"section '{s}' of series '{series}' has no integer 'order' in the sample sheet",
                sample=s,
                fix="give every section of the series its position (1, 2, 3...) in 'order'",
            ) from None
    return sorted(ids, key=lambda s: (order[s], s))


def _patients(exp: Mapping[str, Any], sheet: pd.DataFrame) -> list[str]:
    return sorted({str(sheet.loc[s, "patient_id"]) for s in experiment_samples(exp, sheet)})


def section_gene_names(
    row: Mapping[str, Any], gene_map: str | os.PathLike[str] | None = None
) -> set[str] | None:
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
        header, first = (_first_lines(raw, 2) + ["", ""])[:2]
        sep = "\t" if "\t" in header else ","
        fields = header.split(sep)
        if len(fields) == len(first.split(sep)):
            fields = fields[1:]  # the corner cell
        ids = [f.strip().strip('"') for f in fields]
        if not ids or any(_SPOT_ID.match(i) for i in ids[:20]):
            return None  # genes x spots layout: the genes are the first column
        if gene_map:
            if not Path(gene_map).is_file():
                return None
            ids = _gene_symbols(ids, pd.read_csv(gene_map, sep="\t", dtype=str))
        return set(ids)
    except Exception:  # noqa: BLE001 - a cheap look only; the reader reports real problems
        return None


def check_experiment(
    exp: Mapping[str, Any],
    sheet: pd.DataFrame,
    *,
    gene_map: str | os.PathLike[str] | None = None,
    thorough: bool = True,
) -> None:
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
        attributions of genes outside its panel; enables super-resolution of clusters, of a
        section without image, or with a grid that does not fit the sections' lattice.
    """
    samples = experiment_samples(exp, sheet)
    _check_split(exp, sheet, samples)
    _check_task(exp, sheet, samples)
    _check_superres(exp, sheet, samples)
    _check_model(exp["model"], thorough)
    _check_genes(exp, sheet, samples, gene_map, thorough)


def _check_split(exp: Mapping[str, Any], sheet: pd.DataFrame, samples: list[str]) -> None:
    split = exp["split"]
    if split["scheme"] != "leave_one_patient_out":
        return
    patients = _patients(exp, sheet)
    if len(patients) < 2:
        raise ConfigError(
            f"leave_one_patient_out needs at least 2 patients, but the experiment's sections "
            f"{samples} all come from patient '{patients[0]}' (nothing would be left to train on)",
            fix="add sections of other patients, or use split.scheme random_within_section or "
            "spatial_blocks within this patient's sections",
        )
    if int(split["inner_folds"]) == 1:
        raise ConfigError(
            "split.inner_folds is 1: an inner cross-validation needs at least 2 folds",
            fix="set split.inner_folds to 0 (no inner folds) or to 2 or more",
        )


def _check_superres(exp: Mapping[str, Any], sheet: pd.DataFrame, samples: list[str]) -> None:
    """Refuse super-resolution of clusters, of sections without image, or on the wrong lattice."""
    sr = exp.get("superres") or {}
    if not sr.get("enabled"):
        return
    if exp["task"] != "regression":
        raise ConfigError(
            "superres is enabled for a clusters experiment; super-resolution predicts genes",
            fix="set superres.enabled: false for this experiment",
        )
    from stpredict.patches.centres import resolve_grid

    for s in samples:
        resolve_grid(str(sr["grid"]), str(sheet.loc[s, "platform"]), sample=s)
        if not sheet.loc[s, "image"]:
            raise ConfigError(
                "superres needs the section's full-resolution image (its centres are cut from it)",
                sample=s,
                fix="fill the sheet's 'image' column or set superres.enabled: false",
            )


def _check_task(exp: Mapping[str, Any], sheet: pd.DataFrame, samples: list[str]) -> None:
    task = exp["task"]
    if task == "regression" and exp["train"]["loss"] == "cross_entropy":
        raise ConfigError(
            "train.loss cross_entropy is for task: clusters, but this experiment regresses genes",
            fix="use train.loss mse or smoothl1, or set task: clusters",
        )
    if task != "clusters":
        return
    for s in samples:
        row = sheet.loc[s]
        if row["clusters"]:
            continue
        if row["platform"] == "st":
            raise ConfigError(
                f"a clusters experiment uses the ST section '{s}', which has no clusters",
                sample=s,
                fix="fill the sheet's 'clusters' column (CSV Barcode,Cluster) or leave the section "
                "out of the experiment (sections: {platform: visium})",
            )
        raw = Path(str(row["raw"]))
        filled = (raw / "spatial").is_dir() or (raw / "filtered_feature_bc_matrix.h5").is_file()
        if filled and not any((raw / c).is_file() for c in GRAPHCLUST_CLUSTERS):
            raise ConfigError(
                f"a clusters experiment uses '{s}', whose Space Ranger outs/ has no graphclust "
                f"clusters ({raw / GRAPHCLUST_CLUSTERS[-1]})",
                sample=s,
                fix="fill the sheet's 'clusters' column (CSV Barcode,Cluster) or leave the section out",
            )


def _check_model(model: Mapping[str, Any], thorough: bool) -> None:
    weights = str(model["weights"])
    if weights not in ("none", "imagenet") and not Path(weights).is_file():
        raise ConfigError(
            f"model.weights names a file that does not exist: {weights}",
            fix="give a state_dict file, 'imagenet' (torchvision's cache) or 'none'",
        )
    if not thorough:
        return
    if model["backbone"] != "tiny":
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if model["backbone"] not in known:
            import difflib

            close = difflib.get_close_matches(model["backbone"], known, n=3)
            raise ConfigError(
                f"unknown model.backbone '{model['backbone']}'"
                + (f" (did you mean {', '.join(close)}?)" if close else ""),
                fix="use 'tiny' or a torchvision classification model name such as densenet121, "
                "vgg16, resnet50",
            )
    if weights.lower() == "imagenet":
        from stpredict.errors import StpredictError
        from stpredict.learn.models import require_imagenet_weights

        try:
            require_imagenet_weights(model["backbone"])
        except StpredictError as exc:
            raise ConfigError(exc.problem, fix=exc.fix) from None


def _evaluation_genes(exp: Mapping[str, Any]) -> list[str]:
    """Return the genes the evaluation names (maps, attributions)."""
    ev = exp.get("evaluation", {}) or {}
    named = list((ev.get("maps", {}) or {}).get("genes", []) or [])
    explained = (ev.get("attributions", {}) or {}).get("gene", "")
    return named + ([explained] if explained else [])


def _measured_genes(
    sheet: pd.DataFrame, samples: list[str], gene_map: str | os.PathLike[str] | None
) -> set[str] | None:
    """Return every gene some section measures (``None`` while a section's files do not exist)."""
    names = [section_gene_names(sheet.loc[s], gene_map) for s in samples]
    if not names or any(n is None for n in names):
        return None
    return set().union(*names)


def _check_genes(
    exp: Mapping[str, Any],
    sheet: pd.DataFrame,
    samples: list[str],
    gene_map: str | os.PathLike[str] | None,
    thorough: bool,
) -> None:
    genes = exp["targets"]["genes"]
    named = _evaluation_genes(exp)
    if genes["mode"] != "panel":  # genes chosen per fold: the evaluation's must be measured
        known = _measured_genes(sheet, samples, gene_map) if thorough and named else None
        absent = [g for g in named if known is not None and g not in known]
        if absent:
            raise ConfigError(
                f"evaluation.maps.genes / evaluation.attributions.gene name {', '.join(absent)}, "
                f"which none of the experiment's sections measures",
                fix="use the sections' gene names (ST files may use Ensembl ids: set "
                "reading.gene_map to map them to symbols), or leave the setting empty",
            )
        return
    from stpredict.learn.targets import load_panel

    if not genes.get("panel"):
        raise ConfigError(
            "targets.genes.mode is panel but targets.genes.panel is empty",
            fix="name a shipped panel (deepspace_21, deepspace_3) or a file of gene symbols",
        )
    panel = load_panel(genes["panel"])
    outside = [g for g in named if g not in panel]
    if outside:
        raise ConfigError(
            f"evaluation.maps.genes / evaluation.attributions.gene name {', '.join(outside)}, which "
            f"the panel '{genes['panel']}' does not predict",
            fix=f"choose among the panel's genes ({', '.join(panel[:8])}{' ...' if len(panel) > 8 else ''})",
        )
    known = _measured_genes(sheet, samples, gene_map) if thorough else None
    if known is None:
        return
    missing = [g for g in panel if g not in known]
    allow = bool(genes.get("allow_missing", False))
    if missing and (not allow or len(missing) == len(panel)):
        raise ConfigError(
            f"{len(missing)} of the {len(panel)} genes of panel '{genes['panel']}' are measured "
            f"in none of the experiment's sections {samples}: {', '.join(missing[:10])}"
            + (" ..." if len(missing) > 10 else ""),
            fix="check the symbols (ST files may use Ensembl ids: set reading.gene_map), edit "
            "the panel, or set targets.genes.allow_missing: true to drop them",
        )


_SCHEMA = load_schema(CONFIG_SCHEMA)
#: defaults of every experiment key: the schema's ``$defs/experiment`` (see config/README.md);
#: ``targets``, ``evaluation`` and ``seed`` default to the global sections instead
EXPERIMENT_DEFAULTS: dict[str, Any] = schema_defaults(_SCHEMA["$defs"]["experiment"])
#: defaults of the ``evaluation`` section: the schema's ``evaluation``
EVALUATION_DEFAULTS: dict[str, Any] = schema_defaults(_SCHEMA["properties"]["evaluation"])
#: defaults of the global ``targets`` section and ``seed`` (what an experiment falls back to)
_GLOBAL_DEFAULTS: dict[str, Any] = schema_defaults(_SCHEMA)


def _check_keys(over: Mapping[str, Any], base: Mapping[str, Any], where: str) -> None:
    for k, v in over.items():
        if k not in base:
            raise ConfigError(
                f"unknown key '{where}.{k}' in an experiment",
                fix=f"use one of {', '.join(sorted(base))} (config/README.md)",
            )
        if isinstance(v, Mapping) and isinstance(base[k], Mapping):
            _check_keys(v, base[k], f"{where}.{k}")


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = (
            _merge(base[k], v) if isinstance(v, Mapping) and isinstance(base.get(k), Mapping) else v
        )
    return out


#: The keys of a resolved experiment each kind of job reads: a rule's ``params`` hold exactly
#: these (Snakemake reruns a job when its params change), so that an evaluation setting, a
#: figure option or another section's sheet row never reruns a split, a training or a
#: prediction. The job-time code is given only these keys (a key it reads but is not given is a
#: KeyError in the tests, not a silent dependency).
_SPLIT_KEYS = ("task", "seed", "split", "exclude_clusters", "cluster_map", "parent")
_TRAIN_KEYS = (*_SPLIT_KEYS, "targets", "model", "train")
JOB_KEYS: dict[str, tuple[str, ...]] = {
    "split": _SPLIT_KEYS,
    "train": _TRAIN_KEYS,
    "predict": (*_TRAIN_KEYS, "tta"),
    # a teacher/student round: training + prediction + the rounds' own settings (less
    # ROUND_JOB_OMITS: a chain's round k is the same job whatever the other chains or rounds)
    "rounds": (*_TRAIN_KEYS, "tta", "semi_supervised"),
    # a baseline: its seed and the estimators' settings (splits and targets are its inputs)
    "baseline": ("seed",),
}
#: ``semi_supervised`` keys a round job does not depend on: how many rounds follow, which other
#: chains run beside it, and which chain is the method (its own chain is its ``control`` wildcard)
ROUND_JOB_OMITS: tuple[str, ...] = ("rounds", "control", "controls")
#: ``evaluation`` keys a baseline job depends on
BASELINE_EVALUATION_KEYS: tuple[str, ...] = ("random_forest", "nmf")

#: The sample-sheet columns the split manifest depends on (patients, series and their order).
SHEET_COLUMNS_OF_SPLITS: tuple[str, ...] = ("sample_id", "patient_id", "series", "order")


def job_settings(exp: Mapping[str, Any], job: str) -> dict[str, Any]:
    """Return the part of a resolved experiment that a ``job`` (:data:`JOB_KEYS`) depends on.

    Parameters
    ----------
    exp
        A resolved experiment (:func:`resolve_experiment`).
    job
        ``"split"``, ``"train"``, ``"predict"``, ``"rounds"`` (``semi_supervised`` without
        :data:`ROUND_JOB_OMITS`) or ``"baseline"`` (``seed`` and ``evaluation`` reduced to
        :data:`BASELINE_EVALUATION_KEYS`).

    Returns
    -------
    dict
        A deep copy of those keys (absent optional keys, e.g. ``parent``, stay absent).
    """
    out = {k: copy.deepcopy(exp[k]) for k in JOB_KEYS[job] if k in exp}
    if job == "rounds" and "semi_supervised" in out:
        out["semi_supervised"] = {
            k: v for k, v in out["semi_supervised"].items() if k not in ROUND_JOB_OMITS
        }
    if job == "baseline":
        ev = exp.get("evaluation", {})
        out["evaluation"] = {k: copy.deepcopy(ev[k]) for k in BASELINE_EVALUATION_KEYS if k in ev}
    return out


def resolve_experiment(exp: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Fill an experiment's unset keys from :data:`EXPERIMENT_DEFAULTS` and the global config.

    ``targets`` defaults to the global ``targets`` section, ``evaluation`` to the global
    ``evaluation`` section and ``seed`` to the global seed, each filled from the schema's
    defaults where the config lacks them (Snakemake's ``validate`` has filled them in a run), so
    the result holds every key the jobs read.
    """
    base = {
        **EXPERIMENT_DEFAULTS,
        "targets": _merge(_GLOBAL_DEFAULTS["targets"], config.get("targets", {})),
        "seed": config.get("seed", _GLOBAL_DEFAULTS["seed"]),
        "evaluation": _merge(EVALUATION_DEFAULTS, config.get("evaluation", {})),
    }
    _check_keys(exp.get("evaluation") or {}, EVALUATION_DEFAULTS, "evaluation")
    # a deep copy: the nested defaults (and the global sections) must never be changed below
    out = copy.deepcopy(_merge(base, exp))
    if out["task"] == "clusters" and out["train"]["loss"] != "cross_entropy":
        # a new dict: out["train"] may be EXPERIMENT_DEFAULTS["train"] itself
        out["train"] = {**out["train"], "loss": "cross_entropy"}
    return out


#: split schemes that train within a section, so that ``sections.each`` makes sense
WITHIN_SECTION_SCHEMES = ("random_within_section", "spatial_blocks")


def expand_experiments(
    experiments: Mapping[str, Any], config: Mapping[str, Any], sheet: pd.DataFrame
) -> dict[str, dict[str, Any]]:
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
            problem = (
                exc.problem if f"'{name}'" in exc.problem else f"experiment '{name}': {exc.problem}"
            )
            raise ConfigError(problem, file=exc.file, sample=exc.sample, fix=exc.fix) from None
    return out


def _expand_one(
    name: str,
    raw: Mapping[str, Any],
    experiments: Mapping[str, Any],
    config: Mapping[str, Any],
    sheet: pd.DataFrame,
) -> dict[str, dict[str, Any]]:
    """Resolve one experiment of :func:`expand_experiments` (its expansion when ``sections.each``)."""
    if ((raw or {}).get("evaluation") or {}).get("nuclear"):
        raise ConfigError(
            f"experiment '{name}' sets evaluation.nuclear, but nuclear features are "
            "computed once per section (results/features/{sample}/nuclear.tsv) "
            "and shared by every experiment",
            fix="set evaluation.nuclear in the global evaluation section",
        )
    exp = resolve_experiment(raw, config)
    _check_validation(name, exp)
    if not exp["sections"].get("each"):
        check_cluster_labels(name, exp, sheet)
        return {name: exp}
    scheme = exp["split"]["scheme"]
    if scheme not in WITHIN_SECTION_SCHEMES:
        raise ConfigError(
            f"experiment '{name}': sections.each needs a within-section split, not '{scheme}'",
            fix=f"use split.scheme {' or '.join(WITHIN_SECTION_SCHEMES)}, or drop sections.each",
        )
    out: dict[str, dict[str, Any]] = {}
    for sample in experiment_samples(exp, sheet):
        sub = json.loads(json.dumps(exp))
        sub["sections"] = {"samples": [sample], "patients": [], "platform": "", "each": False}
        sub["parent"] = name
        key = f"{name}.{sample}"
        if key in experiments:
            raise ConfigError(
                f"experiment '{name}' (sections.each) would create '{key}', which "
                "is already an experiment name",
                fix="rename one of them",
            )
        check_cluster_labels(key, sub, sheet)
        out[key] = sub
    return out


def _check_validation(name: str, exp: Mapping[str, Any]) -> None:
    """Refuse early stopping in an experiment whose folds have no validation spots."""
    split = exp["split"]
    if not exp["train"].get("patience"):
        return
    scheme = split["scheme"]
    no_val = (scheme == "leave_one_patient_out" and int(split["inner_folds"]) < 2) or (
        scheme != "leave_one_patient_out" and not float(split["val_frac"]) > 0
    )
    if no_val:
        raise ConfigError(
            f"experiment '{name}' sets train.patience {exp['train']['patience']} (early stopping on "
            f"the validation loss), but its {scheme} folds have no validation spots"
            + (" (val_frac 0)" if scheme != "leave_one_patient_out" else " (no inner folds)"),
            fix="set split.val_frac above 0 (DeepSpaCE 0.2), or train.patience: null"
            if scheme != "leave_one_patient_out"
            else "set split.inner_folds (ST-Net 4: the epoch count is chosen on them) or train.patience: null",
        )


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
            "cluster_map: a TSV with columns sample_id, cluster, label that harmonises the labels",
        )
    if exp.get("cluster_map") and exp.get("task") != "clusters":
        raise ConfigError(
            f"experiment '{name}' sets cluster_map but its task is not clusters",
            fix="remove cluster_map or set task: clusters",
        )
