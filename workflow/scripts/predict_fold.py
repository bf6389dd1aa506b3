from pathlib import Path

import torch

from stpredict.experiments import load_sections, predict_fold, read_manifest
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    samples = [Path(p).stem for p in snakemake.input.qc]
    out = predict_fold(
        snakemake.params.experiment,
        snakemake.wildcards.experiment,
        snakemake.wildcards.fold,
        read_manifest(snakemake.input.splits),
        load_sections(dict(zip(samples, snakemake.input.qc, strict=True))),
        dict(zip(samples, snakemake.input.stores, strict=True)),
        Path(snakemake.input.model).parent,
        snakemake.output.h5ad,
    )
    log.info("fold %s: %d test spots x %d outputs", snakemake.wildcards.fold, out.n_obs, out.n_vars)
