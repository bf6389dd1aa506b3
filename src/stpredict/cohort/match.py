"""What a cohort's section must share with the model: its genes and a fine enough µm/px.

Genes
-----
The model predicts the genes of its card (``model.json``: the genes every fold model predicts,
fitted on the training side of each fold). A section's genes are matched to them by name
(``var_names``), then, for the rest, by gene id: the model's gene (a model trained on ids)
or its id in the card (``gene_ids``: the training sections' ids, so symbols that differ
between annotation versions still match on the Ensembl id) against the section's
``var["gene_ids"]`` (Ensembl ids with or without their version suffix, ``ENSG….14``).
Matched genes are scored; a
model gene the section does not measure is predicted but not scored (the measured value would
be a zero that nobody measured). A section measuring fewer than ``min_gene_share`` of the
model's genes (``cohorts.{name}.min_gene_share``, default one half: most of the model's
output would go unscored; none at all typically means ids against symbols: set
``reading.gene_map``) is refused with one line.

µm/px
-----
Patches are cut at the model's field of view (``fov_um`` of the card) from the section's own
image at its own µm/px and resized to the model's ``size_px``. An image coarser than the
model's stored pixels (``patch_mpp = fov_um / size_px``; beyond ``reading.mpp_tolerance``) would
be up-sampled, blurrier than anything the model saw: refused with one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from stpredict.errors import GeometryError, InputError

__all__ = ["match_genes", "check_gene_match", "check_section_mpp", "matched_section"]

_VERSIONED = re.compile(r"^(ENS[A-Z]*G\d{11})\.\d+$")


def match_genes(
    model_genes: Sequence[str],
    var: pd.DataFrame,
    model_ids: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Match the model's genes to a section's ``var`` (module notes).

    Parameters
    ----------
    model_genes
        The card's genes.
    var
        The section's ``var`` (index: names; optional column ``gene_ids``).
    model_ids
        The card's ``gene_ids`` (model gene -> its id in the training sections; ``""`` unknown).

    Returns
    -------
    dict
        ``matched`` (model gene -> the section's var name), ``by_name``, ``by_id`` (counts),
        ``missing`` (model genes the section lacks), ``share`` (matched / model genes).
    """
    names = [str(v) for v in var.index]
    by_name = set(names)
    ids: dict[str, str] = {}
    if "gene_ids" in var:
        for name, gid in zip(names, var["gene_ids"].astype(str), strict=True):
            if gid and gid != "nan":
                ids.setdefault(gid, name)
    # versioned Ensembl ids (GENCODE: ENSG00000141736.14) match the model's unversioned ones
    for gid, name in list(ids.items()):
        ids.setdefault(_unversioned(gid), name)
    # a gene's symbol in the section may be the model's id and the other way round
    matched: dict[str, str] = {}
    n_name = n_id = 0
    for g in map(str, model_genes):
        if g in by_name:
            matched[g] = g
            n_name += 1
        elif (key := _id_key(g, (model_ids or {}).get(g), ids)) is not None:
            matched[g] = ids[key]
            n_id += 1
    missing = [str(g) for g in model_genes if str(g) not in matched]
    n = len(model_genes)
    return {
        "matched": matched,
        "by_name": n_name,
        "by_id": n_id,
        "missing": missing,
        "share": (len(matched) / n) if n else 0.0,
        "n_model_genes": n,
    }


def _unversioned(gid: str) -> str:
    """Return an Ensembl id without its version suffix (``ENSG00000141736.14`` -> ``ENSG00000141736``)."""
    return _VERSIONED.sub(r"\1", gid)


def _id_key(gene: str, model_id: str | None, ids: Mapping[str, str]) -> str | None:
    """Return the key of ``ids`` the model gene (or its card id) matches, versioned or not."""
    for key in (gene, model_id, _unversioned(gene), _unversioned(str(model_id or ""))):
        if key and key in ids:
            return key
    return None


def check_gene_match(
    match: Mapping[str, Any],
    min_share: float,
    file: str | os.PathLike[str] | None = None,
    sample: str | None = None,
    section_genes: Sequence[str] = (),
    cohort: str = "{name}",
) -> None:
    """Refuse a section whose genes cannot match the model's (module notes).

    Raises
    ------
    InputError
        Fewer than ``min_share`` of the model's genes matched.
    """
    share = float(match["share"])
    if share >= float(min_share) and match["matched"]:
        return
    n, k = int(match["n_model_genes"]), len(match["matched"])
    sample_genes = ", ".join(list(map(str, section_genes))[:3])
    raise InputError(
        f"the section measures {k} of the model's {n} genes ({100 * share:.0f} %, fewer than "
        f"min_gene_share {100 * float(min_share):.0f} %; model genes e.g. "
        f"{', '.join(match['missing'][:3])}"
        + (f"; the section's e.g. {sample_genes}" if sample_genes else "")
        + ")",
        file=file,
        sample=sample,
        fix="read the section with the model's gene naming (reading.gene_map maps Ensembl ids "
        f"to symbols), use a model trained on these genes, or lower cohorts.{cohort}.min_gene_share",
    )


def check_section_mpp(
    mpp: float,
    patch_mpp: float,
    tolerance: float,
    file: str | os.PathLike[str] | None = None,
    sample: str | None = None,
) -> None:
    """Refuse an image coarser than the model's stored pixels (module notes).

    Raises
    ------
    GeometryError
        ``mpp > patch_mpp * (1 + tolerance)``.
    """
    if not float(mpp) > 0:
        raise GeometryError(
            f"the section's µm/px is {mpp!r}",
            file=file,
            sample=sample,
            fix="give the image's µm/px in the sheet's mpp column",
        )
    if float(mpp) > float(patch_mpp) * (1.0 + float(tolerance)):
        raise GeometryError(
            f"the image is at {float(mpp):.4g} µm/px, coarser than the {float(patch_mpp):.4g} "
            "µm/px of the model's patches (field of view / patch size): its patches would be "
            "up-sampled, blurrier than anything the model was trained on",
            file=file,
            sample=sample,
            fix="use a scan at a higher magnification, check the sheet's mpp, or a model "
            "trained with fewer µm per stored pixel",
        )


def matched_section(adata: Any, match: Mapping[str, Any]) -> Any:
    """Return the section with its matched genes renamed to the model's names (a copy)."""
    rename = {v: k for k, v in match["matched"].items() if k != v}
    out = adata.copy()
    if rename:
        out.var_names = pd.Index([rename.get(str(v), str(v)) for v in out.var_names])
        out.var_names_make_unique()
    return out
