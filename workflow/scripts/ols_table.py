from pathlib import Path

from stpredict.evaluate.metrics import scored_spots
from stpredict.evaluate.ols import ols_inputs, ols_table
from stpredict.io import read_h5ad, read_table, write_table
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    adatas = [scored_spots(read_h5ad(p, images=False)) for p in snakemake.input.predictions]
    tables = {
        Path(p).parent.name: read_table(p, dtype={"id": str}) for p in snakemake.input.patches
    }
    measured, predicted, covariates = ols_inputs(adatas, tables)
    # per outer fold (DeepSpaCE reported the first fold's test spots), then all folds pooled ("all")
    unit = "fold" if covariates["fold"].nunique() > 1 else None
    table = ols_table(
        measured, predicted, covariates, predictors=snakemake.params.predictors, unit=unit
    )
    log.info(
        "%s: OLS of %d genes x %d predictors over %d spots",
        snakemake.wildcards.experiment,
        table["gene"].nunique(),
        table["predictor"].nunique(),
        len(measured),
    )
    write_table(table, snakemake.output.tsv)
