from stpredict.io import read_table
from stpredict.plot.wsi import plot_pseudobulk
from stpredict.vocab import units_label
from stpredict.workflow import script_logging, write_report_copies
from stpredict.wsi.bulk import normalise_bulk, read_bulk

with script_logging(snakemake.log[0]) as log:
    i = snakemake.input
    per_gene = read_table(i.tsv)
    means = read_table(i.means, index_col=0)
    means.index = means.index.astype(str)
    summary = read_table(i.summary)
    bulk = normalise_bulk(read_bulk(i.bulk, list(means.index)), snakemake.params.bulk_units, i.bulk)
    scores = read_table(i.scores) if i.get("scores") else None
    results = read_table(i.subtype) if i.get("subtype") else None
    coloc = read_table(i.coloc) if i.get("coloc") else None
    units = units_label(str(summary["predicted_units"].iloc[0]))
    genes = plot_pseudobulk(
        per_gene, means, bulk, scores, results, coloc, units, snakemake.output.png
    )
    write_report_copies(snakemake.output)
    log.info("pseudo-bulk figure: best genes %s", genes)
