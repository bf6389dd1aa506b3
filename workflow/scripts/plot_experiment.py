from pathlib import Path

import numpy as np

from stpredict.io import read_h5ad, read_table
from stpredict.plot.maps import plot_expression_maps
from stpredict.plot.scores import (
    plot_auroc_hist,
    plot_consistency,
    plot_loss_curves,
    plot_method_scatter,
)
from stpredict.vocab import units_label
from stpredict.workflow import script_logging, write_report_copies


def read(path):
    return read_table(path, dtype={"gene": str, "unit": str})


with script_logging(snakemake.log[0]) as log:
    name, unit = snakemake.wildcards.experiment, snakemake.params.unit
    cfg = snakemake.params.maps
    summary, per_gene = read(snakemake.input.summary), read(snakemake.input.per_gene)
    comparison = read(snakemake.input.comparison)
    n_units = per_gene["unit"].nunique()
    unit_name = "patients" if unit == "patient_id" else "sections"
    # the constant training mean has no meaningful correlation: not in the consistency plot
    others = comparison[~comparison["method"].isin(["cnn", "mean"])]
    methods = {m: g for m, g in others.groupby("method")}
    plot_consistency(
        summary, n_units, snakemake.output.consistency, methods=methods, unit_name=unit_name
    )
    plot_auroc_hist(per_gene, snakemake.output.auroc)
    adatas = {Path(p).stem: p for p in snakemake.input.predictions}
    first = read_h5ad(next(iter(adatas.values())), images=False)
    units = units_label(first.uns["stpredict"]["target_transform"]["name"])
    counts = plot_method_scatter(comparison, snakemake.output.methods, units_label=units)
    for m, (a, b) in counts.items():
        log.info("%s: CNN better than %s for %d of %d genes", name, m, a, b)

    # maps: the chosen genes (else the 2 best by median r) in the best and the median section
    raw = summary[summary["target"] == "raw"].dropna(subset=["median_pearson"])
    genes = (
        list(cfg["genes"])
        or raw.sort_values("median_pearson", ascending=False)["gene"].head(2).tolist()
    )
    pg = per_gene[
        (per_gene["target"] == "raw")
        & (per_gene["stratum"] == "all")
        & per_gene["gene"].isin(genes)
    ]
    sample_unit = {s: str(read_h5ad(p, images=False).obs[unit].iloc[0]) for s, p in adatas.items()}
    score = {s: float(pg.loc[pg["unit"] == u, "pearson"].mean()) for s, u in sample_unit.items()}
    ranked = sorted(score, key=lambda s: (-np.nan_to_num(score[s], nan=-2), s))
    n = min(int(cfg["n_sections"]), len(ranked))
    picks = [ranked[0]] + [
        ranked[int(round(q * (len(ranked) - 1)))] for q in np.linspace(0.5, 1, n)[: n - 1]
    ]
    picks = list(dict.fromkeys(picks))
    sections = {Path(p).stem: p for p in snakemake.input.sections}
    shown, titles = [], []
    for s in picks:
        a = read_h5ad(adatas[s], images=False)  # the section (below) gives the images
        sec = read_h5ad(sections[s])
        a.uns["spatial"] = sec.uns["spatial"]
        a.uns["stpredict"] = {**a.uns["stpredict"], "mpp": sec.uns["stpredict"]["mpp"]}
        shown.append(a)
        titles.append(f"{s} ({unit_name[:-1]} {sample_unit[s]})")
    plot_expression_maps(shown, genes, units, snakemake.output.maps, titles=titles)
    histories = {Path(p).parent.name: read_table(p) for p in snakemake.input.histories}
    plot_loss_curves(histories, snakemake.output.loss)
    log.info("%s: figures written (maps of %s in %s)", name, ", ".join(genes), ", ".join(picks))
    write_report_copies(snakemake.output)
