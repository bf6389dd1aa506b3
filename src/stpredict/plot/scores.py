"""Publication figures (matplotlib, Agg backend): ST-Net and DeepSpaCE reproductions.

Every ``plot_*`` function writes ``out_png`` and the same path with the suffix ``.pdf``
(atomically, through :func:`stpredict.plotting.save_figure`) and closes its figure.

Conventions
-----------
* Spatial maps are drawn in the pixel frame of the section's background image (equal aspect,
  y pointing down like the image); spots are circles sized in data units to 90 % of the spot
  spacing, so they barely touch whatever the figure size.
* Colour scales of expression maps are shared per row (measured and predicted) and span the
  1st-99th percentile of the measured values.
* Missing values (a gene whose correlation is NaN, a fold without validation loss) are left
  out of the panels, never drawn as 0, and never raise.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import EllipseCollection  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import ConnectionPatch, Patch  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from stpredict.plotting import save_figure, section_background  # noqa: E402

__all__ = [
    "units_label",
    "plot_dataset_stats",
    "plot_expression_maps",
    "plot_consistency",
    "plot_auroc_hist",
    "plot_method_scatter",
    "plot_umap",
    "plot_ig_overlays",
    "plot_confusion",
    "plot_cluster_maps",
    "plot_loss_curves",
]

PathLike = str | os.PathLike[str]
F = TypeVar("F", bound=Callable[..., Any])

#: Resolution of the PNG copies (the PDFs are vector, rasterised layers at this resolution).
DPI = 150

_STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,  # embed TrueType: text stays editable and searchable
    "ps.fonttype": 42,
    "image.interpolation": "nearest",
}

_UNITS = {
    "log1p": "log1p(UMI / total × 10⁴)",
    "log_proportion": "log(UMI / total + pseudocount)",
    "pearson_minmax": "Pearson residual, min–max scaled to [0, 1]",
}

_METHODS: dict[str, tuple[str, str]] = {  # name -> (display label, colour)
    "cnn": ("CNN", "#1f4e99"),
    "mean": ("training mean", "#7f7f7f"),
    "labels": ("tumour/normal labels", "#d62728"),
    "nuclear_rf": ("nuclear features (RF)", "#2ca02c"),
    "nmf_rf": ("NMF composition (RF)", "#9467bd"),
    "neighbours": ("4-neighbour oracle", "#ff7f0e"),
}

_ANNOTATION = {  # obs["annotation"] value -> (legend label, colour)
    "tumor": ("tumour", "#d62728"),
    "non": ("normal", "#1f77b4"),
    "": ("unannotated", "#bdbdbd"),
}


# --------------------------------------------------------------------------- helpers
def _styled(func: F) -> F:
    """Run a plot function inside the module's rc style (fonts >= 8 pt)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with plt.rc_context(_STYLE):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _save_both(fig: Any, out_png: PathLike) -> None:
    """Write ``fig`` to ``out_png`` and to the same path with suffix ``.pdf``; close it."""
    try:
        out = Path(out_png)
        save_figure(fig, out, dpi=DPI)
        save_figure(fig, out.with_suffix(".pdf"), dpi=DPI)
    finally:
        plt.close(fig)


def units_label(transform_name: str) -> str:
    """Colour-bar / axis label of the expression values of a target transform.

    Parameters
    ----------
    transform_name
        ``"log1p"``, ``"log_proportion"`` (ST-Net), ``"pearson_minmax"`` (DeepSpaCE) or any
        other name, which is returned unchanged.

    Returns
    -------
    str
        Human-readable quantity and normalisation.
    """
    return _UNITS.get(str(transform_name), str(transform_name))


def _method_label(method: str) -> str:
    return _METHODS.get(method, (method, ""))[0]


def _method_colour(method: str, i: int) -> str:
    colour = _METHODS.get(method, ("", ""))[1]
    return colour or plt.get_cmap("tab10")(i % 10)


def _empty_note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9,
            color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])


def _log_axis(axis: Any) -> None:
    """Log-scale ticks with plain-number labels, denser when the axis spans few decades."""
    lo, hi = sorted(axis.get_view_interval())
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs: tuple[float, ...] = (
        tuple(range(1, 10)) if decades < 1.2 else (1.0, 2.0, 5.0) if decades < 4 else (1.0,))
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
    axis.set_minor_formatter(NullFormatter())


def _natural_key(s: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(s)))


def _finite(v: Any) -> np.ndarray:
    a = np.asarray(v, dtype=float).ravel()
    return a[np.isfinite(a)]


def _pearson(m: np.ndarray, p: np.ndarray) -> float:
    ok = np.isfinite(m) & np.isfinite(p)
    if ok.sum() < 3:
        return float("nan")
    m, p = m[ok], p[ok]
    if np.all(m == m[0]) or np.all(p == p[0]):
        return float("nan")
    return float(np.corrcoef(m, p)[0, 1])


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
        return np.column_stack([adata.obs["array_col"].to_numpy(float),
                                adata.obs["array_row"].to_numpy(float)])
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
        self.pxy = _spot_xy(adata) * (scale if img is not None else 1.0)
        self.diameter = 0.9 * _spacing(self.pxy)
        meta = adata.uns.get("stpredict", {})
        mpp = meta.get("mpp") if isinstance(meta, Mapping) else None
        try:
            self.um_per_px = float(mpp) / (scale if img is not None else 1.0) if mpp else None
        except (TypeError, ValueError):
            self.um_per_px = None
        if self.um_per_px is not None and not (np.isfinite(self.um_per_px) and
                                               self.um_per_px > 0):
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
        """Circles of the spot diameter (data units) at the spots selected by ``mask``."""
        xy = self.pxy if mask is None else self.pxy[mask]
        d = np.full(len(xy), self.diameter)
        coll = EllipseCollection(d, d, np.zeros(len(xy)), units="xy", offsets=xy,
                                 offset_transform=ax.transData, **kw)
        ax.add_collection(coll, autolim=False)
        return coll


def _scalebar(ax: Any, um_per_px: float, width_px: float) -> None:
    """Draw a scale bar of a round length (about a fifth of the map width) in µm or mm."""
    target = 0.2 * width_px * um_per_px
    nice = [10, 20, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000]
    length = max([n for n in nice if n <= target] or [nice[0]])
    label = f"{length / 1000:g} mm" if length >= 1000 else f"{length:g} µm"
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    bar = AnchoredSizeBar(ax.transData, length / um_per_px, label, "lower right", pad=0.3,
                          sep=2, frameon=False, size_vertical=0, color="black",
                          fontproperties={"size": 8})
    ax.add_artist(bar)


def _cmap(name: str, bad: str = "#d9d9d9") -> Any:
    return plt.get_cmap(name).with_extremes(bad=bad)


def _category_colours(categories: Sequence[str]) -> dict[str, Any]:
    n = len(categories)
    if n <= 10:
        cols = [plt.get_cmap("tab10")(i) for i in range(n)]
    elif n <= 20:
        cols = [plt.get_cmap("tab20")(i) for i in range(n)]
    else:
        cols = [plt.get_cmap("turbo")(x) for x in np.linspace(0.05, 0.95, n)]
    return dict(zip(categories, cols, strict=True))


def _annotation(adata: Any) -> np.ndarray:
    if "annotation" not in adata.obs:
        return np.full(adata.n_obs, "", dtype=object)
    return adata.obs["annotation"].astype(object).fillna("").astype(str).to_numpy()


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
    order = (df[["patient_id", "sample_id"]].drop_duplicates()
             .sort_values(["patient_id", "sample_id"],
                          key=lambda s: s.map(_natural_key)))
    sections = order["sample_id"].tolist()
    n = len(sections)
    pos = np.arange(n)
    platforms = sorted(df["platform"].unique())
    palette = ["#8dd3c7", "#bebada", "#b3de69", "#fccde5", "#d9d9d9", "#ffffb3"]
    pcol = {p: (palette[i % len(palette)] if len(platforms) > 1 else "#b8c9dc")
            for i, p in enumerate(platforms)}

    width = float(np.clip(0.24 * n + 2.5, 6.5, 24))
    fig, axes = plt.subplots(3, 1, figsize=(width, 8.2), sharex=True, layout="constrained",
                             height_ratios=[1, 1, 1.1])
    n_kept_total = int(df["keep"].sum())
    fig.suptitle(f"Dataset: {n} sections, {df['patient_id'].nunique()} patients, "
                 f"{n_kept_total:,} of {len(df):,} spots kept")
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
            v = _finite(pd.to_numeric(g[column], errors="coerce")) if column in g else (
                np.array([]))
            if positive:
                v = v[v > 0]
            if v.size:
                data.append(v)
                where.append(i)
                colours.append(pcol.get(str(g["platform"].iloc[0]), "#b8c9dc"))
        if not data:
            _empty_note(axb, f"no '{column}' values")
            return
        bp = axb.boxplot(data, positions=where, widths=bw * 0.8, whis=(5, 95),
                         showfliers=False, patch_artist=True,
                         medianprops={"color": "black", "linewidth": 1.2})
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
        axes[1].legend(handles=[Patch(color=pcol[p], label=p) for p in platforms],
                       title="platform", loc="upper left", bbox_to_anchor=(1.0, 1.0),
                       frameon=False)
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
    from stpredict.qc import _sample_id

    genes = [str(g) for g in genes]
    if titles is None:
        titles = [_sample_id(a) or f"section {i + 1}" for i, a in enumerate(adatas)]
    if len(titles) != len(adatas):
        raise ValueError("titles must have one entry per section")
    sections = [_Section(a) for a in adatas]
    rows = [(s, t, g) for s, t in zip(sections, titles, strict=True) for g in genes]
    if not rows:
        raise ValueError("plot_expression_maps needs at least one section and one gene")
    panel_w = 3.0
    heights = [panel_w * s.aspect for s, _, _ in rows]
    fig = plt.figure(figsize=(3 * panel_w + 1.6, sum(heights) + 0.45 * len(rows) + 0.3),
                     layout="constrained")
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
        ann = _annotation(sec.adata)
        tumour = ann == "tumor"
        if sec.outline(ax_he, tumour, colors="black", linewidths=1.3):
            n_normal = int((ann == "non").sum())
            ax_he.legend(handles=[Line2D([], [], color="black", lw=1.3,
                                         label=f"tumour annotation ({int(tumour.sum())} "
                                               f"spots; {n_normal} normal)")],
                         loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False,
                         borderaxespad=0.1, handlelength=1.5)
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
        lo, hi = (np.percentile(fin, [1, 99]) if fin.size else (0.0, 1.0))
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
        r_val = _pearson(measured, predicted) if predicted is not None else float("nan")
        r_txt = f"r = {r_val:.2f}" if np.isfinite(r_val) else "r = n/a"
        ax_m.set_title(f"{gene}: measured")
        ax_p.set_title(f"{gene}: predicted, {r_txt}")
        sm = plt.cm.ScalarMappable(norm=norm, cmap=cm)
        cb = fig.colorbar(sm, ax=[ax_m, ax_p], location="right", shrink=0.85, pad=0.02,
                          extend="both")
        cb.set_label(f"{gene}\n{units_label}", fontsize=8)
        cb.ax.tick_params(labelsize=8)
    _save_both(fig, out_png)


# --------------------------------------------------------------------------- consistency
def _pick_target(df: pd.DataFrame, target: str | None) -> pd.DataFrame:
    if "target" not in df or target is None:
        return df
    if (df["target"] == target).any():
        return df[df["target"] == target]
    first = df["target"].dropna()
    return df[df["target"] == first.iloc[0]] if len(first) else df


@_styled
def plot_consistency(
    summary: pd.DataFrame,
    n_units: int,
    out_png: PathLike,
    methods: Mapping[str, pd.DataFrame] | None = None,
    target: str | None = "raw",
    unit_name: str = "patients",
) -> None:
    """Genes by the number of held-out units with a positive correlation (ST-Net Fig. 2b).

    Parameters
    ----------
    summary
        Output of :func:`stpredict.metrics.summarise` for the CNN (``n_positive``,
        ``n_units``, optionally ``target`` and ``significant``).
    n_units
        Number of held-out units N (the null is Binomial(N, 0.5)).
    out_png
        PNG to write (and the same path with ``.pdf``).
    methods
        Optional baselines, name -> table with ``gene``, ``n_positive`` (and ``n_units``,
        ``target``), drawn as step lines; a baseline without correlations is skipped.
    target
        Rows of this ``target`` are used (default ``"raw"``; else the first target present).
    unit_name
        What a unit is, for the axis label.

    Notes
    -----
    Genes without a defined correlation in any unit (``n_units == 0``) are left out.
    """
    n_units = int(n_units)
    k = np.arange(n_units + 1)

    def counts(df: pd.DataFrame) -> np.ndarray | None:
        df = _pick_target(df, target)
        if "n_positive" not in df:
            return None
        ok = pd.to_numeric(df["n_positive"], errors="coerce").notna()
        if "n_units" in df:
            ok &= pd.to_numeric(df["n_units"], errors="coerce").fillna(0) > 0
        if "median_pearson" in df:
            ok &= pd.to_numeric(df["median_pearson"], errors="coerce").notna()
        v = pd.to_numeric(df.loc[ok, "n_positive"], errors="coerce").to_numpy(dtype=int)
        if not v.size:
            return None
        return np.bincount(np.clip(v, 0, n_units), minlength=n_units + 1)

    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    cnn = counts(summary)
    if cnn is None:
        _empty_note(ax, "no gene with a defined correlation")
    else:
        n_genes = int(cnn.sum())
        ax.bar(k, cnn, width=0.85, color=_METHODS["cnn"][1], alpha=0.85,
               label=f"CNN ({n_genes} genes)")
        from scipy.stats import binom

        null = binom.pmf(k, n_units, 0.5) * n_genes
        ax.plot(k, null, "o-", color="black", ms=4, lw=1.2,
                label=f"null: Binomial({n_units}, 0.5) × {n_genes} genes")
        for i, (name, df) in enumerate((methods or {}).items()):
            if name == "cnn":
                continue
            c = counts(df)
            if c is None:
                continue
            ax.stairs(c, np.arange(n_units + 2) - 0.5, color=_method_colour(name, i), lw=1.6,
                      label=f"{_method_label(name)} ({int(c.sum())} genes)")
        sig = _pick_target(summary, target)
        if "significant" in sig and n_genes:
            n_sig = int(sig["significant"].fillna(False).astype(bool).sum())
            ax.text(0.02, 0.97, f"Holm-adjusted p < 0.05: {n_sig} of {n_genes} genes",
                    transform=ax.transAxes, va="top", ha="left", fontsize=8)
        handles, labels = ax.get_legend_handles_labels()
        rank = [0 if lab.startswith("CNN") else 2 if lab.startswith("null") else 1
                for lab in labels]
        order = sorted(range(len(labels)), key=lambda i: rank[i])  # CNN, baselines, null
        ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left",
                  bbox_to_anchor=(0.0, 0.9), frameon=False)
        ax.set_ylim(0, max(float(cnn.max()), float(null.max())) * 1.35 + 0.5)
    ax.set_xlim(-0.7, n_units + 0.7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(n_units + 1, 12)))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"{unit_name} with positive correlation (of {n_units})")
    ax.set_ylabel("genes (count)")
    ax.set_title(f"Consistency across {unit_name}")
    _save_both(fig, out_png)


# --------------------------------------------------------------------------- AUROC histogram
@_styled
def plot_auroc_hist(per_gene: pd.DataFrame, out_png: PathLike, target: str = "raw") -> None:
    """Histogram of the per-gene AUROC, top vs bottom quartile (ST-Net Fig. 2c).

    Parameters
    ----------
    per_gene
        Output of :func:`stpredict.metrics.score_units`; rows with ``stratum == "all"`` and the
        given ``target`` are used, AUROC is the median over held-out units.
    out_png
        PNG to write (and the same path with ``.pdf``).
    target
        Target whose rows are used.
    """
    df = per_gene
    if "stratum" in df:
        df = df[df["stratum"] == "all"]
    if "target" in df:
        df = df[df["target"] == target]
    med = (pd.to_numeric(df["auroc"], errors="coerce").groupby(df["gene"]).median()
           if len(df) else pd.Series(dtype=float))
    v = _finite(med)
    fig, ax = plt.subplots(figsize=(5.6, 4.0), layout="constrained")
    if v.size:
        ax.hist(v, bins=np.linspace(0, 1, 41), color=_METHODS["cnn"][1], alpha=0.85,
                edgecolor="white", linewidth=0.5)
        ax.text(0.02, 0.97, f"{v.size} genes\nmedian AUROC {np.median(v):.2f}\n"
                f"> 0.5: {int((v > 0.5).sum())} genes", transform=ax.transAxes, va="top",
                ha="left", fontsize=8)
    else:
        _empty_note(ax, "no gene with a defined AUROC")
    ax.axvline(0.5, color="black", ls="--", lw=1.2, label="chance (0.5)")
    ax.legend(loc="upper right", frameon=False)
    ax.set_xlim(0, 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("AUROC, top vs bottom quartile of measured\n(median over held-out units)")
    ax.set_ylabel("genes (count)")
    ax.set_title("Separation of high and low expression")
    _save_both(fig, out_png)


# --------------------------------------------------------------------------- method scatter
@_styled
def plot_method_scatter(
    comparison: pd.DataFrame,
    out_png: PathLike,
    target: str = "raw",
    units_label: str | None = None,
) -> dict[str, tuple[int, int]]:
    """CNN against each baseline, one point per gene (ST-Net Fig. 2d).

    Parameters
    ----------
    comparison
        Table with ``gene``, ``method``, ``target``, ``median_pearson`` and ``median_rmse``
        (one row per gene x method x target); ``method`` must include ``"cnn"``.
    out_png
        PNG to write (and the same path with ``.pdf``).
    target
        Target whose rows are compared.
    units_label
        Units of the expression values, for the RMSE axes (only used for a baseline without
        correlations, such as ``"mean"``).

    Returns
    -------
    dict
        Baseline -> ``(a, b)``: the CNN is better for ``a`` of the ``b`` genes with both values
        finite. Better means a higher median Pearson r, or, for a baseline whose correlations
        are all NaN (``"mean"``), a lower median RMSE.
    """
    df = comparison
    if "target" in df:
        df = df[df["target"] == target]
    methods = list(dict.fromkeys(df["method"].astype(str)))
    if "cnn" not in methods:
        raise ValueError(f"comparison table has no 'cnn' rows for target {target!r}")
    order = [m for m in _METHODS if m in methods and m != "cnn"]
    order += [m for m in methods if m not in _METHODS and m != "cnn"]

    def table(m: str) -> pd.DataFrame:
        t = df[df["method"].astype(str) == m].drop_duplicates("gene").set_index("gene")
        return t.apply(pd.to_numeric, errors="coerce") if len(t) else t

    cnn = table("cnn")
    n = max(len(order), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.5 * ncols + 0.3, 3.6 * nrows + 0.3),
                             layout="constrained", squeeze=False)
    counts: dict[str, tuple[int, int]] = {}
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    if not order:
        _empty_note(axes[0, 0], "no baseline to compare with")
        axes[0, 0].set_title("CNN vs baselines")
    for i, m in enumerate(order):
        ax = axes.ravel()[i]
        base = table(m)
        # the training mean is constant within a fold: its correlation is meaningless even
        # where folds with different means make it defined (within-section CV): use RMSE
        use_r = m != "mean" and "median_pearson" in base and base["median_pearson"].notna().any()
        col = "median_pearson" if use_r else "median_rmse"
        genes = cnn.index.intersection(base.index)
        x = base.loc[genes, col].to_numpy(float) if col in base else np.full(len(genes), np.nan)
        y = cnn.loc[genes, col].to_numpy(float) if col in cnn else np.full(len(genes), np.nan)
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        better = int((y > x).sum()) if use_r else int((y < x).sum())
        counts[m] = (better, int(ok.sum()))
        ax.set_aspect("equal", adjustable="box")
        if ok.any():
            lo = float(min(x.min(), y.min()))
            hi = float(max(x.max(), y.max()))
            if use_r:
                lo, hi = min(lo, 0.0), max(hi, 0.0)
            span = (hi - lo) or 1.0
            lo, hi = lo - 0.05 * span, hi + 0.05 * span
            c = np.where((y > x) if use_r else (y < x), _METHODS["cnn"][1], "#aaaaaa")
            ax.scatter(x, y, s=14, c=c, alpha=0.8, linewidths=0, rasterized=len(x) > 2000)
        else:
            lo, hi = (-0.1, 1.0) if use_r else (0.0, 1.0)
            _empty_note(ax, "no gene with both values")
        ax.plot([lo, hi], [lo, hi], ls="--", color="black", lw=1)
        if use_r:
            ax.axhline(0, color="#cccccc", lw=0.6, zorder=0)
            ax.axvline(0, color="#cccccc", lw=0.6, zorder=0)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        label = _method_label(m)
        if use_r:
            ax.set_xlabel(f"{label}: median Pearson r")
            ax.set_ylabel("CNN: median Pearson r")
            txt = f"CNN higher for {better} of {int(ok.sum())} genes"
        else:
            unit = f"\n({units_label})" if units_label else ""
            ax.set_xlabel(f"{label}: median RMSE{unit}")
            ax.set_ylabel(f"CNN: median RMSE{unit}")
            txt = f"CNN lower RMSE (better)\nfor {better} of {int(ok.sum())} genes"
        ax.text(0.03, 0.97, txt, transform=ax.transAxes, va="top", ha="left", fontsize=8,
                color=_METHODS["cnn"][1], bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.5})
        ax.set_title(f"CNN vs {label}")
    fig.suptitle(f"Per-gene comparison ({target} targets)")
    _save_both(fig, out_png)
    return counts


# --------------------------------------------------------------------------- UMAP
@_styled
def plot_umap(
    coords: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    out_png: PathLike,
    examples: pd.DataFrame | None = None,
    patches: np.ndarray | None = None,
    title: str = "UMAP of patch features",
) -> None:
    """UMAP of patch embeddings coloured by annotation, with example patches (ST-Net Fig. 4).

    Parameters
    ----------
    coords
        ``(n, 2)`` UMAP coordinates.
    labels
        ``n`` annotations: ``"tumor"``, ``"non"`` or ``""`` (unannotated).
    out_png
        PNG to write (and the same path with ``.pdf``).
    examples
        Up to 4 rows with ``kind`` (caption) and ``index`` (row of ``coords``); ``patches[i]``
        is the patch of ``examples.iloc[i]``.
    patches
        ``uint8`` array ``(k, S, S, 3)`` of example patches (optional).
    title
        Figure title.
    """
    xy = np.asarray(coords, dtype=float).reshape(-1, 2)
    lab = np.asarray(["" if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v)
                      for v in np.asarray(labels, dtype=object).ravel()], dtype=object)
    if len(lab) != len(xy):
        raise ValueError(f"{len(lab)} labels for {len(xy)} points")
    ex = examples.head(4).reset_index(drop=True) if examples is not None else None
    has_insets = ex is not None and patches is not None and len(ex) > 0
    if has_insets:
        fig = plt.figure(figsize=(9.0, 6.4), layout="constrained")
        gs = fig.add_gridspec(2, 3, width_ratios=[1, 2.8, 1])
        ax = fig.add_subplot(gs[:, 1])
    else:
        fig, ax = plt.subplots(figsize=(6.2, 5.6), layout="constrained")
    n = len(xy)
    size = float(np.clip(4000.0 / max(n, 1), 1.0, 25.0))
    handles = []
    for key in ("", "non", "tumor"):  # unannotated underneath
        name, colour = _ANNOTATION[key]
        mask = lab == key
        if key == "":
            mask = ~np.isin(lab, ["tumor", "non"])
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, c=colour, linewidths=0, alpha=0.7,
                       rasterized=True)
            handles.append(Line2D([], [], ls="", marker="o", color=colour, ms=6,
                                  label=f"{name} ({int(mask.sum()):,})"))
    if not n:
        _empty_note(ax, "no points")
    ax.set_xlabel("UMAP 1 (a.u.)")
    ax.set_ylabel("UMAP 2 (a.u.)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title)
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1),
                  ncol=len(handles), frameon=False, title="annotation")
    if ex is not None and len(ex):
        idx = pd.to_numeric(ex["index"], errors="coerce").fillna(-1).astype(int).to_numpy()
        valid = (idx >= 0) & (idx < n)
        pts = np.full((len(ex), 2), np.nan)
        pts[valid] = xy[idx[valid]]
        ax.scatter(pts[valid, 0], pts[valid, 1], s=60, facecolors="none", edgecolors="black",
                   linewidths=1.4, zorder=5)
        kinds = ex["kind"].astype(str).tolist() if "kind" in ex else [""] * len(ex)
        if has_insets:
            # two leftmost examples on the left, the others on the right; top/bottom by y
            xs = np.where(valid, pts[:, 0], np.inf)
            by_x = np.argsort(xs, kind="stable")
            n_left = min(2, len(ex) // 2 if len(ex) > 1 else 1)
            sides = {int(j): (0 if r < n_left else 2) for r, j in enumerate(by_x)}
            slots: dict[tuple[int, int], int] = {}
            for col in (0, 2):
                members = [j for j, c in sides.items() if c == col]
                members.sort(key=lambda j: -pts[j, 1] if valid[j] else 0.0)  # high y on top
                for row, j in enumerate(members[:2]):
                    slots[(row, col)] = j
            for (row, col), j in slots.items():
                axi = fig.add_subplot(gs[row, col])
                if j < len(patches):
                    axi.imshow(np.asarray(patches[j]))
                axi.set_xticks([])
                axi.set_yticks([])
                colour = _ANNOTATION.get(lab[idx[j]] if valid[j] else "", _ANNOTATION[""])[1]
                for side in axi.spines.values():
                    side.set_visible(True)
                    side.set_edgecolor(colour)
                    side.set_linewidth(2.0)
                axi.set_title(kinds[j], fontsize=9)
                axi.set_aspect("equal")
                if valid[j]:
                    xa = 1.0 if col == 0 else 0.0
                    con = ConnectionPatch(xyA=(xa, 0.5), coordsA=axi.transAxes,
                                          xyB=tuple(pts[j]), coordsB=ax.transData,
                                          color="black", lw=0.8, alpha=0.7,
                                          arrowstyle="-|>", mutation_scale=8, shrinkB=4)
                    fig.add_artist(con)
        else:
            for j in np.flatnonzero(valid):
                ax.annotate(kinds[j], pts[j], xytext=(6, 6), textcoords="offset points",
                            fontsize=8, bbox={"facecolor": "white", "alpha": 0.8,
                                              "edgecolor": "none", "pad": 1})
    _save_both(fig, out_png)


# --------------------------------------------------------------------------- IG overlays


@_styled
def plot_ig_overlays(
    patches: np.ndarray,
    attributions: np.ndarray,
    gene: str,
    out_png: PathLike,
    values: Sequence[float] | np.ndarray | None = None,
    units_label: str | None = None,
    max_alpha: float = 0.85,
) -> None:
    """H&E patches and their positive integrated-gradient attributions (ST-Net Fig. 3).

    Parameters
    ----------
    patches
        ``uint8`` array ``(k, S, S, 3)``.
    attributions
        ``(k, S, S)`` attributions for ``gene`` (summed over colour channels).
    gene
        Gene explained.
    out_png
        PNG to write (and the same path with ``.pdf``).
    values
        Predicted values of the patches (captions), optional.
    units_label
        Units of ``values``, for the captions' legend in the title.
    max_alpha
        Opacity of the red overlay at the normaliser.

    Notes
    -----
    The overlay's opacity is the positive attribution divided by the patch's 99th percentile
    of ``|attribution|`` (clipped to [0, 1]), so each patch uses its own scale.
    """
    p = np.asarray(patches)
    a = np.nan_to_num(np.asarray(attributions, dtype=float), nan=0.0, posinf=0.0, neginf=0.0)
    if p.ndim == 3:
        p, a = p[None], a.reshape((1, *a.shape[-2:]))
    if a.ndim == 4:  # (k, S, S, C): sum the channels
        a = a.sum(axis=-1)
    k = len(p)
    if len(a) != k:
        raise ValueError(f"{k} patches but {len(a)} attribution maps")
    vals = None if values is None else np.asarray(values, dtype=float).ravel()
    blocks = max(1, math.ceil(k / 6))
    per_row = max(1, math.ceil(k / blocks))
    fig = plt.figure(figsize=(1.9 * per_row + 1.2, 3.9 * blocks + 0.4), layout="constrained")
    gs = fig.add_gridspec(2 * blocks, per_row)
    all_axes: list[Any] = []
    red = LinearSegmentedColormap.from_list("red_alpha", [(1, 0, 0, 0), (1, 0, 0, max_alpha)])
    for i in range(k):
        b, c = divmod(i, per_row)
        ax_he = fig.add_subplot(gs[2 * b, c])
        ax_ov = fig.add_subplot(gs[2 * b + 1, c])
        img = p[i]
        ax_he.imshow(img)
        ax_ov.imshow(img)
        pos = np.clip(a[i], 0, None)
        scale = float(np.percentile(np.abs(a[i]), 99)) if a[i].size else 0.0
        if not scale > 0:
            scale = float(np.abs(a[i]).max()) if a[i].size else 0.0
        alpha = np.clip(pos / scale, 0, 1) if scale > 0 else np.zeros_like(pos)
        ax_ov.imshow(alpha, cmap=red, vmin=0, vmax=1, interpolation="bilinear")
        all_axes += [ax_he, ax_ov]
        cap = f"patch {i + 1}"
        if vals is not None and i < len(vals):
            cap += f"\npredicted {vals[i]:.2f}" if np.isfinite(vals[i]) else "\npredicted n/a"
        ax_he.set_title(cap, fontsize=8)
        for ax in (ax_he, ax_ov):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        if c == 0:
            ax_he.set_ylabel("H&E")
            ax_ov.set_ylabel("IG > 0 (red)")
    if k == 0:
        _empty_note(fig.add_subplot(gs[:, :]), "no patches")
    else:
        sm = plt.cm.ScalarMappable(norm=Normalize(0, 1), cmap=red)
        cb = fig.colorbar(sm, ax=all_axes, location="right", shrink=min(0.6, 0.9 / blocks),
                          pad=0.02, aspect=15)
        cb.set_label("positive attribution\n(÷ patch 99th pct |IG|)", fontsize=8)
    unit = f"\npredicted values: {units_label}" if units_label and vals is not None else ""
    fig.suptitle(f"Integrated gradients: {gene}{unit}")
    _save_both(fig, out_png)


# --------------------------------------------------------------------------- confusion
@_styled
def plot_confusion(confusion: pd.DataFrame, out_png: PathLike, normalise: bool = True) -> None:
    """Heat map of a cluster confusion matrix.

    Parameters
    ----------
    confusion
        Counts, rows = measured cluster, columns = predicted cluster.
    out_png
        PNG to write (and the same path with ``.pdf``).
    normalise
        Colour by the share of each measured cluster's spots (rows sum to 1) instead of counts;
        cells are annotated with counts either way.
    """
    cm = confusion.apply(pd.to_numeric, errors="coerce").fillna(0)
    counts = cm.to_numpy(dtype=float)
    nr, nc = counts.shape
    if normalise:
        sums = counts.sum(axis=1, keepdims=True)
        shown = np.divide(counts, sums, out=np.full_like(counts, np.nan), where=sums > 0)
        norm = Normalize(0, 1)
        clabel = "share of measured cluster's spots\n(row-normalised)"
    else:
        shown = counts
        norm = Normalize(0, max(float(counts.max()) if counts.size else 1.0, 1.0))
        clabel = "spots (count)"
    common = [lab for lab in cm.index if lab in cm.columns]
    total = counts.sum()
    acc = sum(float(cm.loc[lab, lab]) for lab in common) / total if total > 0 else float("nan")
    side = float(np.clip(0.5 * max(nr, nc, 1) + 2.6, 4.2, 16))
    fig, ax = plt.subplots(figsize=(side + 1.0, side), layout="constrained")
    if counts.size:
        cmap = _cmap("Blues", bad="#f0f0f0")
        im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, norm=norm, aspect="equal")
        cb = fig.colorbar(im, ax=ax, shrink=0.8)
        cb.set_label(clabel)
        fs = 8 if max(nr, nc) <= 20 else None
        if fs is not None:
            for i in range(nr):
                for j in range(nc):
                    v = shown[i, j]
                    dark = np.isfinite(v) and norm(v) > 0.55
                    txt = f"{int(counts[i, j]):,}"
                    if normalise and max(nr, nc) <= 8 and np.isfinite(v):
                        txt += f"\n{v:.0%}"
                    ax.text(j, i, txt, ha="center", va="center", fontsize=fs,
                            color="white" if dark else "black")
    else:
        _empty_note(ax, "empty confusion matrix")
    ax.set_xticks(np.arange(nc))
    ax.set_xticklabels([str(c) for c in cm.columns], rotation=45 if nc > 6 else 0,
                       ha="right" if nc > 6 else "center")
    ax.set_yticks(np.arange(nr))
    ax.set_yticklabels([str(r) for r in cm.index])
    ax.set_xlabel("predicted cluster")
    ax.set_ylabel("measured cluster")
    for s in ax.spines.values():
        s.set_visible(False)
    acc_txt = f"accuracy {acc:.1%}" if np.isfinite(acc) else "accuracy n/a"
    ax.set_title(f"Cluster confusion ({acc_txt}, {int(total):,} spots)")
    _save_both(fig, out_png)


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
    from stpredict.qc import _sample_id

    def labels(col: str) -> np.ndarray:
        s = adata.obs[col].astype(object) if col in adata.obs else pd.Series(
            [""] * adata.n_obs, dtype=object)
        out = s.fillna("").astype(str).to_numpy()
        out[np.isin(out, ["nan", "None"])] = ""
        return out

    true, pred = labels("cluster_true"), labels("cluster_pred")
    cats = sorted({*true, *pred} - {""}, key=_natural_key)
    colours = _category_colours(cats)
    colours[""] = "#d0d0d0"
    both = (true != "") & (pred != "")
    acc = float(np.mean(true[both] == pred[both])) if both.any() else float("nan")
    sec = _Section(adata)
    w = 4.2
    fig, axes = plt.subplots(1, 2, figsize=(2 * w + 1.6, w * sec.aspect + 0.9),
                             layout="constrained")
    for ax, lab, name in ((axes[0], true, "measured"), (axes[1], pred, "predicted")):
        sec.axes(ax, faded=True, scalebar=(ax is axes[0]))
        if adata.n_obs:
            sec.spots(ax, facecolors=[colours[v] for v in lab], linewidths=0)
        ax.set_title(f"{name} clusters")
    handles = [Line2D([], [], ls="", marker="o", ms=7, color=colours[c], label=str(c))
               for c in cats]
    if ((true == "") | (pred == "")).any():
        handles.append(Line2D([], [], ls="", marker="o", ms=7, color=colours[""],
                              label="unassigned"))
    if handles:
        fig.legend(handles=handles, loc="outside right upper", title="cluster", frameon=False,
                   ncol=1 if len(handles) <= 16 else 2)
    name = title or _sample_id(adata) or "section"
    acc_txt = f"accuracy {acc:.1%}" if np.isfinite(acc) else "accuracy n/a"
    fig.suptitle(f"{name}: clusters ({acc_txt}, {int(both.sum()):,} spots)")
    _save_both(fig, out_png)


# --------------------------------------------------------------------------- loss curves
@_styled
def plot_loss_curves(
    histories: Mapping[str, pd.DataFrame],
    out_png: PathLike,
    ylabel: str = "loss (training objective)",
) -> None:
    """Training (solid) and validation (dashed) loss per fold against epoch.

    Parameters
    ----------
    histories
        Fold name -> history table (``epoch``, ``train_loss``, ``val_loss``; empty or NaN
        validation losses are skipped).
    out_png
        PNG to write (and the same path with ``.pdf``).
    ylabel
        Y-axis label (the loss and its units).

    Notes
    -----
    The y axis is logarithmic when the positive losses span more than a factor of 10. With
    more than 8 folds the fold legend is left out (noted in the title); with 5-8 it is drawn
    outside the axes.
    """
    folds = list(histories)
    nf = len(folds)
    if nf <= 10:
        colours = [plt.get_cmap("tab10")(i) for i in range(nf)]
    else:
        colours = [plt.get_cmap("viridis")(x) for x in np.linspace(0, 0.95, nf)]
    fig, ax = plt.subplots(figsize=(6.8 if 4 < nf <= 8 else 5.8, 4.0), layout="constrained")
    all_loss: list[np.ndarray] = []
    fold_handles = []
    for fold, colour in zip(folds, colours, strict=True):
        h = histories[fold]
        if h is None or not len(h) or "epoch" not in h:
            continue
        ep = pd.to_numeric(h["epoch"], errors="coerce").to_numpy(float)
        drawn = False
        for col, ls in (("train_loss", "-"), ("val_loss", "--")):
            if col not in h:
                continue
            y = pd.to_numeric(h[col], errors="coerce").to_numpy(float)
            ok = np.isfinite(ep) & np.isfinite(y)
            if not ok.any():
                continue
            ax.plot(ep[ok], y[ok], ls=ls, color=colour, lw=1.4,
                    marker="o" if ok.sum() <= 30 else None, ms=3)
            all_loss.append(y[ok])
            drawn = True
        if drawn:
            fold_handles.append(Line2D([], [], color=colour, lw=2, label=str(fold)))
    vals = np.concatenate(all_loss) if all_loss else np.array([])
    posv = vals[vals > 0]
    if posv.size and posv.max() / posv.min() > 10 and posv.size == vals.size:
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
    if not vals.size:
        _empty_note(ax, "no finite losses")
    style = [Line2D([], [], color="black", lw=1.4, ls="-", label="training"),
             Line2D([], [], color="black", lw=1.4, ls="--", label="validation")]
    title = "Training curves"
    if nf > 8:
        ax.legend(handles=style, loc="upper right", frameon=False)
        title += f" ({nf} folds, one colour each)"
    elif nf > 4:
        ax.legend(handles=style + fold_handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  frameon=False, title="fold / split")
    elif fold_handles:
        ax.legend(handles=style + fold_handles, loc="upper right", frameon=False,
                  ncol=1, title="fold / split")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _save_both(fig, out_png)
