from stpredict.learn.folds import collect_predictions
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]):
    collect_predictions(snakemake.input.folds, snakemake.wildcards.sample, snakemake.output.h5ad)
