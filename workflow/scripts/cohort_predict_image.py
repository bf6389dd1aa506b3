from pathlib import Path

import torch

from stpredict.cohort.predict import predict_image_row
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    a = predict_image_row(
        Path(snakemake.input.card).parent,
        snakemake.params.row,
        snakemake.output.h5ad,
        str(Path(snakemake.output.npy).with_suffix("")),
        cohort=snakemake.wildcards.cohort,
        tile_um=snakemake.params.tile_um,
        background=snakemake.params.background,
        tta=snakemake.params.tta,
        batch_size=int(snakemake.params.batch_size),
        tolerance=float(snakemake.params.mpp_tolerance),
    )
    log.info("%s: %d patches x %d genes predicted", snakemake.wildcards.section, a.n_obs, a.n_vars)
