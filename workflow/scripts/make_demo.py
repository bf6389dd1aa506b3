from stpredict.demo import make_demo
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    log.info(
        "writing the demo cohort to %s (seed %s)", snakemake.params.outdir, snakemake.params.seed
    )
    make_demo(snakemake.params.outdir, seed=snakemake.params.seed, threads=snakemake.threads)
