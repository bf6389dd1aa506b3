from pathlib import Path

import torch

from stpredict.cohort.predict import predict_section
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    predict_section(
        Path(snakemake.input.card).parent,
        snakemake.input.qc,
        snakemake.input.section,
        snakemake.input.store,
        snakemake.output.h5ad,
        cohort=snakemake.wildcards.cohort,
        min_gene_share=float(snakemake.params.min_gene_share),
        tta=snakemake.params.tta,
        batch_size=int(snakemake.params.batch_size),
    )
