from pathlib import Path

from stpredict.cohort.predict import cohort_patches
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    table = cohort_patches(
        snakemake.input.section,
        snakemake.input.image,
        Path(snakemake.input.card).parent,
        {k: snakemake.output[k] for k in ("npy", "tsv", "json")},
        snakemake.params.whiteness,
        float(snakemake.params.mpp_tolerance),
    )
    log.info("%s: %d spot patches at the model's geometry", snakemake.wildcards.section, len(table))
