from stpredict.evaluate.metrics import compare_methods, method_overview
from stpredict.io import read_table, write_table
from stpredict.workflow import script_logging


def read(path):
    return read_table(path, dtype={"gene": str, "unit": str})


with script_logging(snakemake.log[0]) as log:
    results = {"cnn": (read(snakemake.input.per_gene), read(snakemake.input.summary))}
    tables = zip(
        snakemake.params.baselines,
        snakemake.input.baseline_per_gene,
        snakemake.input.baseline_summary,
        strict=True,
    )
    for method, per_gene, summary in tables:  # inputs in the order of params.baselines
        results[method] = (read(per_gene), read(summary))
    comparison = compare_methods(results)
    groups = None
    if snakemake.input.gene_groups:
        roles = read_table(snakemake.input.gene_groups[0], dtype=str)
        groups = {r: g["gene"].tolist() for r, g in roles.groupby("role")}
    overview = method_overview(comparison, groups)
    overview.insert(0, "experiment", snakemake.wildcards.experiment)
    for _, row in overview[overview["genes"].isin(["all", "morphology"])].iterrows():
        log.info(
            "%s %-10s %-10s median r %.3f (%d genes)",
            row["experiment"],
            row["method"],
            row["genes"],
            row["median_pearson"],
            row["n_genes"],
        )
    write_table(comparison, snakemake.output.comparison)
    write_table(overview, snakemake.output.overview)
