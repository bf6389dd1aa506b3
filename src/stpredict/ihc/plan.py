"""Parse time: which experiment's predictions each IHC section is compared with.

A section with an ``ihc_image`` in the sample sheet is compared with the held-out predictions
of one regression experiment. ``ihc.experiment`` names it; left empty, the first experiment (in
config order) that holds the section out and can predict the stained gene is used, and a
section that no experiment predicts is skipped with a note (the paper presets run on sheets
whose IHC gene their panels do not hold). A named experiment that cannot serve is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from stpredict.errors import ConfigError

__all__ = ["ihc_plan", "unfit_reason"]


def _check_measured(
    row: pd.Series, sample: str, gene: str, gene_map: str | os.PathLike[str] | None
) -> None:
    """Refuse an ``ihc_gene`` that the section's own count matrix does not hold (a typo)."""
    from stpredict.learn.experiments import section_gene_names

    names = section_gene_names(row, gene_map)
    if names is not None and gene not in names:
        raise ConfigError(
            f"ihc_gene '{gene}' is not a gene of the section's count matrix",
            sample=sample,
            fix="check the sheet's ihc_gene column (a gene symbol as the count matrix, or the "
            "reading.gene_map, names it)",
        )


def unfit_reason(
    name: str,
    experiments: Mapping[str, Mapping[str, Any]],
    sheet: pd.DataFrame,
    sample: str,
    gene: str,
    held_out: Callable[[str], list[str]],
    gene_map: str | os.PathLike[str] | None = None,
    thorough: bool = True,
) -> str | None:
    """Why experiment ``name`` cannot give predictions of ``gene`` on ``sample`` (None: it can)."""
    from stpredict.learn.experiments import experiment_samples, section_gene_names
    from stpredict.learn.targets import load_panel

    if name not in experiments:
        return f"is not an experiment of the config (known: {', '.join(experiments) or 'none'})"
    exp = experiments[name]
    if exp["task"] != "regression":
        return "classifies clusters; it predicts no gene"
    tested = held_out(name)
    if sample not in tested:
        return f"does not predict section '{sample}' (it holds out {', '.join(tested) or 'none'})"
    genes = exp["targets"]["genes"]
    if genes["mode"] == "panel":
        panel = load_panel(genes["panel"]) if genes.get("panel") else []
        if gene not in panel:
            return f"does not predict {gene}: its panel '{genes['panel']}' lacks it"
        return None
    if thorough:
        names = [section_gene_names(sheet.loc[s], gene_map) for s in experiment_samples(exp, sheet)]
        if names and all(n is not None for n in names) and not any(gene in n for n in names):
            return f"cannot predict {gene}: none of its sections measures it"
    return None


def ihc_plan(
    cfg: Mapping[str, Any],
    sheet: pd.DataFrame,
    experiments: Mapping[str, Mapping[str, Any]],
    held_out: Callable[[str], list[str]],
    *,
    gene_map: str | os.PathLike[str] | None = None,
    thorough: bool = True,
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Resolve the IHC comparisons of the run.

    Parameters
    ----------
    cfg
        The ``ihc`` section of the config (defaults filled in).
    sheet
        The validated sample sheet (indexed by sample id).
    experiments
        The resolved experiments.
    held_out
        ``name -> sections the experiment predicts`` (its held-out sections).
    gene_map, thorough
        As for :func:`stpredict.learn.experiments.check_experiment` (``thorough`` reads the raw
        files' gene names).

    Returns
    -------
    plan, notes
        ``{sample: {"experiment", "gene", "image", "known_affine"}}`` and one line per IHC
        section left out (no experiment predicts it).

    Raises
    ------
    ConfigError
        ``ihc.experiment`` names an experiment that does not predict an IHC section or its
        gene; ``ihc.known_affine`` names a section of the sheet without an IHC image; with
        ``thorough``, an ``ihc_gene`` that the section's count matrix does not hold.
    """
    rows = sheet[sheet["ihc_image"].astype(str) != ""]
    known = dict(cfg.get("known_affine") or {})
    # a section of the sheet without an IHC image is a mistake; one absent from the sheet is a
    # config shared by several sheets (e.g. a reduced one): noted and ignored
    stray = sorted(set(known) & set(sheet.index) - set(rows.index))
    if stray:
        raise ConfigError(
            f"ihc.known_affine names section(s) {', '.join(stray)} without an ihc_image",
            fix="key ihc.known_affine by the sample ids whose ihc_image column is filled",
        )
    plan: dict[str, dict[str, str]] = {}
    notes: list[str] = [
        f"ihc.known_affine: section {s} is not in the sample sheet (ignored)"
        for s in sorted(set(known) - set(sheet.index))
    ]
    for sample, row in rows.iterrows():
        gene = str(row["ihc_gene"])
        if thorough:
            _check_measured(row, str(sample), gene, gene_map)
        args = (experiments, sheet, str(sample), gene, held_out, gene_map, thorough)
        name = str(cfg.get("experiment") or "")
        if name:
            why = unfit_reason(name, *args)
            if why:
                raise ConfigError(
                    f"ihc.experiment '{name}' {why}, so the IHC of section '{sample}' ({gene}) "
                    "cannot be compared with its predictions",
                    sample=str(sample),
                    fix="name an experiment that holds this section out and predicts the gene, "
                    "or leave ihc.experiment empty to pick the first that does",
                )
        else:
            fit = [n for n in experiments if unfit_reason(n, *args) is None]
            if not fit:
                notes.append(
                    f"sample '{sample}': no experiment holds this section out and predicts "
                    f"{gene}, so its IHC image is not compared with predictions (add one, e.g. "
                    "section imputation with a panel holding the gene)"
                )
                continue
            name = fit[0]
        plan[str(sample)] = {
            "experiment": name,
            "gene": gene,
            "image": str(row["ihc_image"]),
            "known_affine": str(known.get(sample, "")),
        }
    return plan, notes
