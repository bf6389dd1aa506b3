from stpredict.learn.folds import collect_predictions
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]):
    for sample, out in zip(snakemake.params.samples, snakemake.output.h5ad, strict=True):
        collect_predictions(snakemake.input.folds, sample, out)
