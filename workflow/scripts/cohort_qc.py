from stpredict.io import read_h5ad, write_h5ad, write_table
from stpredict.patches.qc import QCConfig, apply_qc, qc_table
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    q = snakemake.params.qc  # the cohort's thresholds (null keys: the run's qc)
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
        snakemake.wildcards.section,
        int(adata.obs["keep"].sum()),
        adata.n_obs,
        adata.uns["qc"],
    )
    write_table(qc_table(adata), snakemake.output.tsv, index=True)
    write_h5ad(adata, snakemake.output.h5ad)
