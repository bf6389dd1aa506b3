from pathlib import Path

from stpredict.workflow import script_logging
from stpredict.wsi.pool import tile_pool_slide

with script_logging(snakemake.log[0]) as log:
    bg = snakemake.params.background
    table = tile_pool_slide(
        snakemake.input.image,
        snakemake.params.mpp or None,
        snakemake.wildcards.pool_slide,
        {Path(p).parent.name: p for p in snakemake.input.stores},
        Path(snakemake.output.npy).with_suffix(""),
        rgb=bg["rgb"],
        max_frac=bg["max_frac"],
        tolerance=snakemake.params.mpp_tolerance,
        experiment=snakemake.wildcards.experiment,
    )
    log.info(
        "%s: %d of %d tiles kept (background dropped)",
        snakemake.wildcards.pool_slide,
        int(table["keep"].sum()),
        len(table),
    )
