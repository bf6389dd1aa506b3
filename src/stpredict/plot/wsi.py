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
from stpredict.plot.style import PathLike, _cmap, _save_both, _styled

__all__ = ["plot_slide_heatmap"]


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
