"""What travels with an experiment's models: the model card, and reading a model folder.

A fold folder holds ``model.pt`` (weights, backbone, genes, stored patch size) and
``fitted.json`` (gene set, fitted target transform); neither says what field of view, in µm,
the patches covered, nor at which µm/px the training images were. The card
``results/experiments/{experiment}/model.json`` (rule ``model_card``, :func:`write_model_card`)
adds them, so a copy of the experiment folder is enough to predict a new image:

* ``experiment``, ``task``, ``tta``, ``precision`` (the experiment's prediction settings);
* ``folds``: fold id -> ``model`` and ``fitted`` paths **relative to the card**, and the fold's
  number of genes (outer folds only: each was trained on its fold's training side);
* ``genes``: the genes every fold predicts (the intersection, in the first fold's order; a
  ``top_mean`` selection is fitted per fold), ``target_transform`` (name and units),
  ``gene_ids`` (gene -> its id in the training sections, ``""`` unknown);
* ``patches``: the experiment's patch geometry (``fov_um`` / ``fov_px``, ``size_px``,
  ``pad_value``), ``training_mpp`` (µm/px of each training section's image), ``fov_um``
  (the field of view in µm: ``fov_px`` x the median training µm/px for a pixel field of view)
  and ``patch_mpp`` = ``fov_um / size_px``: the µm per pixel of what the model sees.

:func:`load_model_dir` accepts the experiment folder (every fold, averaged) or one fold folder
(that fold only; the card is found in a parent folder), checks that the files exist and agree
(the genes of ``fitted.json``, of ``model.pt`` and of the card), and refuses with one line
what cannot be used.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stpredict.errors import ConfigError, InputError
from stpredict.io import read_json, write_json
from stpredict.patches.geometry import PatchSpec

__all__ = [
    "CARD_NAME",
    "ModelSet",
    "write_model_card",
    "load_model_dir",
    "fold_genes",
    "store_geometry",
]

log = logging.getLogger(__name__)

#: file name of the card in an experiment folder
CARD_NAME = "model.json"
_FORMAT = "stpredict model card"
_SPEC_KEYS = ("fov_um", "fov_px", "size_px", "pad_value")


def _gene_ids(genes: list[str], sections: Mapping[str, Any]) -> dict[str, str]:
    from stpredict.ingest.section import read_var

    ids = dict.fromkeys(genes, "")
    for path in sections.values():
        var = read_var(path)
        if "gene_ids" not in var:
            continue
        have = var["gene_ids"].astype(str)
        for g in genes:
            if not ids[g] and g in have.index and have[g] not in ("", "nan"):
                ids[g] = str(have[g])
    return ids


def fold_genes(fitted: Mapping[str, Any]) -> list[str]:
    """Genes a fold predicts, from its ``fitted.json`` (regression folds)."""
    from stpredict.learn.targets import from_dict

    return [str(g) for g in from_dict(dict(fitted["genes"])).genes_]


def store_geometry(stores: Mapping[str, str | os.PathLike[str]]) -> dict[str, Any]:
    """Patch geometry shared by the experiment's stores, and each section's µm/px.

    Parameters
    ----------
    stores
        ``{sample: spots.json}`` of the experiment's patch stores.

    Returns
    -------
    dict
        ``patches`` (the stores' spec), ``training_mpp`` (µm/px by section), ``fov_um`` (the
        field of view in µm) and ``patch_mpp`` (``fov_um / size_px``: µm per pixel of what the
        model sees).
    """
    specs, mpp = {}, {}
    for sample, path in sorted(stores.items()):
        meta = read_json(path)
        spec = meta.get("spec") or {k: meta.get(k) for k in _SPEC_KEYS}
        specs[sample] = {k: spec.get(k) for k in _SPEC_KEYS}
        mpp[sample] = meta.get("mpp")
    distinct = {tuple(sorted(s.items())) for s in specs.values()}
    if len(distinct) != 1:
        raise InputError(
            f"the experiment's patch stores have different geometries {sorted(distinct)}",
            fix="rerun extract_patches for every section (the patches settings changed)",
        )
    spec = next(iter(specs.values()))
    known = [float(v) for v in mpp.values() if v]
    if spec["fov_um"] is not None:
        fov_um = float(spec["fov_um"])
    elif known:
        fov_um = float(spec["fov_px"]) * statistics.median(known)
    else:
        raise InputError(
            "the patches have a field of view in pixels and no section records its µm/px",
            fix="give the sections' mpp in the sample sheet",
        )
    return {
        "patches": spec,
        "training_mpp": mpp,
        "fov_um": fov_um,
        "patch_mpp": fov_um / float(spec["size_px"]),
    }


def write_model_card(
    experiment: str,
    settings: Mapping[str, Any],
    folds: Mapping[str, Mapping[str, str | os.PathLike[str]]],
    stores: Mapping[str, str | os.PathLike[str]],
    out: str | os.PathLike[str],
    sections: Mapping[str, str | os.PathLike[str]] | None = None,
) -> dict[str, Any]:
    """Write the model card of an experiment (module notes).

    Parameters
    ----------
    experiment
        The experiment's name.
    settings
        ``task``, ``tta``, ``precision`` of the experiment.
    folds
        Outer fold id -> ``{"model": model.pt, "fitted": fitted.json}``.
    stores
        Section -> its spot store's ``.json`` (geometry and µm/px of the training images).
    out
        The card, ``results/experiments/{experiment}/model.json``.
    sections
        Section -> its written section file: the gene ids (``var["gene_ids"]``) of the genes,
        the first non-empty id over the sections (``gene_ids`` of the card; ``""`` unknown).

    Returns
    -------
    dict
        The card.
    """
    from stpredict.vocab import target_units

    root = Path(out).resolve().parent
    task = str(settings["task"])
    card: dict[str, Any] = {
        "format": _FORMAT,
        "version": 1,
        "experiment": experiment,
        "task": task,
        "tta": int(settings["tta"]),
        "precision": str(settings["precision"]),
        "folds": {},
    }
    genes: list[str] | None = None
    transform = None
    for fold, paths in sorted(folds.items(), key=lambda kv: (len(kv[0]), kv[0])):
        fitted = read_json(paths["fitted"])
        entry = {k: os.path.relpath(Path(paths[k]).resolve(), root) for k in ("model", "fitted")}
        if task == "regression":
            g = fold_genes(fitted)
            entry["n_genes"] = len(g)
            genes = g if genes is None else [x for x in genes if x in set(g)]
            transform = str(fitted["transform_name"])
        card["folds"][str(fold)] = entry
    if task == "regression":
        card["genes"] = genes or []
        card["target_transform"] = {"name": transform, "units": target_units(str(transform))}
        card["gene_ids"] = _gene_ids(card["genes"], sections or {})
    card.update(store_geometry(stores))
    card["created_by"] = "stpredict.wsi.card.write_model_card"
    write_json(card, out)
    return card


@dataclass
class ModelSet:
    """The models of a model folder, with what they need to predict a new image.

    Attributes
    ----------
    experiment
        The experiment's name.
    card
        The model card (module notes).
    models
        Fold id -> ``model.pt`` (absolute paths).
    genes
        Genes predicted by every model used.
    spec
        The patch geometry as a field of view in µm (``fov_um``, ``size_px``, ``pad_value``).
    patch_mpp
        µm per pixel of the model's stored patches.
    source
        The folder given.
    """

    experiment: str
    card: dict[str, Any]
    models: dict[str, Path]
    genes: list[str]
    spec: PatchSpec
    patch_mpp: float
    source: Path

    @property
    def transform_name(self) -> str:
        """The target transform the predictions are in."""
        return str(self.card["target_transform"]["name"])


def _find_card(folder: Path) -> tuple[Path, str | None]:
    """Find the card of an experiment folder, or of the experiment a fold folder belongs to."""
    if (folder / CARD_NAME).is_file():
        return folder / CARD_NAME, None
    if not ((folder / "model.pt").is_file() or (folder / "fitted.json").is_file()):
        raise InputError(
            f"not a model folder: it holds neither {CARD_NAME} (an experiment folder) nor "
            "model.pt (a fold folder)",
            file=folder,
            fix="give results/experiments/{experiment} or one of its folds/{fold} folders",
        )
    for parent in list(folder.parents)[:5]:
        if (parent / CARD_NAME).is_file():
            return parent / CARD_NAME, folder.name
    raise InputError(
        f"the fold folder has no model card: {CARD_NAME} of its experiment (two folders up) "
        "is missing, so the patch geometry and µm/px of the model are unknown",
        file=folder,
        fix=f"copy the whole experiment folder (with {CARD_NAME}; `snakemake "
        "results/experiments/{experiment}/model.json` writes it)",
    )


def _check_card(card: Mapping[str, Any], path: Path) -> None:
    if card.get("format") != _FORMAT:
        raise InputError(
            "not a stpredict model card", file=path, fix="rerun snakemake to write the card"
        )
    if card.get("task") != "regression":
        raise ConfigError(
            f"experiment '{card.get('experiment')}' classifies clusters; predicting an image "
            "needs a gene-expression (regression) experiment",
            file=path,
            fix="choose a regression experiment (wsi.experiment, or another model folder)",
        )
    if not card.get("folds") or not card.get("genes"):
        raise InputError(
            "the model card lists no fold or no gene shared by its folds",
            file=path,
            fix="rerun snakemake for the experiment",
        )


def _check_fold(fold: str, model: Path, fitted: Path, genes: list[str], card_path: Path) -> None:
    for f in (model, fitted):
        if not f.is_file():
            raise InputError(
                f"fold {fold}: {f.name} is missing",
                file=f,
                fix="copy the experiment folder whole, or rerun snakemake for the experiment",
            )
    have = set(fold_genes(read_json(fitted)))
    missing = [g for g in genes if g not in have]
    if missing:
        raise InputError(
            f"fold {fold}'s fitted.json does not select {len(missing)} of the card's genes "
            f"(e.g. {', '.join(missing[:3])}): the card and the models are of different runs",
            file=card_path,
            fix="rerun snakemake for the experiment (it rewrites model.json)",
        )


def load_model_dir(path: str | os.PathLike[str]) -> ModelSet:
    """Read a model folder: an experiment folder (every fold) or one fold folder (module notes).

    Raises
    ------
    InputError
        The folder, its card or a fold's files are missing, or they do not agree.
    ConfigError
        The experiment is not a gene-expression experiment.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(
            "the model folder does not exist",
            file=folder,
            fix="give results/experiments/{experiment} (or one of its folds/{fold}) of a run",
        )
    card_path, fold = _find_card(folder)
    card = read_json(card_path)
    _check_card(card, card_path)
    root = card_path.parent
    folds = {str(k): v for k, v in card["folds"].items()}
    if fold is not None:
        # one fold folder (a fold of the card, or e.g. a semi-supervised student's)
        here = folder.resolve()
        folds = {fold: {"model": here / "model.pt", "fitted": here / "fitted.json"}}
    genes = [str(g) for g in card["genes"]]
    models = {}
    for k, entry in folds.items():
        model, fitted = root / entry["model"], root / entry["fitted"]
        _check_fold(k, model, fitted, genes, card_path)
        models[k] = model.resolve()
    spec = PatchSpec(
        fov_um=float(card["fov_um"]),
        size_px=int(card["patches"]["size_px"]),
        pad_value=int(card["patches"]["pad_value"]),
    )
    return ModelSet(
        experiment=str(card["experiment"]),
        card=dict(card),
        models=models,
        genes=genes,
        spec=spec,
        patch_mpp=float(card["patch_mpp"]),
        source=folder,
    )
