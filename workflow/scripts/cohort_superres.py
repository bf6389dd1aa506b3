from pathlib import Path

import torch

from stpredict.learn.superres import predict_superres
from stpredict.workflow import script_logging
from stpredict.wsi.card import load_model_dir

with script_logging(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    models = load_model_dir(Path(snakemake.input.card).parent)
    out = predict_superres(
        snakemake.input.predictions,
        snakemake.input.section,
        snakemake.input.grid,
        {k: str(p) for k, p in models.models.items()},  # every fold: none saw the cohort
        snakemake.output.h5ad,
        experiment=models.experiment,
        grid=snakemake.params.grid,
        tta=int(snakemake.params.tta or models.card["tta"]),
        precision=str(models.card.get("precision", "auto")),
        whiteness=bool(snakemake.params.whiteness),
    )
    log.info("%s: %d points x %d genes", snakemake.wildcards.section, out.n_obs, out.n_vars)
