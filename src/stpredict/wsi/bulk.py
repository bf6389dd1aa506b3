"""Pseudo-bulk validation (ST-Net's TCGA analysis): mean prediction per slide vs bulk RNA.

Pseudo-bulk (:func:`slide_summaries`)
-------------------------------------
The pseudo-bulk of a slide is the mean over its kept tiles of ``layers["predicted"]`` of
``results/wsi/{slide}.h5ad``, in the experiment's **target units** (``uns["stpredict"]
["target_transform"]``: e.g. ``log_proportion`` for ST-Net, ``log1p`` of counts per 10,000).
The per-slide mean of ``obsm["embedding"]`` (the image features of the subtype classifier,
:mod:`stpredict.wsi.subtype`) is computed in the same read.

Bulk (:func:`read_bulk`, :func:`normalise_bulk`)
------------------------------------------------
A TSV of bulk expression, genes x slides (the demo's ``bulk_counts.tsv``: first column the
gene, one column per slide id) or slides x genes: the orientation is the one whose labels are
the slide table's ``slide_id``; a table whose slide ids match none is refused. ``wsi.bulk_units:
counts`` (raw counts, TCGA's HTSeq counts) is compared as ``log1p(CPM)`` -- counts per million
of the slide's total over every gene of the table --, ``log`` takes the values as they are
(already normalised and log-scaled). Pearson's r is invariant to the affine part of the
difference in units, not to the log, which both sides share.

Table (:func:`pseudobulk_vs_bulk`, ``results/wsi/pseudobulk_vs_bulk.tsv``)
---------------------------------------------------------------------------
One row per gene that both the predictions and the bulk table hold: ``gene, n_slides, r, p``
(two-sided, :func:`scipy.stats.pearsonr` across slides), ``q`` (Benjamini-Hochberg over the
genes with an r), ``significant`` (``positive`` / ``negative`` when ``q < wsi.fdr``, else
``none``), ``mean_predicted, mean_bulk`` (the units above) and ``group`` (the gene's role in
``evaluation.gene_groups``, ``""`` without one). Slides without bulk are skipped (a log line).

Summary (:func:`summarise`, ``results/wsi/pseudobulk_summary.tsv``)
-------------------------------------------------------------------
One row for ``all`` genes and one per group: ``n_genes, n_slides, n_positive, n_negative,
median_r, fdr``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stpredict.errors import ConfigError, InputError

__all__ = [
    "BULK_UNITS",
    "slide_summaries",
    "read_bulk",
    "normalise_bulk",
    "pseudobulk_vs_bulk",
    "summarise",
    "bh",
    "input_path",
]

log = logging.getLogger(__name__)

#: how a bulk table's values are brought to a log scale before the correlation
BULK_UNITS = {"counts": "log1p(counts per million)", "log": "as given (already log-scaled)"}


def input_path(value: Any) -> str | None:
    """Return the one path of a rule's named input (a str or a list of at most one), or None."""
    if value is None or isinstance(value, (str, os.PathLike)):
        return None if value is None else str(value)
    return str(value[0]) if len(value) else None


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of ``p`` (NaN stays NaN and is not counted)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return q


def slide_summaries(
    paths: Mapping[str, str | os.PathLike[str]],
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, Any]]:
    """Per-slide means of the predictions and of the embeddings of slide prediction files.

    Parameters
    ----------
    paths
        ``{slide_id: results/wsi/{slide}.h5ad}``.

    Returns
    -------
    means : pandas.DataFrame
        Slides x genes, the mean predicted target over the slide's tiles (genes every file holds).
    embedding : pandas.DataFrame or None
        Slides x features, the mean of ``obsm["embedding"]`` (None when a file has none).
    units : dict
        ``target_transform`` and ``experiment`` of the files (they must agree).
    """
    from stpredict.io import read_h5ad

    means, embs, seen = {}, {}, {}
    for slide, path in paths.items():
        a = read_h5ad(path, sample=slide, images=False)
        if a.n_obs == 0:
            log.info("%s: no tissue tile, left out of the pseudo-bulk", slide)
            continue
        meta = a.uns.get("stpredict", {})
        tt = meta.get("target_transform", "")
        key = (
            str(meta.get("experiment", "")),
            str(tt.get("name", "") if hasattr(tt, "get") else tt),
        )
        seen.setdefault(key, []).append(slide)
        pred = np.asarray(a.layers["predicted"], dtype=np.float64)
        means[slide] = pd.Series(pred.mean(axis=0), index=a.var_names.astype(str))
        if "embedding" in a.obsm:
            emb = np.asarray(a.obsm["embedding"], dtype=np.float64)
            embs[slide] = pd.Series(emb.mean(axis=0), index=[f"f{i}" for i in range(emb.shape[1])])
    if len(seen) > 1:
        raise InputError(
            f"the slide predictions come from different experiments or units {sorted(seen)}",
            file=str(next(iter(paths.values()))),
            fix="predict every slide with the one wsi.experiment (rerun snakemake)",
        )
    table = pd.DataFrame(means).T.dropna(axis=1)
    emb_table = pd.DataFrame(embs).T if embs and len(embs) == len(means) else None
    exp, transform = next(iter(seen)) if seen else ("", "")
    return table, emb_table, {"experiment": exp, "target_transform": transform}


def _orient(df: pd.DataFrame, slide_ids: list[str], path: Path) -> pd.DataFrame:
    ids = set(slide_ids)
    in_cols = len(ids & {str(c) for c in df.columns})
    in_rows = len(ids & {str(i) for i in df.index})
    if in_cols == 0 and in_rows == 0:
        raise InputError(
            f"the bulk table's slide ids match none of the {len(ids)} slides of wsi.slides "
            f"(its columns start {', '.join(map(str, list(df.columns)[:3]))}; its first "
            f"column starts {', '.join(map(str, list(df.index)[:3]))})",
            file=path,
            fix="name the bulk columns (or rows) by the slide table's slide_id",
        )
    out = df if in_rows > in_cols else df.T
    out.index = out.index.astype(str)
    out.columns = out.columns.astype(str)
    return out


def _refuse_duplicates(df: pd.DataFrame, path: Path) -> None:
    """Refuse a repeated gene or slide label (pandas would rename or misalign it silently)."""
    header = pd.read_csv(path, sep="\t", header=None, nrows=1, dtype=str).iloc[0, 1:]
    for where, labels in (("header", pd.Index(header.astype(str))), ("first column", df.index)):
        dup = pd.Index(labels.astype(str))[pd.Index(labels.astype(str)).duplicated()]
        if len(dup):
            raise InputError(
                f"the bulk table's {where} repeats the label {dup[0]!r} "
                f"({len(dup.unique())} label(s) repeated)",
                file=path,
                fix="give each gene and each slide one row or column (sum or drop the "
                "duplicates, e.g. symbols shared by several Ensembl ids)",
            )


def read_bulk(path: str | os.PathLike[str], slide_ids: list[str]) -> pd.DataFrame:
    """Read a bulk table (module notes) and return it slides x genes (float64).

    Raises
    ------
    InputError
        When the file cannot be parsed, repeats a gene or slide label, holds non-numeric
        values, or none of its slide ids is one of ``slide_ids``.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, sep="\t", index_col=0, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(
            f"the bulk table cannot be read ({' '.join(str(exc).split())[:120]})",
            file=path,
            fix="give a tab-separated table: genes x slides (first column the gene) or slides x genes",
        ) from None
    _refuse_duplicates(df, path)
    out = _orient(df, slide_ids, path)
    values = out.apply(pd.to_numeric, errors="coerce")
    bad = values.isna() & out.notna()
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        raise InputError(
            f"the bulk table holds a non-numeric value {out.iat[row, col]!r} "
            f"(slide {out.index[row]}, gene {out.columns[col]})",
            file=path,
            fix="keep only numbers in the bulk table's cells",
        )
    return values.astype(np.float64)


def normalise_bulk(bulk: pd.DataFrame, units: str, path: str = "") -> pd.DataFrame:
    """Bring a slides x genes bulk table to a log scale (``wsi.bulk_units``, :data:`BULK_UNITS`)."""
    if units == "log":
        return bulk
    if units != "counts":
        raise ConfigError(
            f"wsi.bulk_units {units!r} is unknown", fix=f"use one of {', '.join(BULK_UNITS)}"
        )
    if (bulk.to_numpy() < 0).any():
        raise InputError(
            "the bulk table holds negative values but wsi.bulk_units is counts",
            file=path,
            fix="give raw counts, or set wsi.bulk_units: log for a normalised table",
        )
    total = bulk.sum(axis=1).replace(0.0, np.nan)
    return np.log1p(bulk.div(total, axis=0) * 1e6)


def _pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from scipy.stats import pearsonr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.nan, np.nan
    res = pearsonr(x, y)
    return float(res.statistic), float(res.pvalue)


def pseudobulk_vs_bulk(
    means: pd.DataFrame,
    bulk: pd.DataFrame,
    fdr: float = 0.05,
    groups: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Per-gene Pearson r across slides of pseudo-bulk vs bulk (module notes: the table).

    Parameters
    ----------
    means
        Slides x genes pseudo-bulk (:func:`slide_summaries`).
    bulk
        Slides x genes bulk on a log scale (:func:`normalise_bulk`).
    fdr
        BH level of ``significant``.
    groups
        ``{gene: group}`` (``evaluation.gene_groups``), optional.
    """
    slides = [s for s in means.index if s in bulk.index]
    skipped = [s for s in means.index if s not in bulk.index]
    if skipped:
        log.info("%d slide(s) without bulk skipped: %s", len(skipped), ", ".join(skipped))
    genes = [g for g in means.columns if g in set(bulk.columns)]
    log.info(
        "pseudo-bulk vs bulk: %d slides, %d genes both hold (%d predicted, %d in the bulk table)",
        len(slides),
        len(genes),
        means.shape[1],
        bulk.shape[1],
    )
    x = means.loc[slides, genes].to_numpy(dtype=np.float64)
    y = bulk.loc[slides, genes].to_numpy(dtype=np.float64)
    rp = np.array([_pearson(x[:, j], y[:, j]) for j in range(len(genes))]).reshape(-1, 2)
    q = bh(rp[:, 1])
    sig = np.where(q < fdr, np.where(rp[:, 0] > 0, "positive", "negative"), "none")
    return pd.DataFrame(
        {
            "gene": genes,
            "n_slides": len(slides),
            "r": rp[:, 0],
            "p": rp[:, 1],
            "q": q,
            "significant": sig,
            "mean_predicted": x.mean(axis=0) if len(slides) else np.nan,
            "mean_bulk": y.mean(axis=0) if len(slides) else np.nan,
            "group": [str((groups or {}).get(g, "")) for g in genes],
        }
    )


def summarise(per_gene: pd.DataFrame, fdr: float = 0.05) -> pd.DataFrame:
    """Count the significant positive / negative genes and the median r, overall and per group."""
    parts = [("all", per_gene)]
    parts += [(g, d) for g, d in per_gene.groupby("group", sort=True) if g]
    rows = []
    for name, d in parts:
        rows.append(
            {
                "group": name,
                "n_genes": len(d),
                "n_slides": int(d["n_slides"].max()) if len(d) else 0,
                "n_positive": int((d["significant"] == "positive").sum()),
                "n_negative": int((d["significant"] == "negative").sum()),
                "median_r": float(d["r"].median()) if d["r"].notna().any() else np.nan,
                "fdr": fdr,
            }
        )
    return pd.DataFrame(rows)
