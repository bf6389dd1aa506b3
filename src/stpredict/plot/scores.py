"""Score figures: consistency (ST-Net Fig. 2b), AUROC (2c), method scatter (2d), confusion, loss.

Also DeepSpaCE's Fig. 4 (per-gene r by semi-supervised round, :func:`plot_rounds`).

Every ``plot_*`` function writes ``out_png`` and the same path with the suffix ``.pdf``
(atomically, through :func:`stpredict.plot.style.save_figure`) and closes its figure. Missing
values (a gene whose correlation is NaN, a fold without validation loss) are left out of the
panels, never drawn as 0, and never raise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.ticker import (
    MaxNLocator,
)

from stpredict.plot.style import (
    _METHODS,
    PathLike,
    _cmap,
    _empty_note,
    _finite,
    _log_axis,
    _method_colour,
    _method_label,
    _save_both,
    _styled,
)

__all__ = [
    "plot_consistency",
    "plot_auroc_hist",
    "plot_method_scatter",
    "plot_confusion",
    "plot_loss_curves",
    "plot_rounds",
]


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
        Output of :func:`stpredict.evaluate.metrics.summarise` for the CNN (``n_positive``,
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
        ax.bar(
            k, cnn, width=0.85, color=_METHODS["cnn"][1], alpha=0.85, label=f"CNN ({n_genes} genes)"
        )
        from scipy.stats import binom

        null = binom.pmf(k, n_units, 0.5) * n_genes
        ax.plot(
            k,
            null,
            "o-",
            color="black",
            ms=4,
            lw=1.2,
            label=f"null: Binomial({n_units}, 0.5) × {n_genes} genes",
        )
        for i, (name, df) in enumerate((methods or {}).items()):
            if name == "cnn":
                continue
            c = counts(df)
            if c is None:
                continue
            ax.stairs(
                c,
                np.arange(n_units + 2) - 0.5,
                color=_method_colour(name, i),
                lw=1.6,
                label=f"{_method_label(name)} ({int(c.sum())} genes)",
            )
        sig = _pick_target(summary, target)
        if "significant" in sig and n_genes:
            n_sig = int(sig["significant"].fillna(False).astype(bool).sum())
            ax.text(
                0.02,
                0.97,
                f"Holm-adjusted p < 0.05: {n_sig} of {n_genes} genes",
                transform=ax.transAxes,
                va="top",
                ha="left",
                fontsize=8,
            )
        handles, labels = ax.get_legend_handles_labels()
        rank = [
            0 if lab.startswith("CNN") else 2 if lab.startswith("null") else 1 for lab in labels
        ]
        order = sorted(range(len(labels)), key=lambda i: rank[i])  # CNN, baselines, null
        ax.legend(
            [handles[i] for i in order],
            [labels[i] for i in order],
            loc="upper left",
            bbox_to_anchor=(0.0, 0.9),
            frameon=False,
        )
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
        Output of :func:`stpredict.evaluate.metrics.score_units`; rows with ``stratum == "all"`` and the
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
    med = (
        pd.to_numeric(df["auroc"], errors="coerce").groupby(df["gene"]).median()
        if len(df)
        else pd.Series(dtype=float)
    )
    v = _finite(med)
    fig, ax = plt.subplots(figsize=(5.6, 4.0), layout="constrained")
    if v.size:
        ax.hist(
            v,
            bins=np.linspace(0, 1, 41),
            color=_METHODS["cnn"][1],
            alpha=0.85,
            edgecolor="white",
            linewidth=0.5,
        )
        ax.text(
            0.02,
            0.97,
            f"{v.size} genes\nmedian AUROC {np.median(v):.2f}\n> 0.5: {int((v > 0.5).sum())} genes",
            transform=ax.transAxes,
            va="top",
            ha="left",
            fontsize=8,
        )
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
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(3.5 * ncols + 0.3, 3.6 * nrows + 0.3),
        layout="constrained",
        squeeze=False,
    )
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
        ax.text(
            0.03,
            0.97,
            txt,
            transform=ax.transAxes,
            va="top",
            ha="left",
            fontsize=8,
            color=_METHODS["cnn"][1],
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.5},
        )
        ax.set_title(f"CNN vs {label}")
    fig.suptitle(f"Per-gene comparison ({target} targets)")
    _save_both(fig, out_png)
    return counts


# --------------------------------------------------------------------------- IG overlays


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
                    ax.text(
                        j,
                        i,
                        txt,
                        ha="center",
                        va="center",
                        fontsize=fs,
                        color="white" if dark else "black",
                    )
    else:
        _empty_note(ax, "empty confusion matrix")
    ax.set_xticks(np.arange(nc))
    ax.set_xticklabels(
        [str(c) for c in cm.columns],
        rotation=45 if nc > 6 else 0,
        ha="right" if nc > 6 else "center",
    )
    ax.set_yticks(np.arange(nr))
    ax.set_yticklabels([str(r) for r in cm.index])
    ax.set_xlabel("predicted cluster")
    ax.set_ylabel("measured cluster")
    for s in ax.spines.values():
        s.set_visible(False)
    acc_txt = f"accuracy {acc:.1%}" if np.isfinite(acc) else "accuracy n/a"
    ax.set_title(f"Cluster confusion ({acc_txt}, {int(total):,} spots)")
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
            ax.plot(
                ep[ok],
                y[ok],
                ls=ls,
                color=colour,
                lw=1.4,
                marker="o" if ok.sum() <= 30 else None,
                ms=3,
            )
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
    style = [
        Line2D([], [], color="black", lw=1.4, ls="-", label="training"),
        Line2D([], [], color="black", lw=1.4, ls="--", label="validation"),
    ]
    title = "Training curves"
    if nf > 8:
        ax.legend(handles=style, loc="upper right", frameon=False)
        title += f" ({nf} folds, one colour each)"
    elif nf > 4:
        ax.legend(
            handles=style + fold_handles,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
            title="fold / split",
        )
    elif fold_handles:
        ax.legend(
            handles=style + fold_handles,
            loc="upper right",
            frameon=False,
            ncol=1,
            title="fold / split",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _save_both(fig, out_png)


# --------------------------------------------------------------------------- rounds (Fig. 4)
_CHAIN_LABELS = {
    "none": "pseudo-labels",
    "permuted": "permuted pseudo-labels",
    "random": "random pseudo-labels",
    "irrelevant": "irrelevant images",
}


@_styled
def plot_rounds(
    rounds: pd.DataFrame, out_png: PathLike, metric: str = "pearson", title: str = ""
) -> None:
    """Per-gene test correlation by round, one panel per chain (DeepSpaCE Fig. 4).

    Parameters
    ----------
    rounds
        ``rounds.tsv`` (:func:`stpredict.learn.rounds.summarise_rounds`): ``control``, ``round``,
        ``gene``, ``metric``, ``chosen``.
    out_png
        PNG to write (and the same path with ``.pdf``).
    metric
        Column drawn (default ``pearson``).
    title
        Figure title (the experiment).

    Notes
    -----
    Boxes over genes (quartiles, whiskers at 1.5 IQR) with the genes as points (each gene at the
    same small horizontal offset in every round); grey lines join each gene's points across
    rounds; the round chosen on the validation loss is marked with a triangle
    above its box. Genes without a finite value in a round are left out of that round.
    """
    chains = list(dict.fromkeys(rounds["control"].astype(str))) or ["none"]
    fig, axes = plt.subplots(
        1,
        len(chains),
        figsize=(1.2 + 2.9 * len(chains), 3.8),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for ax, control in zip(axes[0], chains, strict=True):
        g = rounds[rounds["control"].astype(str) == control]
        wide = g.pivot_table(index="gene", columns="round", values=metric, aggfunc="first")
        ks = sorted(int(k) for k in wide.columns)
        if not ks or not np.isfinite(wide.to_numpy(dtype=float)).any():
            _empty_note(ax, "no finite correlations")
            continue
        # one horizontal offset per gene, the same in every round: its line meets its points
        offsets = np.linspace(-0.12, 0.12, len(wide)) if len(wide) > 1 else np.zeros(len(wide))
        values = wide.reindex(columns=ks).to_numpy(dtype=float)
        for off, y in zip(offsets, values, strict=True):
            ok = np.isfinite(y)
            x = np.asarray(ks, dtype=float)[ok] + off
            ax.plot(x, y[ok], color="#9e9e9e", lw=0.7, alpha=0.7, zorder=1)
        data = [_finite(wide[k]) for k in ks]
        filled = [(k, d) for k, d in zip(ks, data, strict=True) if len(d)]
        ax.boxplot(
            [d for _, d in filled],
            positions=[k for k, _ in filled],
            widths=0.5,
            showfliers=False,
            patch_artist=True,
            boxprops={"facecolor": "#cfe2f3", "alpha": 0.8},
            medianprops={"color": "black"},
            zorder=2,
        )
        for j, k in enumerate(ks):
            ok = np.isfinite(values[:, j])
            ax.scatter(k + offsets[ok], values[ok, j], s=9, color="#1f4e79", zorder=3)
        chosen = sorted({int(k) for k in g.loc[g["chosen"].astype(bool), "round"]})
        top = np.nanmax(wide.to_numpy(dtype=float))
        for k in chosen:
            ax.scatter([k], [top + 0.05], marker="v", s=40, color="#c00000", zorder=4)
        ax.set_xticks(ks, ["T" if k == 0 else str(k) for k in ks])
        ax.set_xlabel("round (T = teacher)")
        ax.set_title(_CHAIN_LABELS.get(control, control))
    axes[0][0].set_ylabel(f"{metric} r, test spots (per gene)")
    handles = [
        Line2D([], [], color="#9e9e9e", lw=0.8, label="one gene"),
        Line2D([], [], marker="v", ls="", color="#c00000", label="chosen on validation"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    _save_both(fig, out_png)
