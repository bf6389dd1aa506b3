"""Latent-space figures: UMAP of the embeddings (ST-Net Fig. 4) and integrated-gradients overlays (Fig. 3).

Every ``plot_*`` function writes ``out_png`` and the same path with the suffix ``.pdf``
(atomically, through :func:`stpredict.plot.style.save_figure`) and closes its figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import ConnectionPatch

from stpredict.plot.style import _ANNOTATION, PathLike, _empty_note, _save_both, _styled
from stpredict.vocab import ANNOTATION_LABELS, NORMAL, TUMOR, UNANNOTATED

__all__ = ["plot_umap", "plot_ig_overlays"]


def _draw_insets(
    fig: Any,
    gs: Any,
    ax: Any,
    patches: np.ndarray,
    pts: np.ndarray,
    valid: np.ndarray,
    lab_ex: np.ndarray,
    kinds: list[str],
) -> None:
    """Draw example patches beside the UMAP, framed in their annotation's colour, with arrows.

    ``pts``: the examples' UMAP positions (``valid``: those that index a point); ``lab_ex``:
    their annotations; ``kinds``: captions.
    """
    ex_n = len(pts)
    # two leftmost examples on the left, the others on the right; top/bottom by y
    xs = np.where(valid, pts[:, 0], np.inf)
    by_x = np.argsort(xs, kind="stable")
    n_left = min(2, ex_n // 2 if ex_n > 1 else 1)
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
        colour = _ANNOTATION.get(lab_ex[j] if valid[j] else "", _ANNOTATION[""])[1]
        for side in axi.spines.values():
            side.set_visible(True)
            side.set_edgecolor(colour)
            side.set_linewidth(2.0)
        axi.set_title(kinds[j], fontsize=9)
        axi.set_aspect("equal")
        if valid[j]:
            xa = 1.0 if col == 0 else 0.0
            con = ConnectionPatch(
                xyA=(xa, 0.5),
                coordsA=axi.transAxes,
                xyB=tuple(pts[j]),
                coordsB=ax.transData,
                color="black",
                lw=0.8,
                alpha=0.7,
                arrowstyle="-|>",
                mutation_scale=8,
                shrinkB=4,
            )
            fig.add_artist(con)


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
    lab = np.asarray(
        [
            "" if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v)
            for v in np.asarray(labels, dtype=object).ravel()
        ],
        dtype=object,
    )
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
    for key in (UNANNOTATED, NORMAL, TUMOR):  # unannotated underneath
        name, colour = _ANNOTATION[key]
        mask = lab == key
        if key == "":
            mask = ~np.isin(lab, ANNOTATION_LABELS)
        if mask.any():
            ax.scatter(
                xy[mask, 0], xy[mask, 1], s=size, c=colour, linewidths=0, alpha=0.7, rasterized=True
            )
            handles.append(
                Line2D(
                    [],
                    [],
                    ls="",
                    marker="o",
                    color=colour,
                    ms=6,
                    label=f"{name} ({int(mask.sum()):,})",
                )
            )
    if not n:
        _empty_note(ax, "no points")
    ax.set_xlabel("UMAP 1 (a.u.)")
    ax.set_ylabel("UMAP 2 (a.u.)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title)
    if handles:
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.1),
            ncol=len(handles),
            frameon=False,
            title="annotation",
        )
    if ex is not None and len(ex):
        idx = pd.to_numeric(ex["index"], errors="coerce").fillna(-1).astype(int).to_numpy()
        valid = (idx >= 0) & (idx < n)
        pts = np.full((len(ex), 2), np.nan)
        pts[valid] = xy[idx[valid]]
        ax.scatter(
            pts[valid, 0],
            pts[valid, 1],
            s=60,
            facecolors="none",
            edgecolors="black",
            linewidths=1.4,
            zorder=5,
        )
        kinds = ex["kind"].astype(str).tolist() if "kind" in ex else [""] * len(ex)
        if has_insets:
            lab_ex = np.asarray(
                [lab[i] if ok else "" for i, ok in zip(idx, valid, strict=True)], dtype=object
            )
            _draw_insets(fig, gs, ax, patches, pts, valid, lab_ex, kinds)
        else:
            for j in np.flatnonzero(valid):
                ax.annotate(
                    kinds[j],
                    pts[j],
                    xytext=(6, 6),
                    textcoords="offset points",
                    fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
                )
    _save_both(fig, out_png)


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
        cb = fig.colorbar(
            sm, ax=all_axes, location="right", shrink=min(0.6, 0.9 / blocks), pad=0.02, aspect=15
        )
        cb.set_label("positive attribution\n(÷ patch 99th pct |IG|)", fontsize=8)
    unit = f"\npredicted values: {units_label}" if units_label and vals is not None else ""
    fig.suptitle(f"Integrated gradients: {gene}{unit}")
    _save_both(fig, out_png)
