import torch

from stpredict.learn.folds import fold_data, predict_fold, read_manifest
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    sections, stores = fold_data(snakemake.input.qc, snakemake.input.stores)
    manifest = read_manifest(snakemake.input.splits)
    name, fold = snakemake.wildcards.experiment, snakemake.wildcards.fold
    out = predict_fold(
        snakemake.params.experiment,
        name,
        fold,
        manifest,
        sections,
        stores,
        snakemake.input.model,
        snakemake.input.fitted,
        snakemake.output.h5ad,
    )
    log.info("fold %s: %d test spots x %d outputs", fold, out.n_obs, out.n_vars)
