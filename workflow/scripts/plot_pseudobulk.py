from stpredict.io import read_table
from stpredict.plot.wsi import plot_pseudobulk
from stpredict.vocab import units_label
from stpredict.workflow import script_logging, write_report_copies
from stpredict.wsi.bulk import input_path, normalise_bulk, read_bulk

with script_logging(snakemake.log[0]) as log:
    i = snakemake.input
    per_gene = read_table(input_path(i.tsv), keep_default_na=False, na_values=[""])
    means = read_table(input_path(i.means), index_col=0, keep_default_na=False, na_values=[""])
    means.index = means.index.astype(str)
    summary = read_table(input_path(i.summary))
    path = input_path(i.bulk)
    bulk = normalise_bulk(read_bulk(path, list(means.index)), snakemake.params.bulk_units, path)
    scores = read_table(input_path(i.scores)) if input_path(i.get("scores")) else None
    results = read_table(input_path(i.subtype)) if input_path(i.get("subtype")) else None
    coloc = read_table(input_path(i.coloc)) if input_path(i.get("coloc")) else None
    units = units_label(str(summary["predicted_units"].iloc[0]))
    genes = plot_pseudobulk(
        per_gene, means, bulk, scores, results, coloc, units, snakemake.output.png
    )
    write_report_copies(snakemake.output)
    log.info("pseudo-bulk figure: best genes %s", genes)
