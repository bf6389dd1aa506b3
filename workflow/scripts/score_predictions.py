import anndata as ad
import pandas as pd

from stpredict.errors import ConfigError
from stpredict.io import write_table
from stpredict.metrics import pooled_metrics, score_units, summarise, table1
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    platforms = snakemake.params.platforms
    by_platform = {}
    for path in snakemake.input.predictions:
        a = ad.read_h5ad(path)
        if a.uns["stpredict"].get("task") == "clusters":
            raise ConfigError("score_predictions scores regression experiments; this one predicts clusters",
                              fix="request metrics only for regression experiments")
        by_platform.setdefault(platforms[str(a.obs["sample_id"].iloc[0])], []).append(a)
    per_gene = pd.concat([score_units(ads, p, unit=snakemake.params.unit) for p, ads in by_platform.items()],
                         ignore_index=True)
    if len(by_platform) == 1:
        (platform, ads), = by_platform.items()
        pooled = pooled_metrics(ads, platform=platform)
    else:
        pooled = pooled_metrics([a for ads in by_platform.values() for a in ads])
    summary = summarise(per_gene, pooled)
    log.info("%s: %d genes x %d units scored", snakemake.wildcards.experiment,
             per_gene["gene"].nunique(), per_gene["unit"].nunique())
    write_table(per_gene, snakemake.output.per_gene)
    write_table(summary, snakemake.output.summary)
    write_table(table1(summary), snakemake.output.table1)
