"""IHC figures: per-spot IHC measures against expression (scatter) and side-by-side maps.

Every ``plot_*`` function writes ``out_png`` and the same path with the suffix ``.pdf``
(atomically) and closes its figure. Both IHC measures grow with the protein (``rgb_darkness`` =
255 - the paper's mean RGB, ``dab_od``), so positive correlations read "more protein, more RNA".
Spots without a value are left out of the panels, never drawn as 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from scipy import ndimage as ndi

from stpredict.ihc.correlate import scored_spots
from stpredict.plot.maps import _mark_qc_failed, _Section
from stpredict.plot.style import PathLike, _cmap, _empty_note, _save_both, _styled

__all__ = ["plot_ihc_scatter", "plot_ihc_maps", "ihc_on_background"]

_MEASURE_LABEL = {
    "rgb_darkness": ("darkness", "IHC darkness (255 - mean RGB, paper's square)"),
    "dab_od": ("dab_od", "IHC DAB optical density (spot mean)"),
}


#: short names of the IHC measures in titles
_MEASURE_SHORT = {"rgb_darkness": "darkness (255 - mean RGB)", "dab_od": "DAB OD"}


def _stats_text(summary: pd.DataFrame, measure: str, versus: str, name: bool = False) -> str:
    """Pearson and Spearman with CIs; ``name``: prefixed by the IHC measure they correlate with."""
    head = [f"vs IHC {_MEASURE_SHORT.get(measure, measure)}:"] if name else []
    parts: list[str] = []
    for method, symbol in (("pearson", "r"), ("spearman", "ρ")):
        row = summary[
            (summary["measure"] == measure)
            & (summary["versus"] == versus)
            & (summary["method"] == method)
        ]
        if len(row) and np.isfinite(row["r"].iloc[0]):
            r = row.iloc[0]
            parts.append(f"{symbol} = {r['r']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]")
    return "\n".join(head + (parts or ["r = n/a"]))


@_styled
def plot_ihc_scatter(
    spots: pd.DataFrame, summary: pd.DataFrame, gene: str, units_label: str, out_png: PathLike
) -> None:
    """IHC measures (rows) against predicted and measured expression (columns), one dot per spot.

    Parameters
    ----------
    spots
        The per-spot table (``results/ihc/{sample}.tsv``).
    summary
        The correlation table (``results/ihc/{sample}_summary.tsv``): r and bootstrap CIs in
        the panel titles.
    gene
        The stained gene.
    units_label
        Units of the expression values (``vocab.units_label``).
    out_png
        PNG to write (and the same path with ``.pdf``).
    """
    use = scored_spots(spots)
    level = float(summary["ci_level"].iloc[0]) if "ci_level" in summary and len(summary) else 0.95
    fig, axes = plt.subplots(2, 2, figsize=(7.2, 6.6), layout="constrained", squeeze=False)
    for i, (measure, (col, ylabel)) in enumerate(_MEASURE_LABEL.items()):
        for j, versus in enumerate(("predicted", "measured")):
            ax = axes[i, j]
            if not len(use):
                _empty_note(ax, "no spot has both values")
                continue
            ax.scatter(use[versus], use[col], s=4, alpha=0.35, color="#1f4e99", linewidths=0)
            ax.set_xlabel(f"{gene} {versus}\n{units_label}")
            ax.set_ylabel(ylabel if j == 0 else "")
            ax.set_title(_stats_text(summary, measure, versus), fontsize=8)
    fig.suptitle(
        f"IHC of {gene} vs expression, {len(use)} spots ({level:.0%} bootstrap CIs)", fontsize=10
    )
    _save_both(fig, out_png)


def ihc_on_background(
    ihc: Any, matrix: np.ndarray, shape: tuple[int, int], scale: float
) -> np.ndarray:
    """Resample the IHC image into the frame of a section's background image.

    Parameters
    ----------
    ihc
        Open :class:`~stpredict.ingest.images.SlideImage` of the IHC.
    matrix
        H&E full-res px -> IHC px transform.
    shape
        ``(h, w)`` of the background image.
    scale
        Background px per H&E full-resolution px.
    """
    h, w = ihc.shape
    thumb, _ = ihc.thumbnail(max(16, int(round(max(h, w) * min(1.0, 1.5 * scale)))))
    tx, ty = thumb.shape[1] / w, thumb.shape[0] / h
    v, u = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    hx, hy = (u + 0.5) / scale - 0.5, (v + 0.5) / scale - 0.5
    ix = matrix[0, 0] * hx + matrix[0, 1] * hy + matrix[0, 2]
    iy = matrix[1, 0] * hx + matrix[1, 1] * hy + matrix[1, 2]
    coords = [(iy + 0.5) * ty - 0.5, (ix + 0.5) * tx - 0.5]
    out = np.stack(
        [ndi.map_coordinates(thumb[..., c], coords, order=1, cval=255.0) for c in range(3)],
        axis=-1,
    )
    return np.clip(out, 0, 255).astype(np.uint8)


def _value_panel(
    fig: Any, ax: Any, sec: _Section, values: np.ndarray, norm: Normalize, label: str, cmap: str
) -> None:
    sec.axes(ax, faded=True)
    finite = np.isfinite(values)
    if not finite.any():
        _empty_note(ax, "no values")
        return
    cm = _cmap(cmap)
    coll = sec.spots(ax, mask=finite, cmap=cm, norm=norm, linewidths=0)
    coll.set_array(values[finite])
    cb = fig.colorbar(coll, ax=ax, location="bottom", shrink=0.8, pad=0.02, extend="both")
    cb.set_label(label, fontsize=8)


def _limits(values: np.ndarray) -> Normalize:
    fin = values[np.isfinite(values)]
    lo, hi = np.percentile(fin, [1, 99]) if fin.size else (0.0, 1.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return Normalize(vmin=float(lo), vmax=float(hi))


@_styled
def plot_ihc_maps(
    section: Any,
    spots: pd.DataFrame,
    summary: pd.DataFrame,
    registration: Mapping[str, Any],
    ihc_path: str,
    gene: str,
    units_label: str,
    out_png: PathLike,
) -> None:
    """Side-by-side maps: H&E, the registered IHC, both IHC measures, predicted and measured.

    Top row: the H&E, the IHC resampled into the H&E frame by the fitted transform (a visual
    check of the registration), the DAB optical density per spot. Bottom row: the paper's
    darkness per spot, the predicted and the measured expression (one colour scale for both:
    1st-99th percentile of the measured values).

    Parameters
    ----------
    section
        The section AnnData (background image, spot positions).
    spots, summary, registration
        The per-spot table, the correlation table and the registration record.
    ihc_path
        The IHC image.
    gene, units_label
        The stained gene and the units of the expression values.
    out_png
        PNG to write (and the same path with ``.pdf``).
    """
    from stpredict.ihc.register import open_ihc
    from stpredict.ingest.section import sample_id_of
    from stpredict.plot.style import section_background

    by_id = spots.set_index("spot_id").reindex(section.obs_names.astype(str))
    sec = _Section(section)
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 7.4 * sec.aspect), layout="constrained")
    ax_he, ax_ihc, ax_dab = axes[0]
    ax_dark, ax_pred, ax_meas = axes[1]
    sec.axes(ax_he, scalebar=True)
    ax_he.set_title("H&E")
    img, scale = section_background(section)
    sec.axes(ax_ihc)
    if img is not None:
        with open_ihc(ihc_path, sample_id_of(section)) as ihc:
            warped = ihc_on_background(
                ihc, np.asarray(registration["matrix"], dtype=float), img.shape[:2], scale
            )
        ax_ihc.images[-1].set_data(warped)  # the IHC in place of the H&E background
    else:
        _empty_note(ax_ihc, "no background image")
    used = float(registration["refined_residual_px"])
    ax_ihc.set_title(
        f"IHC registered (match residual {used:.1f} px; "
        f"RANSAC fit {float(registration['ransac_residual_px']):.1f} px)"
    )
    dab = by_id["dab_od"].to_numpy(float)
    dark = by_id["darkness"].to_numpy(float)
    _value_panel(fig, ax_dab, sec, dab, _limits(dab), "DAB OD", "magma_r")
    ax_dab.set_title(f"{gene} IHC: DAB OD")
    _value_panel(fig, ax_dark, sec, dark, _limits(dark), "255 - mean RGB", "magma_r")
    ax_dark.set_title(f"{gene} IHC: darkness (paper)")
    measured = by_id["measured"].to_numpy(float)
    predicted = by_id["predicted"].to_numpy(float)
    norm = _limits(measured if np.isfinite(measured).any() else predicted)
    _value_panel(fig, ax_pred, sec, predicted, norm, units_label, "viridis")
    ax_pred.set_title(f"{gene}: predicted\n" + _stats_text(summary, "dab_od", "predicted", True))
    _value_panel(fig, ax_meas, sec, measured, norm, units_label, "viridis")
    ax_meas.set_title(f"{gene}: measured\n" + _stats_text(summary, "dab_od", "measured", True))
    failed = ~by_id["keep"].fillna(True).astype(bool).to_numpy() if "keep" in by_id else None
    if failed is not None:
        for ax in (ax_dab, ax_dark, ax_pred, ax_meas):
            _mark_qc_failed(sec, ax, failed=failed, label="not scored")
        _mark_qc_failed(sec, ax_he, legend=True, failed=failed, label="not scored")
    _save_both(fig, out_png)
