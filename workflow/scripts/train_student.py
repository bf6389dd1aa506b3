import torch

from stpredict.learn.folds import fold_data, read_manifest
from stpredict.learn.rounds import train_student
from stpredict.learn.train import loader_workers
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    inp = snakemake.input
    sections, stores = fold_data(inp.qc, inp.stores)
    pool_stores = list(inp.stores) + list(inp.pool_stores) + list(inp.interspot_stores)
    pool_stores += list(inp.wsi_stores)
    pool_stores += [p for p in (inp.get("tiles"), inp.get("irrelevant_tiles")) if p]
    result = train_student(
        snakemake.params.experiment,
        snakemake.wildcards.experiment,
        snakemake.wildcards.fold,
        int(snakemake.wildcards.round),
        snakemake.wildcards.control,
        read_manifest(inp.splits),
        sections,
        stores,
        inp.pseudo,
        pool_stores,
        inp.teacher_model,
        inp.fitted,
        {k: snakemake.output[k] for k in ("model", "history", "fitted", "predictions")},
        num_workers=loader_workers(snakemake.threads),
    )
    log.info("student done: %s", result)
