from stpredict.cohort.predict import map_genes
from stpredict.io import read_h5ad
from stpredict.plot.maps import plot_expression_maps, plot_superres_maps
from stpredict.plot.wsi import plot_slide_heatmap
from stpredict.vocab import units_label
from stpredict.workflow import script_logging, write_report_copies

with script_logging(snakemake.log[0]) as log:
    a = read_h5ad(snakemake.input.h5ad)
    meta = a.uns["stpredict"]
    genes = map_genes(a, list(snakemake.params.genes))
    units = units_label(meta["target_transform"]["name"])
    title = (
        f"{meta['sample_id']} (cohort {snakemake.wildcards.cohort}, models {meta['experiment']})"
    )
    if meta.get("platform") == "image" and "tile_row" in a.obs:  # tiles of an image-only row
        plot_slide_heatmap(a, genes, units, snakemake.output.png, title=title)
    elif meta.get("platform") == "image" or snakemake.params.kind == "superres":
        if "kind" not in a.obs:  # spots of an image-only row: all predicted
            a.obs["kind"] = "imputed"
        plot_superres_maps(a, genes, units, snakemake.output.png, title=title)
    else:  # measured and predicted
        plot_expression_maps([a], genes, units, snakemake.output.png, titles=[title])
    log.info("%s: maps of %s", snakemake.wildcards.section, ", ".join(genes))
    write_report_copies(snakemake.output)
