"""Spatial figures: measured vs predicted expression maps (ST-Net Fig. 2a), cluster maps, dataset stats.

Every ``plot_*`` function writes ``out_png`` and the same path with the suffix ``.pdf``
(atomically, through :func:`stpredict.plot.style.save_figure`) and closes its figure.

Conventions
-----------
* Spatial maps are drawn in the pixel frame of the section's background image (equal aspect,
  y pointing down like the image); spots are circles sized in data units to 90 % of the spot
  spacing, so they barely touch whatever the figure size.
* Colour scales of expression maps are shared per row (measured and predicted) and span the
  1st-99th percentile of the measured values.
* Missing values are left out of the panels, never drawn as 0, and never raise.
* Spots marked ``obs["qc_failed"]`` (imputed, not measured, not scored) are ringed in
  :data:`QC_FAILED_EDGE` on every map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import EllipseCollection
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from stpredict.evaluate.metrics import pearson_columns
from stpredict.plot.style import (
    PathLike,
    _category_colours,
    _cmap,
    _empty_note,
    _finite,
    _log_axis,
    _natural_key,
    _save_both,
    _styled,
    section_background,
)
from stpredict.vocab import NORMAL, TUMOR, annotations

__all__ = [
    "plot_dataset_stats",
    "plot_expression_maps",
    "plot_cluster_maps",
    "plot_superres_maps",
    "QC_FAILED_EDGE",
]

#: edge colour marking the spots that failed QC (imputed, not scored) on every map
QC_FAILED_EDGE = "#d62728"


def _column(adata: Any, gene: str, layer: str | None = None) -> np.ndarray | None:
    """Dense float column of ``gene`` in ``X`` or ``layers[layer]``; ``None`` when absent."""
    if gene not in adata.var_names:
        return None
    if layer is not None and layer not in adata.layers:
        return None
    j = int(adata.var_names.get_loc(gene))
    mat = adata.X if layer is None else adata.layers[layer]
    col = mat[:, j]
    col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
    return np.asarray(col, dtype=float).ravel()


def _spot_xy(adata: Any) -> np.ndarray:
    if "spatial" in adata.obsm:
        return np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
    if {"array_row", "array_col"} <= set(adata.obs.columns):
        return np.column_stack(
            [adata.obs["array_col"].to_numpy(float), adata.obs["array_row"].to_numpy(float)]
        )
    return np.zeros((adata.n_obs, 2))


def _spacing(pxy: np.ndarray) -> float:
    """Median nearest-neighbour distance between spot centres (image px)."""
    pts = pxy[np.all(np.isfinite(pxy), axis=1)]
    if len(pts) >= 2:
        from scipy.spatial import cKDTree

        d, _ = cKDTree(pts).query(pts, k=2)
        d = d[:, 1][d[:, 1] > 0]
        if d.size:
            return float(np.median(d))
    if len(pts):
        return max(float(np.ptp(pts[:, 0])), float(np.ptp(pts[:, 1])), 1.0) / 50.0
    return 1.0


class _Section:
    """A section's background, spot positions in background px and spot diameter."""

    def __init__(self, adata: Any):
        self.adata = adata
        img, scale = section_background(adata)
        self.img = img
        self.scale = float(scale) if img is not None else 1.0  # background px per full-res px
        self.pxy = _spot_xy(adata) * self.scale
        self.diameter = 0.9 * _spacing(self.pxy)
        self.diameters: np.ndarray | None = None
        meta = adata.uns.get("stpredict", {})
        mpp = meta.get("mpp") if isinstance(meta, Mapping) else None
        try:
            self.um_per_px = float(mpp) / (scale if img is not None else 1.0) if mpp else None
        except (TypeError, ValueError):
            self.um_per_px = None
        if self.um_per_px is not None and not (np.isfinite(self.um_per_px) and self.um_per_px > 0):
            self.um_per_px = None

    @property
    def aspect(self) -> float:
        """Height / width of the zoomed map."""
        xy = self.pxy[np.all(np.isfinite(self.pxy), axis=1)]
        if not len(xy):
            return 1.0
        w = np.ptp(xy[:, 0]) + 2 * self.diameter
        h = np.ptp(xy[:, 1]) + 2 * self.diameter
        return float(np.clip(h / max(w, 1e-9), 0.4, 2.5))

    def axes(self, ax: Any, faded: bool = False, scalebar: bool = False) -> None:
        """Draw the background and frame ``ax`` on the spots (equal aspect, y down)."""
        if self.img is not None:
            img = np.asarray(self.img)
            if faded:
                f = img.astype(float) / (255.0 if img.dtype == np.uint8 else max(img.max(), 1))
                img = np.clip(0.35 * f + 0.65, 0, 1)
            ax.imshow(img, zorder=0)
        else:
            ax.set_facecolor("white")
        ax.set_aspect("equal")
        xy = self.pxy[np.all(np.isfinite(self.pxy), axis=1)]
        if len(xy):
            pad = 1.5 * self.diameter
            ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
            ax.set_ylim(xy[:, 1].max() + pad, xy[:, 1].min() - pad)
        elif not ax.yaxis_inverted():
            ax.invert_yaxis()
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ("top", "right", "bottom", "left"):
            ax.spines[side].set_visible(False)
        if scalebar and self.um_per_px and len(xy):
            _scalebar(ax, self.um_per_px, np.ptp(xy[:, 0]) + 2 * self.diameter)

    def outline(self, ax: Any, mask: np.ndarray, **kw: Any) -> bool:
        """Contour around the spots selected by ``mask`` (e.g. the tumour annotation).

        Each point of a grid takes the label of its nearest spot (within one spot spacing);
        the 0.5 level of the lightly smoothed indicator is drawn. Returns whether a line was
        drawn.
        """
        ok = np.all(np.isfinite(self.pxy), axis=1)
        if not (mask & ok).any() or ok.sum() < 3:
            return False
        from scipy.ndimage import gaussian_filter
        from scipy.spatial import cKDTree

        xy = self.pxy[ok]
        pad = 1.5 * self.diameter
        x0, x1 = xy[:, 0].min() - pad, xy[:, 0].max() + pad
        y0, y1 = xy[:, 1].min() - pad, xy[:, 1].max() + pad
        step = max(x1 - x0, y1 - y0) / 300.0
        gx, gy = np.arange(x0, x1 + step, step), np.arange(y0, y1 + step, step)
        px, py = np.meshgrid(gx, gy)
        d, j = cKDTree(xy).query(np.column_stack([px.ravel(), py.ravel()]))
        z = np.asarray(mask)[ok][j].astype(float)
        z[d > self.diameter / 0.9 * 0.75] = 0.0
        z = gaussian_filter(z.reshape(px.shape), sigma=self.diameter / step / 4)
        if not (z.max() > 0.5 > z.min()):
            return False
        ax.contour(gx, gy, z, levels=[0.5], **kw)
        return True

    def spots(self, ax: Any, mask: np.ndarray | None = None, **kw: Any) -> EllipseCollection:
        """Circles of the spot diameter (data units) at the spots selected by ``mask``.

        Each point's own diameter when :attr:`diameters` is set (super-resolution maps: spots
        and grid points differ), else :attr:`diameter`.
        """
        xy = self.pxy if mask is None else self.pxy[mask]
        per_point = self.diameters
        if per_point is None:
            d = np.full(len(xy), self.diameter)
        else:
            d = np.asarray(per_point, dtype=float) if mask is None else per_point[mask]
        coll = EllipseCollection(
            d, d, np.zeros(len(xy)), units="xy", offsets=xy, offset_transform=ax.transData, **kw
        )
        ax.add_collection(coll, autolim=False)
        return coll


def _scalebar(ax: Any, um_per_px: float, width_px: float) -> None:
    """Draw a scale bar of a round length (about a fifth of the map width) in µm or mm."""
    target = 0.2 * width_px * um_per_px
    nice = [10, 20, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000]
    length = max([n for n in nice if n <= target] or [nice[0]])
    label = f"{length / 1000:g} mm" if length >= 1000 else f"{length:g} µm"
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    bar = AnchoredSizeBar(
        ax.transData,
        length / um_per_px,
        label,
        "lower right",
        pad=0.3,
        sep=2,
        frameon=False,
        size_vertical=0,
        color="black",
        fontproperties={"size": 8},
    )
    ax.add_artist(bar)


# --------------------------------------------------------------------------- dataset stats
@_styled
def plot_dataset_stats(spots: pd.DataFrame, out_png: PathLike) -> None:
    """Spots, genes and UMI per section (dataset overview).

    Parameters
    ----------
    spots
        One row per spot with ``sample_id``, ``patient_id``, ``platform``, ``total_counts``,
        ``n_genes_by_counts`` and ``keep`` (missing ``keep``: every spot kept).
    out_png
        PNG to write (and the same path with ``.pdf``).

    Notes
    -----
    Panels, sections ordered by patient: spots per section (kept and removed, stacked);
    genes detected per kept spot; UMI per kept spot (log axis). Boxes show the quartiles,
    whiskers the 5th-95th percentiles; outliers are not drawn.
    """
    df = spots.copy()
    if "patient_id" not in df:
        df["patient_id"] = ""
    if "platform" not in df:
        df["platform"] = ""
    df["keep"] = df["keep"].fillna(False).astype(bool) if "keep" in df else True
    for col in ("sample_id", "patient_id", "platform"):
        df[col] = df[col].astype(str)
    order = (
        df[["patient_id", "sample_id"]]
        .drop_duplicates()
        .sort_values(["patient_id", "sample_id"], key=lambda s: s.map(_natural_key))
    )
    sections = order["sample_id"].tolist()
    n = len(sections)
    pos = np.arange(n)
    platforms = sorted(df["platform"].unique())
    palette = ["#8dd3c7", "#bebada", "#b3de69", "#fccde5", "#d9d9d9", "#ffffb3"]
    pcol = {
        p: (palette[i % len(palette)] if len(platforms) > 1 else "#b8c9dc")
        for i, p in enumerate(platforms)
    }

    width = float(np.clip(0.24 * n + 2.5, 6.5, 24))
    fig, axes = plt.subplots(
        3, 1, figsize=(width, 8.2), sharex=True, layout="constrained", height_ratios=[1, 1, 1.1]
    )
    n_kept_total = int(df["keep"].sum())
    fig.suptitle(
        f"Dataset: {n} sections, {df['patient_id'].nunique()} patients, "
        f"{n_kept_total:,} of {len(df):,} spots kept"
    )
    grouped = {sid: g for sid, g in df.groupby("sample_id", sort=False)}

    ax = axes[0]
    kept = np.array([int(grouped[s]["keep"].sum()) for s in sections])
    total = np.array([len(grouped[s]) for s in sections])
    bw = 0.8 if n > 1 else 0.5
    ax.bar(pos, kept, width=bw, color="#3b6ea5", label="kept")
    ax.bar(pos, total - kept, bottom=kept, width=bw, color="#f2a65a", label="removed by QC")
    ax.set_ylabel("spots per section (count)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title("Spots per section")

    def boxes(axb: Any, column: str, positive: bool) -> None:
        data, where, colours = [], [], []
        for i, s in enumerate(sections):
            g = grouped[s]
            g = g[g["keep"]] if g["keep"].any() else g.iloc[:0]
            v = (
                _finite(pd.to_numeric(g[column], errors="coerce"))
                if column in g
                else (np.array([]))
            )
            if positive:
                v = v[v > 0]
            if v.size:
                data.append(v)
                where.append(i)
                colours.append(pcol.get(str(g["platform"].iloc[0]), "#b8c9dc"))
        if not data:
            _empty_note(axb, f"no '{column}' values")
            return
        bp = axb.boxplot(
            data,
            positions=where,
            widths=bw * 0.8,
            whis=(5, 95),
            showfliers=False,
            patch_artist=True,
            medianprops={"color": "black", "linewidth": 1.2},
        )
        for patch, c in zip(bp["boxes"], colours, strict=True):
            patch.set_facecolor(c)
            patch.set_alpha(0.85)

    boxes(axes[1], "n_genes_by_counts", positive=False)
    axes[1].set_ylabel("genes detected per spot\n(count > 0)")
    axes[1].set_title("Genes per kept spot (box: quartiles, whiskers: 5th–95th pct)")
    boxes(axes[2], "total_counts", positive=True)
    axes[2].set_yscale("log")
    _log_axis(axes[2].yaxis)
    axes[2].set_ylabel("UMI per spot\n(count, log scale)")
    axes[2].set_title("UMI per kept spot")
    if len(platforms) > 1:
        axes[1].legend(
            handles=[Patch(color=pcol[p], label=p) for p in platforms],
            title="platform",
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            frameon=False,
        )
    patients = order["patient_id"].to_numpy()
    for ax in axes:
        for i in range(1, n):  # separate patients
            if patients[i] != patients[i - 1]:
                ax.axvline(i - 0.5, color="#cccccc", lw=0.6, zorder=0)
        ax.set_xlim(-0.6, n - 0.4)
    axes[2].set_xticks(pos)
    axes[2].set_xticklabels(sections, rotation=90 if n > 6 else 0, fontsize=8)
    axes[2].set_xlabel("section (grouped by patient)")
    _save_both(fig, out_png)


# --------------------------------------------------------------------------- expression maps
@_styled
def plot_expression_maps(
    adatas: Sequence[Any],
    genes: Sequence[str],
    units_label: str,
    out_png: PathLike,
    titles: Sequence[str] | None = None,
    cmap: str = "viridis",
) -> None:
    """Measured and predicted expression over the H&E (ST-Net Fig. 2a).

    One row per section x gene: the H&E (tumour / normal annotations as spot outlines, when
    present), the measured and the predicted values over the faded H&E with a colour scale
    shared by the row (1st-99th percentile of the measured values), Pearson r in the title of
    the predicted panel.

    Parameters
    ----------
    adatas
        Prediction AnnData objects (``X`` measured, ``layers["predicted"]``).
    genes
        Genes to draw (a gene missing from a section gets a note instead of maps).
    units_label
        Colour-bar label (quantity and normalisation), e.g. ``units_label("log1p")``.
    out_png
        PNG to write (and the same path with ``.pdf``).
    titles
        Section names (default: ``sample_id``).
    cmap
        Colour map of the expression values.
    """
    from stpredict.ingest.section import sample_id_of

    genes = [str(g) for g in genes]
    if titles is None:
        titles = [sample_id_of(a) or f"section {i + 1}" for i, a in enumerate(adatas)]
    if len(titles) != len(adatas):
        raise ValueError("titles must have one entry per section")
    sections = [_Section(a) for a in adatas]
    rows = [(s, t, g) for s, t in zip(sections, titles, strict=True) for g in genes]
    if not rows:
        raise ValueError("plot_expression_maps needs at least one section and one gene")
    panel_w = 3.0
    heights = [panel_w * s.aspect for s, _, _ in rows]
    fig = plt.figure(
        figsize=(3 * panel_w + 1.6, sum(heights) + 0.45 * len(rows) + 0.3), layout="constrained"
    )
    gs = fig.add_gridspec(len(rows), 3, height_ratios=heights)
    cm = _cmap(cmap)
    for r, (sec, title, gene) in enumerate(rows):
        ax_he, ax_m, ax_p = (fig.add_subplot(gs[r, c]) for c in range(3))
        sec.axes(ax_he, scalebar=True)
        if sec.img is None:  # no image: the spots in grey give the outline its context
            sec.spots(ax_he, facecolors="#dddddd", edgecolors="none")
            ax_he.set_title(f"{title}: spots (no H&E image)")
        else:
            ax_he.set_title(f"{title}: H&E")
        ann = annotations(sec.adata)
        tumour = ann == TUMOR
        if sec.outline(ax_he, tumour, colors="black", linewidths=1.3):
            n_normal = int((ann == NORMAL).sum())
            ax_he.legend(
                handles=[
                    Line2D(
                        [],
                        [],
                        color="black",
                        lw=1.3,
                        label=f"tumour annotation ({int(tumour.sum())} spots; {n_normal} normal)",
                    )
                ],
                loc="upper center",
                bbox_to_anchor=(0.5, 0.0),
                frameon=False,
                borderaxespad=0.1,
                handlelength=1.5,
            )
        measured = _column(sec.adata, gene)
        predicted = _column(sec.adata, gene, "predicted")
        if measured is None:
            for ax in (ax_m, ax_p):
                sec.axes(ax, faded=True)
                _empty_note(ax, f"{gene} not in this section")
            ax_m.set_title(f"{gene}: measured")
            ax_p.set_title(f"{gene}: predicted")
            continue
        fin = _finite(measured)
        lo, hi = np.percentile(fin, [1, 99]) if fin.size else (0.0, 1.0)
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        norm = Normalize(vmin=float(lo), vmax=float(hi))
        for ax, values, name in ((ax_m, measured, "measured"), (ax_p, predicted, "predicted")):
            sec.axes(ax, faded=True)
            if values is None:
                _empty_note(ax, "no predictions")
                ax.set_title(f"{gene}: {name}")
                continue
            coll = sec.spots(ax, cmap=cm, norm=norm, linewidths=0)
            coll.set_array(np.ma.masked_invalid(values))
            _mark_qc_failed(sec, ax, legend=name == "predicted")
        r_val = (
            float(pearson_columns(measured, predicted)[0])
            if predicted is not None
            else float("nan")
        )
        r_txt = f"r = {r_val:.2f}" if np.isfinite(r_val) else "r = n/a"
        ax_m.set_title(f"{gene}: measured")
        ax_p.set_title(f"{gene}: predicted, {r_txt}")
        sm = plt.cm.ScalarMappable(norm=norm, cmap=cm)
        cb = fig.colorbar(
            sm, ax=[ax_m, ax_p], location="right", shrink=0.85, pad=0.02, extend="both"
        )
        cb.set_label(f"{gene}\n{units_label}", fontsize=8)
        cb.ax.tick_params(labelsize=8)
    _save_both(fig, out_png)


def _qc_failed_mask(adata: Any) -> np.ndarray:
    if "qc_failed" not in adata.obs:
        return np.zeros(adata.n_obs, dtype=bool)
    return adata.obs["qc_failed"].to_numpy(dtype=bool)


def _mark_qc_failed(
    sec: _Section,
    ax: Any,
    legend: bool = False,
    failed: np.ndarray | None = None,
    label: str = "imputed, not scored",
) -> None:
    """Ring the section's QC-failed spots (imputed, not scored); a legend entry when asked.

    ``failed``: the mask (default the section's ``obs["qc_failed"]``); ``label`` follows the
    count in the legend.
    """
    failed = _qc_failed_mask(sec.adata) if failed is None else np.asarray(failed, dtype=bool)
    if not failed.any():
        return
    sec.spots(ax, mask=failed, facecolors="none", edgecolors=QC_FAILED_EDGE, linewidths=0.7)
    if legend:
        ax.legend(
            handles=[
                Line2D(
                    [],
                    [],
                    ls="",
                    marker="o",
                    mfc="none",
                    mec=QC_FAILED_EDGE,
                    label=f"failed QC ({int(failed.sum())} spots): {label}",
                )
            ],
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            frameon=False,
            borderaxespad=0.1,
            fontsize=8,
        )


# --------------------------------------------------------------------------- super-resolution
def _superres_norm(adata: Any, gene: str) -> tuple[Normalize, np.ndarray, np.ndarray]:
    """One colour scale for a gene's measured and predicted values (1st-99th percentile).

    Returns the norm and the values drawn: measured ``X`` of the measured spots, the
    prediction of every imputed point (grid centres and QC-failed spots).
    """
    kind = adata.obs["kind"].astype(str).to_numpy()
    measured = _column(adata, gene)
    predicted = _column(adata, gene, "predicted")
    values = np.where(kind == "measured", measured, predicted)
    fin = _finite(values)
    lo, hi = np.percentile(fin, [1, 99]) if fin.size else (0.0, 1.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return Normalize(vmin=float(lo), vmax=float(hi)), values, kind


def _spot_diameter_fullres(adata: Any) -> float | None:
    """Return the spots' own diameter in full-res px (``uns["spatial"]`` scale factors), if any."""
    spatial = adata.uns.get("spatial", {})
    if not isinstance(spatial, Mapping):
        return None
    for entry in spatial.values():
        value = (entry.get("scalefactors") or {}).get("spot_diameter_fullres")
        try:
            if value is not None and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _superres_diameters(sec: _Section, adata: Any) -> None:
    """Per-point marker sizes: spots (measured, QC-failed) at their own size, grid points not.

    A spot is drawn at its physical diameter (``spot_diameter_fullres``; without it, 0.9 x the
    spots' own spacing, at most that), a grid point at 0.9 x the spacing of all points (the
    marker every point had before): on a stride grid finer than the spots the measured spots
    keep their size instead of shrinking to the grid's marker.
    """
    kind = adata.obs["kind"].astype(str).to_numpy()
    spot = (kind == "measured") | _qc_failed_mask(adata)
    grid_d = sec.diameter
    own = 0.9 * _spacing(sec.pxy[spot]) if spot.sum() >= 2 else grid_d
    phys = _spot_diameter_fullres(adata)
    spot_d = min(phys * sec.scale, own) if phys else own
    sec.diameters = np.where(spot, spot_d, grid_d)
    sec.diameter = max(spot_d, grid_d)  # frames the map


@_styled
def plot_superres_maps(
    adata: Any,
    genes: Sequence[str],
    units_label: str,
    out_png: PathLike,
    title: str | None = None,
    cmap: str = "viridis",
) -> dict[str, dict[str, Any]]:
    """Super-resolution maps over the H&E (DeepSpaCE Fig. 3): measured, imputed, both.

    One row per gene: the measured spots (their measured values), the imputed points (grid
    centres and QC-failed spots, ringed, with their predictions), and both together, over the
    faded H&E, with ONE colour scale for the row (the 1st-99th percentile of every value drawn,
    measured and predicted alike), so a colour means the same value in the three panels.

    Parameters
    ----------
    adata
        A super-resolution AnnData (:func:`stpredict.learn.superres.predict_superres`).
    genes
        Genes to draw.
    units_label
        Colour-bar label (quantity and normalisation).
    out_png
        PNG to write (and the same path with ``.pdf``); the PNG's text chunk ``colour_scales``
        holds the scales as JSON.
    title
        Section name (default: ``sample_id``).
    cmap
        Colour map.

    Returns
    -------
    dict
        Gene -> ``{"vmin", "vmax", "panels"}``: the one scale of the gene's three panels.
    """
    import json

    from stpredict.ingest.section import sample_id_of

    asked = [str(g) for g in genes]
    genes = [g for g in asked if g in adata.var_names]
    if not genes:
        from stpredict.errors import ConfigError

        raise ConfigError(
            f"none of the genes {asked} to map is predicted in this section",
            sample=sample_id_of(adata) or None,
            fix="choose genes of the experiment (evaluation.maps.genes), or leave it empty",
        )
    sec = _Section(adata)
    _superres_diameters(sec, adata)
    panel_w = 3.2
    fig = plt.figure(
        figsize=(3 * panel_w + 1.6, len(genes) * (panel_w * sec.aspect + 0.5) + 0.5),
        layout="constrained",
    )
    gs = fig.add_gridspec(len(genes), 3)
    cm = _cmap(cmap)
    scales: dict[str, dict[str, Any]] = {}
    name = title or sample_id_of(adata) or "section"
    for r, gene in enumerate(genes):
        norm, values, kind = _superres_norm(adata, gene)
        axes = [fig.add_subplot(gs[r, c]) for c in range(3)]
        panels = (
            ("measured", kind == "measured"),
            ("imputed", kind == "imputed"),
            ("both", np.ones(len(kind), dtype=bool)),
        )
        for ax, (panel, mask) in zip(axes, panels, strict=True):
            sec.axes(ax, faded=True, scalebar=panel == "measured")
            order = np.flatnonzero(mask)
            order = order[np.argsort(kind[order] == "measured", kind="stable")]  # spots on top
            coll = sec.spots(ax, mask=order, cmap=cm, norm=norm, linewidths=0)
            coll.set_array(np.ma.masked_invalid(values[order]))
            coll.set_rasterized(True)  # thousands of points: a raster layer keeps the PDF small
            if panel != "measured":
                _mark_qc_failed(sec, ax, legend=panel == "imputed")
            ax.set_title(f"{gene}: {panel} ({int(mask.sum()):,})")
        sm = plt.cm.ScalarMappable(norm=norm, cmap=cm)
        cb = fig.colorbar(sm, ax=axes, location="right", shrink=0.85, pad=0.02, extend="both")
        cb.set_label(f"{gene}\n{units_label}\n(measured and predicted)", fontsize=8)
        cb.ax.tick_params(labelsize=8)
        scales[gene] = {"vmin": norm.vmin, "vmax": norm.vmax, "panels": [p for p, _ in panels]}
    fig.suptitle(f"{name}: measured spots and imputed centres")
    _save_both(fig, out_png, png_text={"colour_scales": json.dumps(scales)})
    return scales


# --------------------------------------------------------------------------- cluster maps
@_styled
def plot_cluster_maps(adata: Any, out_png: PathLike, title: str | None = None) -> None:
    """Measured vs predicted cluster maps over the H&E (DeepSpaCE Fig. 2c-d).

    Parameters
    ----------
    adata
        Prediction AnnData with ``obs["cluster_true"]`` and ``obs["cluster_pred"]`` (labels;
        empty or missing labels are drawn grey as "unassigned").
    out_png
        PNG to write (and the same path with ``.pdf``).
    title
        Section name (default: ``sample_id``).
    """
    from stpredict.ingest.section import sample_id_of

    def labels(col: str) -> np.ndarray:
        s = (
            adata.obs[col].astype(object)
            if col in adata.obs
            else pd.Series([""] * adata.n_obs, dtype=object)
        )
        out = s.fillna("").astype(str).to_numpy()
        out[np.isin(out, ["nan", "None"])] = ""
        return out

    true, pred = labels("cluster_true"), labels("cluster_pred")
    cats = sorted({*true, *pred} - {""}, key=_natural_key)
    col = adata.obs["cluster_true"] if "cluster_true" in adata.obs else None
    if col is not None and isinstance(col.dtype, pd.CategoricalDtype):
        cats = [str(c) for c in col.cat.categories]  # the file's categories and colours
    colours = _category_colours(cats)
    colours[""] = "#d0d0d0"
    both = (true != "") & (pred != "")
    acc = float(np.mean(true[both] == pred[both])) if both.any() else float("nan")
    sec = _Section(adata)
    w = 4.2
    fig, axes = plt.subplots(
        1, 2, figsize=(2 * w + 1.6, w * sec.aspect + 0.9), layout="constrained"
    )
    for ax, lab, name in ((axes[0], true, "measured"), (axes[1], pred, "predicted")):
        sec.axes(ax, faded=True, scalebar=(ax is axes[0]))
        if adata.n_obs:
            sec.spots(ax, facecolors=[colours[v] for v in lab], linewidths=0)
        ax.set_title(f"{name} clusters")
    handles = [
        Line2D([], [], ls="", marker="o", ms=7, color=colours[c], label=str(c)) for c in cats
    ]
    if ((true == "") | (pred == "")).any():
        handles.append(
            Line2D([], [], ls="", marker="o", ms=7, color=colours[""], label="unassigned")
        )
    if handles:
        fig.legend(
            handles=handles,
            loc="outside right upper",
            title="cluster",
            frameon=False,
            ncol=1 if len(handles) <= 16 else 2,
        )
    name = title or sample_id_of(adata) or "section"
    acc_txt = f"accuracy {acc:.1%}" if np.isfinite(acc) else "accuracy n/a"
    fig.suptitle(f"{name}: clusters ({acc_txt}, {int(both.sum()):,} spots)")
    _save_both(fig, out_png)
