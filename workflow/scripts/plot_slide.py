from stpredict.io import read_h5ad, read_table
from stpredict.plot.wsi import plot_slide_heatmap
from stpredict.vocab import units_label
from stpredict.workflow import script_logging, write_report_copies

with script_logging(snakemake.log[0]) as log:
    a = read_h5ad(snakemake.input.h5ad)
    genes = list(snakemake.params.genes)
    if not genes:  # the experiment's 2 best genes by median held-out r that the slide has
        s = read_table(snakemake.input.summary[0])
        s = s[(s["target"] == "raw") & s["gene"].isin(a.var_names)]
        genes = s.sort_values("median_pearson", ascending=False)["gene"].head(2).tolist()
    units = units_label(a.uns["stpredict"]["target_transform"]["name"])
    scales = plot_slide_heatmap(a, genes, units, snakemake.output.png)
    log.info("heatmaps of %s (colour scales %s)", ", ".join(genes), scales)
    write_report_copies(snakemake.output)
