"""Self-contained result AnnData: what every per-section result file carries to open elsewhere.

The result files are ``results/experiments/{experiment}/predictions/{sample}.h5ad`` (regression
and cluster experiments), ``results/superres/{experiment}/{sample}.h5ad`` and the baselines'
``results/experiments/{experiment}/baselines/{method}/predictions.h5ad`` (every held-out section
of the experiment in one file). Each is drawn over its H&E by

    ``scanpy.pl.spatial(a, color=gene, layer="predicted", library_id=sample)`` and
    ``squidpy.pl.spatial_scatter(a, color=gene, layer="predicted", library_id=sample)``

without any other file, because it carries (:func:`check_result` lists what is missing):

* ``uns["spatial"][sample]``: ``images`` (``hires``, ``lowres``), ``scalefactors`` (with
  ``spot_diameter_fullres``) and ``metadata``, copied from the section file as stored there
  (:func:`stpredict.io.write_h5ad` ``spatial_from``: the compressed chunks, not decoded),
  exactly as scanpy reads Space Ranger; a baseline's file holds every section it predicts
  (subset it to one ``sample_id`` before drawing). ``obsm["spatial"]`` holds full-resolution
  pixel ``[x, y]``.
* ``var["gene_ids"]`` (the section's ids: Ensembl where the counts or the gene map give them,
  ``""`` for a gene the section lacks) and, for regression, the held-out scores of the section
  (:func:`held_out_scores`): ``held_out_r`` (Pearson r of ``X`` and ``layers["predicted"]``
  over the scored spots, the metrics' :func:`~stpredict.evaluate.metrics.pearson_columns`),
  ``held_out_p`` (two-sided p of that r, t test with n - 2 degrees of freedom),
  ``held_out_q_bh`` (Benjamini-Hochberg over the section's genes) and ``held_out_n_spots``.
  The spot-level p ignores spatial autocorrelation (neighbouring spots are not independent),
  so it is optimistic; the experiment's sign tests over held-out units
  (``metrics/summary.tsv``: ``median_pearson``, ``p_holm``, ``q_bh``) are the headline.
* Cluster experiments: ``obs["cluster"]``, ``obs["cluster_true"]`` and ``obs["cluster_pred"]``
  are :class:`pandas.Categorical` with one category list (:func:`cluster_categories`: the
  cluster map's labels, else the section's labels and the folds' classes, in natural order;
  ``""`` is missing, not a category) and one colour list (``uns["<column>_colors"]``), so the
  measured and predicted maps share their colours and every file of an experiment the same
  categories; ``var["cluster"]`` is the class of each column.
* ``uns["stpredict"]["units"]`` (:data:`stpredict.vocab.UNITS_KEY`, the one units key of every
  written AnnData) and ``uns["stpredict"]["smoothness_note"]``
  (:data:`stpredict.vocab.SMOOTHNESS_NOTE`): predicted maps are smoother than measured ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from stpredict.vocab import SMOOTHNESS_NOTE, SMOOTHNESS_NOTE_KEY, UNITS_KEY

__all__ = [
    "CLUSTER_COLUMNS",
    "SCORE_COLUMNS",
    "attach_gene_ids",
    "held_out_scores",
    "cluster_categories",
    "categorical_clusters",
    "finish_result",
    "check_result",
]

#: ``obs`` columns of cluster labels (measured: ``cluster``, ``cluster_true``; ``cluster_pred``)
CLUSTER_COLUMNS: tuple[str, ...] = ("cluster", "cluster_true", "cluster_pred")

#: ``var`` columns :func:`held_out_scores` writes
SCORE_COLUMNS: tuple[str, ...] = ("held_out_r", "held_out_p", "held_out_q_bh", "held_out_n_spots")


def _natural_key(s: str) -> tuple[Any, ...]:
    return tuple((0, int(t)) if t.isdigit() else (1, t.lower()) for t in re.split(r"(\d+)", s))


def attach_gene_ids(adata: Any, section_vars: Sequence[pd.DataFrame]) -> None:
    """Set ``var["gene_ids"]`` from the sections' ``var`` (the first section holding a gene).

    Parameters
    ----------
    adata
        A result AnnData whose ``var_names`` are gene names (as in the sections).
    section_vars
        ``var`` of the sections the file predicts (``gene_ids`` column where the reader wrote it).
    """
    ids: dict[str, str] = {}
    for var in section_vars:
        col = var["gene_ids"] if "gene_ids" in var else pd.Series(var.index, index=var.index)
        for name, gid in zip(var.index.astype(str), col.astype(str), strict=True):
            ids.setdefault(name, gid)
    adata.var["gene_ids"] = [ids.get(str(g), "") for g in adata.var_names]


def _dense(x: Any) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def held_out_scores(adata: Any) -> pd.DataFrame:
    """Per gene: Pearson r, its p, BH q and spots of the measured vs predicted scored spots.

    Parameters
    ----------
    adata
        A regression result file: measured targets in ``X``, ``layers["predicted"]``; the
        spots marked ``obs["qc_failed"]`` are left out (as every score leaves them out).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``var_names``, columns :data:`SCORE_COLUMNS`. r is
        :func:`stpredict.evaluate.metrics.pearson_columns` (finite pairs; NaN below 3 pairs or
        for a constant column); p is two-sided from ``t = r sqrt((n - 2) / (1 - r²))`` with
        n - 2 degrees of freedom (:func:`scipy.stats.pearsonr`'s), NaN where r is; q is
        Benjamini-Hochberg over the genes with a p. Spots are treated as independent, which
        neighbouring spots are not: p and q are optimistic.
    """
    from scipy import stats  # here, not at import: the workflow's parse imports this module
    from statsmodels.stats.multitest import multipletests

    from stpredict.evaluate.metrics import pearson_columns, scored_spots

    a = scored_spots(adata)
    m, p = _dense(a.X), _dense(a.layers["predicted"])
    r = pearson_columns(m, p)
    n = (np.isfinite(m) & np.isfinite(p)).sum(axis=0).astype(np.int64)
    pval = np.full(r.shape, np.nan)
    ok = np.isfinite(r)
    rr = np.clip(r[ok], -1.0, 1.0)
    with np.errstate(divide="ignore"):
        t = np.abs(rr) * np.sqrt((n[ok] - 2) / np.maximum(1.0 - rr**2, 0.0))
    pval[ok] = 2.0 * stats.t.sf(t, n[ok] - 2)
    q = np.full(r.shape, np.nan)
    if ok.any():
        q[ok] = multipletests(pval[ok], method="fdr_bh")[1]
    return pd.DataFrame(
        {
            "held_out_r": r,
            "held_out_p": pval,
            "held_out_q_bh": q,
            "held_out_n_spots": n,
        },
        index=pd.Index(adata.var_names.astype(str)),
    )


def cluster_categories(*label_sets: Iterable[Any]) -> list[str]:
    """Return the category list of a cluster experiment's files: every label given, natural order.

    ``""`` (unlabelled) is not a category. Pass the cluster map's labels when there is one
    (they cover every section of the experiment, so every file gets the same list), else the
    section's measured labels and the folds' classes.
    """
    labels = {str(v) for s in label_sets for v in s if str(v) not in ("", "nan")}
    return sorted(labels, key=_natural_key)


def categorical_clusters(
    adata: Any, categories: Sequence[str], columns: Sequence[str] = CLUSTER_COLUMNS
) -> None:
    """Make the cluster columns Categorical on ``categories`` with one shared colour list.

    A label outside ``categories`` is refused (it would be silently lost); ``""`` becomes
    missing. ``uns["<column>_colors"]`` gets the same colours for every column (the figures'
    palette, :func:`stpredict.plot.style._category_colours`), which scanpy and squidpy use.
    """
    from matplotlib.colors import to_hex

    from stpredict.plot.style import _category_colours

    cats = [str(c) for c in categories]
    colours = [to_hex(c) for c in _category_colours(cats).values()]
    for col in columns:
        if col not in adata.obs:
            continue
        values = adata.obs[col].astype(str).replace({"": np.nan, "nan": np.nan})
        extra = sorted(set(values.dropna()) - set(cats))
        if extra:  # internal: the caller builds categories from every label it writes
            raise ValueError(f"labels {extra} of obs[{col!r}] are not among the categories")
        adata.obs[col] = pd.Categorical(values, categories=cats)
        adata.uns[f"{col}_colors"] = np.asarray(colours, dtype=object)


def finish_result(adata: Any, units: str) -> None:
    """Write the one units key and the smoothness note into ``uns["stpredict"]``."""
    meta = dict(adata.uns.get("stpredict", {}))
    meta.setdefault("target_transform", {})
    if isinstance(meta["target_transform"], Mapping):
        meta["target_transform"] = {
            k: v for k, v in meta["target_transform"].items() if k != UNITS_KEY
        }
    if not meta["target_transform"]:
        meta.pop("target_transform")
    meta[UNITS_KEY] = str(units)
    meta[SMOOTHNESS_NOTE_KEY] = SMOOTHNESS_NOTE
    adata.uns["stpredict"] = meta


def check_result(adata: Any, samples: Sequence[str] | None = None) -> list[str]:
    """List what a result file lacks to be drawn by scanpy / squidpy and read on its own.

    Parameters
    ----------
    adata
        A result AnnData (module notes).
    samples
        Its library ids; default: the values of ``obs["sample_id"]``.

    Returns
    -------
    list of str
        One line per problem; empty when the file is self-contained.
    """
    problems = []
    samples = (
        [str(s) for s in pd.unique(adata.obs["sample_id"].astype(str))]
        if samples is None
        else list(samples)
    )
    spatial = adata.uns.get("spatial", {})
    for s in samples:
        entry = spatial.get(s) if isinstance(spatial, Mapping) else None
        if not isinstance(entry, Mapping):
            problems.append(f"uns['spatial'] has no entry {s!r}")
            continue
        images, sf = entry.get("images", {}), entry.get("scalefactors", {})
        if not images:
            problems.append(f"uns['spatial'][{s!r}] has no image")
        for key in images:
            if f"tissue_{key}_scalef" not in sf:
                problems.append(f"uns['spatial'][{s!r}] lacks tissue_{key}_scalef")
        if "spot_diameter_fullres" not in sf:
            problems.append(f"uns['spatial'][{s!r}] lacks spot_diameter_fullres")
        if "metadata" not in entry:
            problems.append(f"uns['spatial'][{s!r}] lacks metadata")
    if "spatial" not in adata.obsm or np.asarray(adata.obsm["spatial"]).shape != (adata.n_obs, 2):
        problems.append("obsm['spatial'] is not (n_obs, 2)")
    meta = adata.uns.get("stpredict", {})
    for key in (UNITS_KEY, SMOOTHNESS_NOTE_KEY):
        if not meta.get(key):
            problems.append(f"uns['stpredict'] lacks {key!r}")
    if "units" in meta.get("target_transform", {}):
        problems.append("units under uns['stpredict']['target_transform'] (a second key)")
    if meta.get("task") == "clusters":
        problems += _check_clusters(adata)
    elif "gene_ids" not in adata.var:
        problems.append("var lacks gene_ids")
    return problems


def _check_clusters(adata: Any) -> list[str]:
    problems, cats = [], None
    for col in CLUSTER_COLUMNS:
        if col not in adata.obs:
            continue
        c = adata.obs[col]
        if not isinstance(c.dtype, pd.CategoricalDtype):
            problems.append(f"obs[{col!r}] is not Categorical")
            continue
        if cats is not None and list(c.cat.categories) != cats:
            problems.append(f"obs[{col!r}] has other categories than the other cluster columns")
        cats = list(c.cat.categories)
    return problems
