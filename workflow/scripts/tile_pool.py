from stpredict.learn.pool import tile_images
from stpredict.patches.geometry import PatchSpec
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    cfg, white = snakemake.params.patches, snakemake.params.whiteness
    spec = PatchSpec(
        fov_um=cfg["fov_um"],
        fov_px=cfg["fov_px"],
        size_px=cfg["size_px"],
        pad_value=cfg["pad_value"],
    )
    table = tile_images(
        list(snakemake.input.tables),
        spec,
        snakemake.output.npy,
        snakemake.output.tsv,
        snakemake.output.json,
        percentile=white["percentile"],
        max_white_frac=white["max_white_frac"],
        background_rgb=snakemake.params.background["rgb"],
        max_background_frac=snakemake.params.background["max_frac"],
    )
    log.info("%s: %d tiles, %d usable", snakemake.wildcards.kind, len(table), table["usable"].sum())
