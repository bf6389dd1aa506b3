from pathlib import Path

import torch

from stpredict.experiments import load_sections, read_manifest, train_fold
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    samples = [Path(p).stem for p in snakemake.input.qc]
    result = train_fold(
        snakemake.params.experiment,
        snakemake.wildcards.experiment,
        snakemake.wildcards.fold,
        read_manifest(snakemake.input.splits),
        load_sections(dict(zip(samples, snakemake.input.qc, strict=True))),
        dict(zip(samples, snakemake.input.stores, strict=True)),
        Path(snakemake.output.model).parent,
        inner_histories=snakemake.input.get("inner", []),
    )
    log.info("fold %s done: %s", snakemake.wildcards.fold, result)
