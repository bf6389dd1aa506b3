from stpredict.ihc.correlate import summary_table
from stpredict.io import read_json, read_table, write_table
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    sample = snakemake.wildcards.sample
    spots = read_table(snakemake.input.spots, dtype={"spot_id": str})
    table = summary_table(
        spots,
        read_json(snakemake.input.registration),
        sample=sample,
        gene=snakemake.params.gene,
        experiment=snakemake.params.experiment,
        n_boot=snakemake.params.n_boot,
        seed=snakemake.params.seed,
        level=snakemake.params.ci,
    )
    for row in table.itertuples():
        log.info(
            "%s %s vs %s (%s): r = %.3f [%.3f, %.3f], n = %d",
            sample,
            row.measure,
            row.versus,
            row.method,
            row.r,
            row.ci_low,
            row.ci_high,
            row.n_spots,
        )
    write_table(table, snakemake.output.tsv)
