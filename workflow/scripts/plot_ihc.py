from stpredict.io import read_h5ad, read_json, read_table
from stpredict.plot.ihc import plot_ihc_maps, plot_ihc_scatter
from stpredict.vocab import units_label
from stpredict.workflow import script_logging, write_report_copies

with script_logging(snakemake.log[0]) as log:
    gene = snakemake.params.gene
    spots = read_table(snakemake.input.spots, dtype={"spot_id": str})
    summary = read_table(snakemake.input.summary)
    predictions = read_h5ad(snakemake.input.predictions, images=False)
    units = units_label(predictions.uns["stpredict"]["target_transform"]["name"])
    plot_ihc_scatter(spots, summary, gene, units, snakemake.output.scatter)
    plot_ihc_maps(
        read_h5ad(snakemake.input.section),
        spots,
        summary,
        read_json(snakemake.input.registration),
        snakemake.input.ihc,
        gene,
        units,
        snakemake.output.maps,
    )
    log.info("%s: IHC figures written", snakemake.wildcards.sample)
    write_report_copies(snakemake.output)
