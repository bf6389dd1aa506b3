"""Score figures (stpredict.plot.scores): PNG and PDF written, NaN genes left out, never raised on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stpredict.plot.scores import (
    plot_auroc_hist,
    plot_confusion,
    plot_consistency,
    plot_loss_curves,
    plot_method_scatter,
    plot_rounds,
)
from tests.unit.plot.figure_inputs import (
    check_outputs,
    comparison_table,
    per_gene_table,
)


def test_consistency_plot_leaves_genes_without_r_out(tmp_path):
    from stpredict.evaluate.metrics import summarise

    summary = summarise(per_gene_table())
    assert summary["median_pearson"].isna().any()  # the NaN gene is in the input
    comp = comparison_table()
    png = tmp_path / "consistency.png"
    plot_consistency(
        summary,
        8,
        png,
        methods={
            "labels": summary.assign(n_positive=summary["n_positive"] // 2),
            "mean": comp[comp["method"] == "mean"],
        },
    )
    check_outputs(png)


def test_consistency_plot_of_only_undefined_genes_is_still_drawn(tmp_path):
    summary = pd.DataFrame(
        {
            "target": "raw",
            "gene": ["A", "B"],
            "median_pearson": np.nan,
            "n_units": 0,
            "n_positive": 0,
        }
    )
    png = tmp_path / "consistency_nan.png"
    plot_consistency(summary, 5, png)
    check_outputs(png)


def test_auroc_histogram_with_and_without_finite_values(tmp_path):
    png = tmp_path / "auroc.png"
    plot_auroc_hist(per_gene_table(), png)
    check_outputs(png)
    nan_only = per_gene_table(n_genes=2).assign(auroc=np.nan)
    png2 = tmp_path / "auroc_nan.png"
    plot_auroc_hist(nan_only, png2)
    check_outputs(png2)


def test_method_scatter_counts_where_the_cnn_beats_each_baseline_by_its_metric(tmp_path):
    png = tmp_path / "methods.png"
    counts = plot_method_scatter(comparison_table(), png, units_label="log1p")
    check_outputs(png)
    # labels (r): A 0.30>0.10, B 0.10<0.20, C 0.20>0.05, D CNN NaN -> 2 of 3
    # mean (RMSE, lower is better): A .50<.60, B .60>.55, C .40<.50, D .70<.80 -> 3 of 4
    # neighbours (r): A 0.30<0.40, B 0.10>0.05, C NaN -> 1 of 2
    assert counts == {"mean": (3, 4), "labels": (2, 3), "neighbours": (1, 2)}


def test_method_scatter_refuses_a_table_without_cnn_rows(tmp_path):
    comp = comparison_table()
    with pytest.raises(ValueError, match="cnn"):
        plot_method_scatter(comp[comp["method"] != "cnn"], tmp_path / "m.png")
    only_cnn = comp[comp["method"] == "cnn"]
    assert plot_method_scatter(only_cnn, tmp_path / "cnn_only.png") == {}
    check_outputs(tmp_path / "cnn_only.png")


def test_confusion_matrix_with_an_empty_class_normalised_or_not(tmp_path):
    labels = ["C0", "C1", "C2"]
    cm = pd.DataFrame([[10, 2, 0], [0, 0, 0], [1, 3, 20]], index=labels, columns=labels)
    for normalise in (True, False):
        png = tmp_path / f"confusion_{normalise}.png"
        plot_confusion(cm, png, normalise=normalise)
        check_outputs(png)


def test_loss_curves_of_folds_without_validation_or_epochs_and_of_many_folds(tmp_path):
    e = np.arange(1, 11)
    h = pd.DataFrame(
        {
            "epoch": e,
            "train_loss": 10.0 / e,
            "val_loss": 12.0 / e,
            "val_pearson_mean": np.nan,
            "val_accuracy": np.nan,
            "images_per_s": 100.0,
            "seconds": 1.0,
            "lr": 1e-4,
        }
    )
    few = {"fold0": h, "fold1": h.assign(val_loss=np.nan), "fold2": h.iloc[:0]}
    png = tmp_path / "loss.png"
    plot_loss_curves(few, png)
    check_outputs(png)
    many = {f"fold{i}": h.assign(train_loss=h["train_loss"] * (1 + i / 10)) for i in range(12)}
    png2 = tmp_path / "loss_many.png"
    plot_loss_curves(many, png2)
    check_outputs(png2)


def test_rounds_figure_one_panel_per_chain_with_nan_genes_and_empty_rounds(tmp_path):
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    rows = []
    for control in ("none", "random"):
        for k in range(3):
            for g in range(5):
                r = np.nan if (g == 0 and k == 1) else rng.uniform(0, 0.8)
                rows.append({"control": control, "round": k, "gene": f"g{g}", "pearson": r,
                             "chosen": k == (2 if control == "none" else 0)})  # fmt: skip
    table = pd.DataFrame(rows)
    png = tmp_path / "rounds.png"
    drawn = {}
    orig = plt.Figure.savefig

    def spy(self, *a, **k):
        drawn["axes"] = len(self.axes)
        return orig(self, *a, **k)

    plt.Figure.savefig = spy
    try:
        plot_rounds(table, png, title="demo")
    finally:
        plt.Figure.savefig = orig
    check_outputs(png)
    assert drawn["axes"] == 2
    empty = table.assign(pearson=np.nan)
    plot_rounds(empty, tmp_path / "empty.png")
    check_outputs(tmp_path / "empty.png")


def test_rounds_figure_gene_lines_meet_the_genes_points(tmp_path, monkeypatch):
    import stpredict.plot.scores as mod

    rng = np.random.default_rng(1)
    rows = [
        {"control": "none", "round": k, "gene": f"g{g}", "pearson": rng.uniform(0, 0.8),
         "chosen": k == 0}
        for k in range(3)
        for g in range(6)
    ]  # fmt: skip
    figs = []
    real = mod._save_both
    monkeypatch.setattr(mod, "_save_both", lambda f, o, **kw: (figs.append(f), real(f, o, **kw)))
    plot_rounds(pd.DataFrame(rows), tmp_path / "r.png")
    ax = figs[0].axes[0]
    points = {tuple(np.round(p, 9)) for c in ax.collections for p in c.get_offsets()}
    lines = [ln for ln in ax.get_lines() if ln.get_color() == "#9e9e9e"]
    assert len(lines) == 6
    for ln in lines:  # every vertex of a gene's line is one of the drawn points
        for xy in ln.get_xydata():
            assert tuple(np.round(xy, 9)) in points
