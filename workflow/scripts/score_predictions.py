from stpredict.errors import ConfigError
from stpredict.evaluate.metrics import (
    score_experiment,
    score_folds,
    scored_spots,
    summarise_strata,
    table1,
)
from stpredict.io import read_h5ad, write_table
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    adatas = [scored_spots(read_h5ad(p, images=False)) for p in snakemake.input.predictions]
    if any(a.uns["stpredict"].get("task") == "clusters" for a in adatas):
        raise ConfigError(
            "score_predictions scores regression experiments; this one predicts clusters",
            fix="request metrics only for regression experiments",
        )
    alpha = float(snakemake.params.alpha)
    per_gene, summary = score_experiment(
        adatas, snakemake.params.platforms, unit=snakemake.params.unit, alpha=alpha
    )
    log.info(
        "%s: %d genes x %d units scored",
        snakemake.wildcards.experiment,
        per_gene["gene"].nunique(),
        per_gene["unit"].nunique(),
    )
    write_table(per_gene, snakemake.output.per_gene)
    write_table(summary, snakemake.output.summary)
    write_table(table1(summary), snakemake.output.table1)
    write_table(summarise_strata(per_gene, alpha=alpha), snakemake.output.strata)
    per_fold, folds = score_folds(adatas, snakemake.params.platforms)
    write_table(per_fold, snakemake.output.per_fold)
    write_table(folds, snakemake.output.folds)
