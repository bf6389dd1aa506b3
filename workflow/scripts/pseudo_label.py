from pathlib import Path

import torch

from stpredict.learn.folds import fold_data, read_manifest
from stpredict.learn.rounds import pseudo_label
from stpredict.learn.train import loader_workers
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    inp = snakemake.input
    sections, stores = fold_data(inp.qc, inp.stores)
    pool_inputs = {
        "stores": stores,
        "pool_qc": {Path(p).stem: p for p in inp.pool_qc},
        "pool_stores": {Path(p).parent.name: p for p in inp.pool_stores},
        "interspot_stores": {Path(p).parent.name: p for p in inp.interspot_stores},
        "wsi_stores": {Path(p).parent.name: p for p in inp.wsi_stores},
        "tiles": inp.get("tiles"),
        "irrelevant_tiles": inp.get("irrelevant_tiles"),
    }
    out = pseudo_label(
        snakemake.params.experiment,
        snakemake.wildcards.experiment,
        snakemake.wildcards.fold,
        int(snakemake.wildcards.round),
        snakemake.wildcards.control,
        read_manifest(inp.splits),
        sections,
        pool_inputs,
        inp.teacher_model,
        inp.teacher_fitted,
        inp.fitted,
        snakemake.output.tsv,
        num_workers=loader_workers(snakemake.threads),
        out_pool=snakemake.output.pool,
    )
    log.info("%d pseudo-labelled patches", len(out))
