import torch

from stpredict.learn.folds import fold_data, read_manifest, train_fold
from stpredict.learn.train import loader_workers
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    sections, stores = fold_data(snakemake.input.qc, snakemake.input.stores)
    result = train_fold(
        snakemake.params.experiment,
        snakemake.wildcards.experiment,
        snakemake.wildcards.fold,
        read_manifest(snakemake.input.splits),
        sections,
        stores,
        {k: snakemake.output[k] for k in ("model", "history", "fitted")},
        inner_histories=snakemake.input.get("inner", []),
        num_workers=loader_workers(snakemake.threads),
    )
    log.info("fold %s done: %s", snakemake.wildcards.fold, result)
