from stpredict.ingest.section import read_section
from stpredict.io import read_table, write_h5ad
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    gene_map = None
    if "gene_map" in snakemake.input.keys():
        gene_map = read_table(snakemake.input.gene_map, dtype=str)
        gene_map.attrs["path"] = str(snakemake.input.gene_map)  # named in the readers' messages
    adata = read_section(
        snakemake.params.row,
        mpp_tolerance=snakemake.params.mpp_tolerance,
        bounds_check=snakemake.params.bounds_check,
        gene_map=gene_map,
    )
    wc = snakemake.wildcards  # a run's section {sample}, or a cohort's {cohort}/{section}
    log.info(
        "%s: %d spots x %d genes, %.3f µm/px (%s)",
        wc.get("sample") or f"cohort {wc.cohort}, {wc.section}",
        adata.n_obs,
        adata.n_vars,
        adata.uns["stpredict"]["mpp"],
        adata.uns["stpredict"]["mpp_source"],
    )
    write_h5ad(adata, snakemake.output.h5ad)
