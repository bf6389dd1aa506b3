from pathlib import Path

from stpredict.cohort.predict import cohort_grid
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    table = cohort_grid(
        snakemake.input.section,
        snakemake.input.spots,
        snakemake.input.image,
        Path(snakemake.input.card).parent,
        snakemake.wildcards.grid,
        {k: snakemake.output[k] for k in ("npy", "tsv", "json")},
        float(snakemake.params.max_white_frac),
        float(snakemake.params.mpp_tolerance),
    )
    log.info("%s: %d %s centres", snakemake.wildcards.section, len(table), snakemake.wildcards.grid)
