from stpredict.demo.external import make_external_cohort
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    log.info("writing the demo's external cohort under %s/cohort", snakemake.params.outdir)
    result = make_external_cohort(snakemake.params.outdir, seed=int(snakemake.params.seed))
    for r in result["results"]:
        log.info("%s", r)
