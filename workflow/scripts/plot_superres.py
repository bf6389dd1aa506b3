from stpredict.evaluate.metrics import pearson_columns
from stpredict.io import read_h5ad
from stpredict.plot.maps import plot_superres_maps
from stpredict.vocab import units_label
from stpredict.workflow import script_logging, write_report_copies

with script_logging(snakemake.log[0]) as log:
    a = read_h5ad(snakemake.input.h5ad)
    genes = list(snakemake.params.genes)
    if not genes:  # the 2 genes best predicted on the section's measured (held-out) spots
        m = a[a.obs["kind"].astype(str) == "measured"]
        r = pearson_columns(m.X, m.layers["predicted"])
        ranked = sorted(range(a.n_vars), key=lambda j: -r[j] if r[j] == r[j] else 2.0)
        genes = [str(a.var_names[j]) for j in ranked[:2]]
    units = units_label(a.uns["stpredict"]["target_transform"]["name"])
    scales = plot_superres_maps(a, genes, units, snakemake.output.png)
    log.info("super-resolution maps of %s (colour scales %s)", ", ".join(genes), scales)
    write_report_copies(snakemake.output)
