from stpredict.io import read_table, write_table
from stpredict.workflow import script_logging
from stpredict.wsi.bulk import (
    input_path,
    normalise_bulk,
    pseudobulk_vs_bulk,
    read_bulk,
    slide_summaries,
    summarise,
)

with script_logging(snakemake.log[0]) as log:
    slides = list(snakemake.params.slides)
    means, _, units = slide_summaries(dict(zip(slides, snakemake.input.h5ad, strict=True)))
    path = input_path(snakemake.input.bulk)
    bulk = normalise_bulk(read_bulk(path, slides), snakemake.params.bulk_units, path)
    groups = {}
    if input_path(snakemake.input.get("gene_groups")):
        g = read_table(input_path(snakemake.input.gene_groups))
        groups = dict(zip(g["gene"].astype(str), g["role"].astype(str), strict=True))
    fdr = float(snakemake.params.fdr)
    per_gene = pseudobulk_vs_bulk(means, bulk, fdr, groups)
    summary = summarise(per_gene, fdr)
    summary.insert(1, "predicted_units", units["target_transform"])
    summary.insert(2, "bulk_units", snakemake.params.bulk_units)
    write_table(means.rename_axis("slide_id"), snakemake.output.means, index=True)
    write_table(per_gene, snakemake.output.tsv)
    write_table(summary, snakemake.output.summary)
    log.info("pseudo-bulk vs bulk (%s):\n%s", units, summary.to_string(index=False))
