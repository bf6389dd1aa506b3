from stpredict.errors import InputError
from stpredict.ingest.images import open_image
from stpredict.io import read_h5ad, read_json
from stpredict.patches.centres import section_centres
from stpredict.patches.geometry import PatchSpec
from stpredict.patches.store import extract_patches
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    sample, grid = snakemake.wildcards.sample, snakemake.wildcards.grid
    cfg = snakemake.params.patches
    adata = read_h5ad(snakemake.input.section)
    spec = PatchSpec(
        fov_um=cfg["fov_um"],
        fov_px=cfg["fov_px"],
        size_px=cfg["size_px"],
        pad_value=cfg["pad_value"],
    )
    mpp = float(adata.uns["stpredict"]["mpp"])
    centres = section_centres(adata, grid)
    white = read_json(snakemake.input.spots, sample=sample)["whiteness"]
    if white.get("threshold") is None:
        raise InputError(
            "the spot patch store records no whiteness threshold",
            file=snakemake.input.spots,
            sample=sample,
            fix="rerun extract_patches for this section",
        )
    log.info(
        "%s: %d %s centres over %d spots (whiteness threshold %.1f of the spot patches)",
        sample,
        len(centres),
        grid,
        adata.n_obs,
        white["threshold"],
    )
    with open_image(snakemake.input.image, sample=sample) as image:
        extract_patches(
            image,
            centres[["x", "y"]].to_numpy(),
            spec,
            mpp,
            snakemake.output.npy,
            snakemake.output.tsv,
            snakemake.output.json,
            ids=centres["id"].to_list(),
            percentile=float(white["percentile"]),
            max_white_frac=float(snakemake.params.max_white_frac),
            threshold=float(white["threshold"]),
            extra=centres[["array_row", "array_col", "n_spots"]],
        )
