import numpy as np

from stpredict.ihc.quantify import quantify_section
from stpredict.io import write_table
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    sample = snakemake.wildcards.sample
    table = quantify_section(
        snakemake.input.qc,
        snakemake.input.ihc,
        snakemake.input.registration,
        snakemake.input.predictions,
        gene=snakemake.params.gene,
        experiment=snakemake.params.experiment,
        square_px=snakemake.params.square_px,
        square_scale=snakemake.params.square_scale,
        sample=sample,
    )
    log.info(
        "%s: %d spots, %d inside the IHC image, %d with predictions of %s",
        sample,
        len(table),
        int(table["inside"].sum()),
        int(np.isfinite(table["predicted"]).sum()),
        snakemake.params.gene,
    )
    write_table(table, snakemake.output.tsv)
