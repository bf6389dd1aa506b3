"""Parse time of predict-only cohorts: the ``cohorts`` config resolved and its sheets read.

A cohort (``cohorts.{name}`` of the config; rule file ``workflow/rules/cohort.smk``) names a
sample sheet (``sheet``) and the experiment folder of an earlier run (``models``:
``results/experiments/{experiment}`` with its ``model.json`` card). Nothing is trained: every
section goes through ingestion, QC and patching at the model's geometry and is predicted by
the fold models; sections with counts are scored against their measurements (external
validation), image-only rows (platform ``image``) are predicted only.

* Defaults are the schema's (``$defs/cohort`` of ``workflow/schemas/config.schema.yaml``); the
  cohort's ``qc`` keys left null take the run's ``qc`` values (:func:`resolve_cohort`).
* The sheet has the columns of the run's sheet (``workflow/schemas/samples.schema.yaml``). An
  image-only row has ``platform`` ``image``, an empty ``raw``, its ``image``, optionally
  ``spots`` (a TSV ``x, y`` in full-resolution px, optional ``id``; empty = the image is tiled)
  and ``mpp`` (else the TIFF tags).
* A section id names one kind of section (with counts, or image-only) across all cohorts: the
  rules that differ by kind are told apart by the id (:func:`section_kinds`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from stpredict.errors import ConfigError

__all__ = [
    "IMAGE_PLATFORM",
    "CARD_FILE",
    "cohort_defaults",
    "resolve_cohort",
    "read_cohort_sheet",
    "has_counts",
    "section_kinds",
    "check_models",
]

#: platform of an image-only row (no counts)
IMAGE_PLATFORM = "image"
#: the model card inside a models folder (``stpredict.wsi.card.CARD_NAME``)
CARD_FILE = "model.json"


def cohort_defaults() -> dict[str, Any]:
    """Return the defaults of one cohort, from the config schema (``$defs/cohort``)."""
    from stpredict.config import CONFIG_SCHEMA, load_schema, schema_defaults

    return schema_defaults(load_schema(CONFIG_SCHEMA)["$defs"]["cohort"])


def _merge(base: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in given.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _fill_null(cfg: dict[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out[key] = _fill_null(value, run.get(key) or {})
        else:
            out[key] = run.get(key) if value is None else value
    return out


def resolve_cohort(
    name: str, entry: Mapping[str, Any], config: Mapping[str, Any]
) -> dict[str, Any]:
    """One cohort with the schema's defaults filled in and null ``qc`` keys from the run's ``qc``.

    Parameters
    ----------
    name
        The cohort's name (``cohorts.{name}``).
    entry
        Its config entry.
    config
        The run's configuration (defaults filled in).
    """
    out = _merge(cohort_defaults(), entry)
    out["qc"] = _fill_null(out["qc"], config.get("qc") or {})
    out["name"] = str(name)
    return out


def has_counts(row: Mapping[str, Any]) -> bool:
    """Whether a sheet row has measured counts (not an image-only row)."""
    return str(row["platform"]) != IMAGE_PLATFORM


def read_cohort_sheet(
    path: str,
    schema: Mapping[str, Any],
    produced: Iterable[str] = (),
    demo_sheet: Callable[[], pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Read and validate a cohort's sheet; return it indexed by sample_id.

    Parameters
    ----------
    path
        The sheet.
    schema
        The sample-sheet schema.
    produced
        Files a rule of this run writes (the demo's): they need not exist yet.
    demo_sheet
        The rows of a sheet that a rule of this run writes (the demo cohort's), used before it
        exists so that the plan is the same before and after.
    """
    from stpredict.config import check_sheet_paths, read_sheet, validate_sheet

    made = set(produced)
    if demo_sheet is not None and not Path(path).exists():
        df = demo_sheet()
    else:
        df = read_sheet(path)
    sheet = validate_sheet(df, schema, path)
    check_sheet_paths(sheet, path, produced=made)
    return sheet


def section_kinds(sheets: Mapping[str, pd.DataFrame]) -> dict[str, set[str]]:
    """Section ids with counts (``counts``) and image-only (``image``) over every cohort.

    Raises
    ------
    ConfigError
        A section id that is image-only in one cohort and has counts in another.
    """
    kinds: dict[str, set[str]] = {"counts": set(), "image": set()}
    where: dict[str, tuple[str, str]] = {}
    for cohort, sheet in sheets.items():
        for sample, row in sheet.iterrows():
            kind = "counts" if has_counts(row) else "image"
            other = "image" if kind == "counts" else "counts"
            if sample in kinds[other]:
                raise ConfigError(
                    f"section '{sample}' is {'image-only' if kind == 'image' else 'with counts'} "
                    f"in cohort '{cohort}' but not in cohort '{where[sample][0]}'",
                    sample=str(sample),
                    fix="give the two sections different sample ids",
                )
            kinds[kind].add(str(sample))
            where[str(sample)] = (cohort, kind)
    return kinds


def check_models(name: str, models: str, produced: Iterable[str] = ()) -> str:
    """Return the card of a cohort's models folder; refuse one neither there nor made by this run.

    Returns
    -------
    str
        ``{models}/model.json`` (normalised).
    """
    card = os.path.normpath(os.path.join(models, CARD_FILE))
    if card in {os.path.normpath(p) for p in produced}:
        return card
    if not Path(models).is_dir():
        raise ConfigError(
            f"cohort '{name}': the models folder does not exist: {models}",
            fix="set cohorts.{name}.models to results/experiments/{experiment} of a finished "
            "run (relative to the directory Snakemake runs in)",
        )
    if not Path(card).is_file():
        raise ConfigError(
            f"cohort '{name}': the models folder has no model card ({CARD_FILE})",
            file=models,
            fix="give results/experiments/{experiment} of a run (`snakemake "
            "results/experiments/{experiment}/model.json` writes the card)",
        )
    return card
