from stpredict.io import read_h5ad, write_h5ad, write_table
from stpredict.patches.qc import QCConfig, apply_qc, qc_table
from stpredict.plot.qc import plot_section_qc
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    q = snakemake.params.qc  # a cohort's: its thresholds (null keys: the run's qc)
    wc = snakemake.wildcards  # a run's section {sample}, or a cohort's {cohort}/{section}
    cfg = QCConfig(
        min_umi=q["min_umi"], min_genes=q["min_genes"], whiteness=q["whiteness"]["enabled"]
    )
    adata = apply_qc(
        read_h5ad(snakemake.input.section),
        snakemake.input.patches,
        cfg,
        section_file=snakemake.input.section,
    )
    log.info(
        "%s: kept %d of %d spots %s",
        wc.get("sample") or f"cohort {wc.cohort}, {wc.section}",
        int(adata.obs["keep"].sum()),
        adata.n_obs,
        adata.uns["qc"],
    )
    write_table(qc_table(adata), snakemake.output.tsv, index=True)
    if "png" in snakemake.output.keys():  # the run's sections; a cohort's are not drawn
        plot_section_qc(adata, snakemake.input.patches, snakemake.output.png)
    write_h5ad(adata, snakemake.output.h5ad)
