from pathlib import Path

import pandas as pd

from stpredict.evaluate.metrics import confusion_table, score_cluster_units, scored_spots
from stpredict.io import read_h5ad, read_table, write_table
from stpredict.plot.maps import plot_cluster_maps
from stpredict.plot.scores import plot_confusion, plot_loss_curves
from stpredict.workflow import script_logging, write_report_copies

with script_logging(snakemake.log[0]) as log:
    name = snakemake.wildcards.experiment
    adatas = [scored_spots(read_h5ad(p, images=False)) for p in snakemake.input.predictions]
    per_class, overview = score_cluster_units(adatas, unit=snakemake.params.unit)
    overview.insert(0, "experiment", name)
    true = pd.concat([a.obs["cluster_true"].astype(str) for a in adatas]).to_numpy()
    pred = pd.concat([a.obs["cluster_pred"].astype(str) for a in adatas]).to_numpy()
    classes = [str(c) for c in adatas[0].uns["stpredict"]["classes"]]
    confusion = confusion_table(true, pred, classes)
    write_table(per_class, snakemake.output.per_class)
    write_table(overview, snakemake.output.overview)
    write_table(confusion.rename_axis("measured").reset_index(), snakemake.output.confusion)
    plot_confusion(confusion, snakemake.output.confusion_png)
    section = read_h5ad(snakemake.input.section)
    first = adatas[0]
    first.uns["spatial"] = section.uns["spatial"]
    first.uns["stpredict"] = {**first.uns["stpredict"], "mpp": section.uns["stpredict"]["mpp"]}
    plot_cluster_maps(first, snakemake.output.maps_png)
    histories = {Path(p).parent.name: read_table(p) for p in snakemake.input.histories}
    plot_loss_curves(histories, snakemake.output.loss_png, ylabel="cross-entropy loss")
    pooled = overview[overview["unit"] == "all"].iloc[0]
    log.info(
        "%s: accuracy %.3f (chance %.3f), macro F1 %.3f, kappa %.3f",
        name,
        pooled["accuracy"],
        pooled["chance_accuracy"],
        pooled["macro_f1"],
        pooled["kappa"],
    )
    write_report_copies(snakemake.output)
