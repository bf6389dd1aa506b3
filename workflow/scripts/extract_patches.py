from stpredict.ingest.images import open_image
from stpredict.io import read_h5ad
from stpredict.patches.geometry import PatchSpec
from stpredict.patches.store import extract_patches
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    sample = snakemake.wildcards.sample
    cfg, white = snakemake.params.patches, snakemake.params.whiteness
    adata = read_h5ad(snakemake.input.section)
    spec = PatchSpec(
        fov_um=cfg["fov_um"],
        fov_px=cfg["fov_px"],
        size_px=cfg["size_px"],
        pad_value=cfg["pad_value"],
    )
    mpp = float(adata.uns["stpredict"]["mpp"])
    crop = spec.crop_px(mpp)
    log.info(
        "%s: %d patches, %s px crop (%.0f µm) at %.3f µm/px -> %d px",
        sample,
        adata.n_obs,
        crop,
        crop * mpp,
        mpp,
        spec.size_px,
    )
    spot_um = float(adata.uns["stpredict"].get("spot_diameter_um") or 0)
    if crop * mpp < spot_um:
        log.warning(
            "%s: the field of view (%.0f µm) is smaller than one spot (%.0f µm): a patch shows only part of the tissue the spot measured",
            sample,
            crop * mpp,
            spot_um,
        )
    if crop < spec.size_px:
        log.warning(
            "%s: crops of %d px are enlarged to %d px (%.1fx): the patches hold less detail than their size suggests",
            sample,
            crop,
            spec.size_px,
            spec.size_px / crop,
        )
    with open_image(snakemake.input.image, sample=sample) as image:
        extract_patches(
            image,
            adata.obsm["spatial"],
            spec,
            mpp,
            snakemake.output.npy,
            snakemake.output.tsv,
            snakemake.output.json,
            ids=adata.obs_names.to_list(),
            percentile=white["percentile"],
            max_white_frac=white["max_white_frac"],
        )
