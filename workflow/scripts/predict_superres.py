from pathlib import Path

import torch

from stpredict.learn.superres import predict_superres
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    models = {Path(p).parent.name: p for p in snakemake.input.models}
    out = predict_superres(
        snakemake.input.predictions,
        snakemake.input.section,
        snakemake.input.grid,
        models,
        snakemake.output.h5ad,
        experiment=snakemake.wildcards.experiment,
        grid=snakemake.params.grid,
        tta=int(snakemake.params.tta),
        precision=str(snakemake.params.precision),
        whiteness=bool(snakemake.params.whiteness),
    )
    log.info("%s: %d points x %d genes", snakemake.wildcards.sample, out.n_obs, out.n_vars)
