"""Predicted-expression heatmaps of whole slides, over their thumbnail.

:func:`plot_slide_heatmap` draws the slide's thumbnail (``uns["spatial"]`` of the slide file,
:mod:`stpredict.wsi.predict`) and, per gene, the kept tiles as a grid of squares coloured by
the predicted value (one colour scale per gene: the 1st-99th percentile of its predictions)
over the faded thumbnail; dropped (background) tiles are left transparent. Given spots (no
tile grid) are drawn as points instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize

from stpredict.errors import ConfigError
from stpredict.plot.style import PathLike, _cmap, _empty_note, _save_both, _styled

__all__ = ["plot_slide_heatmap", "plot_pseudobulk"]


def _thumbnail(adata: Any) -> tuple[np.ndarray, float, str]:
    slide = str(adata.uns["stpredict"]["slide_id"])
    entry = adata.uns["spatial"][slide]
    key = "hires" if "hires" in entry["images"] else "lowres"  # older files: lowres only
    img = np.asarray(entry["images"][key])
    return img, float(entry["scalefactors"][f"tissue_{key}_scalef"]), slide


def _tile_grid(adata: Any, values: np.ndarray) -> tuple[np.ndarray, float]:
    """Values on the tile grid (NaN where no kept tile) and the tile side in full-res px."""
    tiles = adata.uns["stpredict"]["tiles"]
    level = tiles["level"]
    pitch = int(tiles["tile_px_level"])
    n_rows, n_cols = int(level["shape"][0]) // pitch, int(level["shape"][1]) // pitch
    grid = np.full((n_rows, n_cols), np.nan)
    r = adata.obs["tile_row"].to_numpy(dtype=int)
    c = adata.obs["tile_col"].to_numpy(dtype=int)
    grid[r, c] = values
    return grid, float(tiles["tile_px_fullres"])


def _norm(values: np.ndarray) -> Normalize:
    v = values[np.isfinite(values)]
    if not len(v):
        return Normalize(0.0, 1.0)
    lo, hi = np.percentile(v, [1, 99])
    if not hi > lo:
        lo, hi = float(v.min()) - 0.5, float(v.max()) + 0.5
    return Normalize(float(lo), float(hi))


def _draw_gene(ax: Any, adata: Any, values: np.ndarray, scale: float, cm: Any, norm: Any) -> Any:
    if "tile_row" in adata.obs:
        grid, side = _tile_grid(adata, values)
        extent = (0.0, grid.shape[1] * side * scale, grid.shape[0] * side * scale, 0.0)
        return ax.imshow(np.ma.masked_invalid(grid), extent=extent, cmap=cm, norm=norm, alpha=0.9)
    xy = np.asarray(adata.obsm["spatial"], dtype=float) * scale
    coll = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=6, cmap=cm, norm=norm, linewidths=0)
    coll.set_rasterized(True)
    return coll


@_styled
def plot_slide_heatmap(
    adata: Any,
    genes: Sequence[str],
    units_label: str,
    out_png: PathLike,
    title: str | None = None,
    cmap: str = "viridis",
) -> dict[str, dict[str, float]]:
    """Heatmaps of predicted expression over a slide's thumbnail (PNG + PDF).

    Parameters
    ----------
    adata
        A slide prediction file (:func:`stpredict.wsi.predict.predict_image`).
    genes
        Genes to draw (one panel each, after the H&E panel).
    units_label
        Colour-bar label (quantity and normalisation).
    out_png
        PNG to write (and the same path with ``.pdf``); the PNG's text chunk ``colour_scales``
        holds the scales as JSON.
    title
        Figure title (default: the slide id and experiment).
    cmap
        Colour map.

    Returns
    -------
    dict
        Gene -> ``{"vmin", "vmax"}``.
    """
    asked = [str(g) for g in genes]
    genes = [g for g in asked if g in adata.var_names]
    if not genes:
        raise ConfigError(
            f"none of the genes {asked} to draw is predicted on this slide",
            sample=str(adata.uns["stpredict"].get("slide_id")),
            fix="choose genes of the experiment (wsi.genes), or leave wsi.genes empty",
        )
    img, scale, slide = _thumbnail(adata)
    aspect = img.shape[0] / max(img.shape[1], 1)
    panel = 3.4
    n = len(genes) + 1
    fig, axes = plt.subplots(
        1, n, figsize=(n * (panel + 0.6), panel * aspect + 0.8), layout="constrained", squeeze=False
    )
    axes = axes[0]
    axes[0].imshow(img)
    axes[0].set_title(f"H&E ({adata.n_obs:,} tissue tiles)")
    cm = _cmap(cmap, bad="none")
    scales: dict[str, dict[str, float]] = {}
    pred = np.asarray(adata.layers["predicted"], dtype=float)
    for ax, gene in zip(axes[1:], genes, strict=True):
        values = pred[:, list(adata.var_names).index(gene)]
        norm = _norm(values)
        ax.imshow(img, alpha=0.35)
        mappable = _draw_gene(ax, adata, values, scale, cm, norm)
        ax.set_xlim(0, img.shape[1])
        ax.set_ylim(img.shape[0], 0)
        ax.set_title(f"{gene}: predicted")
        cb = fig.colorbar(mappable, ax=ax, shrink=0.8, pad=0.02, extend="both")
        cb.set_label(f"{gene}\n{units_label}", fontsize=8)
        scales[gene] = {"vmin": float(norm.vmin), "vmax": float(norm.vmax)}
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    meta = adata.uns["stpredict"]
    fig.suptitle(
        title
        or f"{slide}: expression predicted by {meta.get('experiment')} "
        f"(mean of {meta.get('averaged_over_folds')} fold models)"
    )
    _save_both(fig, out_png, png_text={"colour_scales": json.dumps(scales)})
    return scales


# ------------------------------------------------------------------ pseudo-bulk analyses
def _scatter_gene(ax: Any, gene: str, means: Any, bulk: Any, row: Any, units: str) -> None:
    slides = [s for s in means.index if s in bulk.index]
    x = bulk.loc[slides, gene].to_numpy(dtype=float)
    y = means.loc[slides, gene].to_numpy(dtype=float)
    ax.scatter(x, y, s=14, color="#3b6ea5", edgecolors="white", linewidths=0.4)
    if len(x) > 1 and np.ptp(x) > 0:
        k, b = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 20)
        ax.plot(xs, k * xs + b, color="#c0392b", lw=1)
    ax.set_title(f"{gene}: r = {row['r']:.2f}, q = {row['q']:.2g}")
    ax.set_xlabel("bulk, log1p(CPM)")
    ax.set_ylabel(f"pseudo-bulk\n{units}", fontsize=8)


def _r_histogram(ax: Any, per_gene: Any) -> None:
    bins = np.linspace(-1, 1, 41)
    groups = [g for g in sorted(per_gene["group"].unique()) if g] or [""]
    data = [per_gene.loc[per_gene["group"] == g, "r"].dropna().to_numpy() for g in groups]
    if groups == [""]:
        data = [per_gene["r"].dropna().to_numpy()]
    ax.hist(data, bins=bins, stacked=True, label=[g or "all genes" for g in groups])
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_xlabel("Pearson r across slides (pseudo-bulk vs bulk)")
    ax.set_ylabel("genes")
    ax.set_title(f"per-gene r (median {per_gene['r'].median():.2f}, {len(per_gene)} genes)")
    ax.legend(loc="upper left", fontsize=7, frameon=False)


def _roc(ax: Any, scores: Any, results: Any) -> None:
    from sklearn.metrics import roc_curve

    for i, (name, d) in enumerate(scores.groupby("features", sort=False)):
        pos = d["positive"].iloc[0]
        d = d[d["positive"] == pos]
        y = (d["subtype"] == pos).to_numpy()
        if y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, d["score"].to_numpy())
        res = results[(results["features"] == name) & (results["positive"] == pos)].iloc[0]
        label = f"{name}: {res['auroc']:.2f} [{res['ci_low']:.2f}, {res['ci_high']:.2f}]"
        ax.plot(fpr, tpr, lw=1.5, label=label, color=f"C{i}")
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    n = int(results["n_test"].iloc[0]) if len(results) else 0
    ax.set_title(
        f"subtype ({results['positive'].iloc[0] if len(results) else ''}) on {n} test slides"
    )
    ax.legend(fontsize=7, frameon=False, loc="lower right", title="AUROC [95 % CI]")


def _coloc(ax: Any, coloc: Any) -> None:
    if coloc is None or coloc.empty:
        _empty_note(ax, "no co-localisation (no two marker sets predicted)")
        return
    pair = coloc[["set_a", "set_b"]].iloc[0].tolist()
    d = coloc[(coloc["set_a"] == pair[0]) & (coloc["set_b"] == pair[1])].sort_values("r")
    y = np.arange(len(d))
    ax.errorbar(d["null_mean"], y, xerr=2 * d["null_sd"], fmt="none", ecolor="0.6", lw=1)
    sig = d["q"].to_numpy() < 0.05
    ax.scatter(d["r"][sig], y[sig], s=10, color="#c0392b", label="q < 0.05", zorder=3)
    ax.scatter(d["r"][~sig], y[~sig], s=10, color="#3b6ea5", label="q >= 0.05", zorder=3)
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_yticks([])
    ax.set_xlabel(f"neighbourhood r, {pair[0]} vs {pair[1]} (grey: null ± 2 sd)")
    ax.set_title(f"co-localisation in {len(d)} slides")
    ax.legend(loc="lower right", fontsize=7, frameon=False)


@_styled
def plot_pseudobulk(
    per_gene: Any,
    means: Any,
    bulk: Any,
    scores: Any,
    results: Any,
    coloc: Any,
    units_label: str,
    out_png: PathLike,
    n_genes: int = 3,
) -> list[str]:
    """Pseudo-bulk vs bulk for the best genes, the per-gene r, subtype ROC curves, co-localisation.

    Parameters
    ----------
    per_gene
        ``pseudobulk_vs_bulk.tsv`` (:func:`stpredict.wsi.bulk.pseudobulk_vs_bulk`).
    means, bulk
        Slides x genes pseudo-bulk and log-scaled bulk.
    scores, results
        ``subtype_scores.tsv`` and ``subtype.tsv`` (:mod:`stpredict.wsi.subtype`); empty
        tables leave the ROC panel with a note.
    coloc
        ``colocalisation.tsv`` (:mod:`stpredict.wsi.coloc`) or None.
    units_label
        Label of the predicted units.
    out_png
        PNG to write (and the same path with ``.pdf``).
    n_genes
        Genes of the top row: the highest r.

    Returns
    -------
    list of str
        The genes of the scatter panels.
    """
    best = per_gene.dropna(subset=["r"]).sort_values("r", ascending=False).head(n_genes)
    fig, axes = plt.subplots(2, 3, figsize=(11.5, 7.2), layout="constrained")
    for ax, (_, row) in zip(axes[0], best.iterrows(), strict=False):
        _scatter_gene(ax, row["gene"], means, bulk, row, units_label)
    for ax in axes[0][len(best) :]:
        _empty_note(ax, "no gene")
    _r_histogram(axes[1][0], per_gene)
    if scores is None or scores.empty:
        _empty_note(axes[1][1], "no subtype labels")
    else:
        _roc(axes[1][1], scores, results)
    _coloc(axes[1][2], coloc)
    fig.suptitle(f"Whole slides: pseudo-bulk vs bulk ({int(per_gene['n_slides'].max())} slides)")
    _save_both(fig, out_png)
    return best["gene"].tolist()
