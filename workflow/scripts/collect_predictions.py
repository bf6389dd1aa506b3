from stpredict.learn.folds import cluster_map_labels, collect_predictions
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]):
    maps = list(snakemake.input.cluster_map)
    collect_predictions(
        snakemake.input.folds,
        snakemake.wildcards.sample,
        snakemake.output.h5ad,
        section=snakemake.input.section,
        cluster_labels=cluster_map_labels(maps[0] if maps else None),
    )
