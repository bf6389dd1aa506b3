"""The spot-QC figure of a section (spots kept and removed by reason over the H&E), saved atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from stpredict.ingest.section import sample_id_of
from stpredict.io import read_json, read_table
from stpredict.patches.qc import spot_totals
from stpredict.plot.style import save_figure, section_background

__all__ = [
    "plot_section_qc",
]

log = logging.getLogger(__name__)

# reason -> (label, marker, colour)
_REASONS = {
    "pass_umi": ("too few UMI", "x", "#d62728"),
    "pass_genes": ("too few genes", "+", "#ff7f0e"),
    "pass_white": ("white patch", "s", "#1f77b4"),
}


def _spatial_axes(ax: Any, img: np.ndarray | None, xy: np.ndarray) -> None:
    if img is not None:
        ax.imshow(img)
    else:
        ax.set_facecolor("#f4f4f4")
        ax.invert_yaxis()
    ax.set_aspect("equal")
    if len(xy):  # zoom on the spots: the capture area is larger than the tissue
        pad = 0.05 * max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1.0)
        ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
        ax.set_ylim(xy[:, 1].max() + pad, xy[:, 1].min() - pad)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_section_qc(
    adata: Any,
    patches_tsv: str | os.PathLike[str] | None,
    out_png: str | os.PathLike[str],
    out_pdf: str | os.PathLike[str] | None = None,
    max_size: int = 1024,
) -> Any:
    """Draw the QC figure of one section.

    Panels: the H&E with spots coloured by log10 total UMI; the H&E with the spots failing QC
    marked by reason; histograms of UMI and genes per spot with the thresholds; histogram of
    the patches' white-pixel fraction with the whiteness cut-off.

    Parameters
    ----------
    adata
        Section AnnData after :func:`stpredict.patches.qc.apply_qc` (without the QC columns every spot
        is drawn as kept and no thresholds are shown).
    patches_tsv
        The section's patch table (``white_frac``), or ``None``.
    out_png
        PNG to write; ``out_pdf`` optionally a PDF copy.
    max_size
        Longest side of a thumbnail made from the full-resolution image.

    Returns
    -------
    matplotlib.figure.Figure
        The (closed) figure.
    """
    sid = sample_id_of(adata)
    umi, genes = spot_totals(adata)
    log_umi = np.log10(umi + 1)
    xy = (
        np.asarray(adata.obsm["spatial"], dtype=np.float64)
        if "spatial" in adata.obsm
        else (np.zeros((adata.n_obs, 2)))
    )
    img, scale = section_background(adata, max_size)
    pxy = xy * scale
    qc = adata.uns.get("qc", {})
    flags = {
        c: (adata.obs[c].to_numpy(dtype=bool) if c in adata.obs else np.ones(adata.n_obs, bool))
        for c in (*_REASONS, "keep")
    }
    spot_s = float(np.clip(30000.0 / max(adata.n_obs, 1), 4, 60))

    fig = plt.figure(figsize=(16, 8.5), layout="constrained")
    gs = fig.add_gridspec(3, 3, width_ratios=[1.25, 1.25, 1])
    n_kept = int(flags["keep"].sum())
    fig.suptitle(f"{sid}: spot QC ({n_kept:,} of {adata.n_obs:,} spots kept)", fontsize=14)

    ax = fig.add_subplot(gs[:, 0])
    _spatial_axes(ax, img, pxy)
    sc = ax.scatter(
        pxy[:, 0], pxy[:, 1], c=log_umi, s=spot_s, cmap="viridis", alpha=0.85, linewidths=0
    )
    cb = fig.colorbar(sc, ax=ax, shrink=0.6, location="bottom", pad=0.02)
    cb.set_label("UMI per spot (log10)")
    ax.set_title(f"{sid}: total UMI per spot")

    ax = fig.add_subplot(gs[:, 1])
    _spatial_axes(ax, img, pxy)
    keep = flags["keep"]
    ax.scatter(
        pxy[keep, 0],
        pxy[keep, 1],
        s=spot_s,
        facecolors="none",
        edgecolors="#2ca02c",
        linewidths=0.5,
        alpha=0.6,
        label=f"kept ({int(keep.sum()):,})",
    )
    for col, (label, marker, colour) in _REASONS.items():
        bad = ~flags[col]
        if bad.any():
            kw = {"facecolors": "none", "edgecolors": colour} if marker == "s" else {"c": colour}
            ax.scatter(
                pxy[bad, 0],
                pxy[bad, 1],
                s=spot_s * 1.5,
                marker=marker,
                linewidths=1.0,
                label=f"{label} ({int(bad.sum()):,})",
                **kw,
            )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=9, frameon=False)
    ax.set_title(f"{sid}: spots failing QC, by reason")

    def hist(axh: Any, values: np.ndarray, xlabel: str, thr: float | None, thr_label: str) -> None:
        v = values[np.isfinite(values)]
        axh.hist(v, bins=min(50, max(5, len(v) // 10 or 5)), color="#7f7f7f", edgecolor="white")
        if thr is not None:
            axh.axvline(thr, color="#d62728", lw=1.5, ls="--", label=thr_label)
            axh.legend(loc="upper center", fontsize=8)  # clear of the bars on both sides
        axh.set_xlabel(xlabel)
        axh.set_ylabel("spots")

    min_umi = float(qc.get("min_umi", 0) or 0)
    min_genes = float(qc.get("min_genes", 0) or 0)
    hist(
        fig.add_subplot(gs[0, 2]),
        log_umi,
        "UMI per spot (log10)",
        np.log10(min_umi) if min_umi > 0 else None,
        f"min {min_umi:,.0f} UMI",
    )
    hist(
        fig.add_subplot(gs[1, 2]),
        genes.astype(float),
        "genes detected per spot (count > 0)",
        min_genes if min_genes > 0 else None,
        f"min {min_genes:,.0f} genes",
    )
    axw = fig.add_subplot(gs[2, 2])
    if patches_tsv is not None and Path(patches_tsv).is_file():
        table = read_table(patches_tsv)
        side = Path(patches_tsv).with_suffix(".json")
        cut = 0.5
        pct = 80.0
        if side.is_file():
            w = read_json(side).get("whiteness", {})
            cut, pct = float(w.get("max_white_frac", cut)), float(w.get("percentile", pct))
        hist(
            axw,
            table["white_frac"].to_numpy(dtype=float),
            f"white pixels per patch (fraction; > {pct:g}th-percentile RGB)",
            cut,
            f"cut-off {cut:g} ({int(table['white'].astype(bool).sum()):,} white)",
        )
    else:
        axw.text(0.5, 0.5, "no patch table", ha="center", va="center", transform=axw.transAxes)
        axw.set_axis_off()

    save_figure(fig, out_png)
    if out_pdf is not None:
        save_figure(fig, out_pdf)
    plt.close(fig)
    log.info("%s: wrote QC figure %s", sid, out_png)
    return fig
