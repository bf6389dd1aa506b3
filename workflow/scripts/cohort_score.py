from stpredict.cohort.predict import score_cohort
from stpredict.io import write_table
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    per_gene, summary = score_cohort(snakemake.input.predictions, float(snakemake.params.alpha))
    raw = summary[summary["target"] == "raw"]
    log.info(
        "cohort %s: %d genes x %d sections scored; median over genes of the median r %.3f",
        snakemake.wildcards.cohort,
        per_gene["gene"].nunique(),
        per_gene["unit"].nunique(),
        float(raw["median_pearson"].median()),
    )
    write_table(per_gene, snakemake.output.per_gene)
    write_table(summary, snakemake.output.summary)
