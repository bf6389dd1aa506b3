from stpredict.evaluate.features import nuclear_features
from stpredict.ingest.images import open_image
from stpredict.ingest.section import read_section_light
from stpredict.io import write_table
from stpredict.patches.geometry import PatchSpec
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    sample = snakemake.wildcards.sample
    adata = read_section_light(snakemake.input.section)
    mpp = float(adata.uns["stpredict"]["mpp"])
    fov = snakemake.params.fov
    crop = PatchSpec(fov_um=fov["fov_um"], fov_px=fov["fov_px"], size_px=1).crop_px(mpp)
    with open_image(snakemake.input.image, sample=sample) as image:
        table = nuclear_features(
            image,
            adata.obsm["spatial"],
            crop,
            mpp,
            adata.obs_names.astype(str),
            min_area_um2=snakemake.params.min_area_um2,
        )
    log.info(
        "%s: nuclear features of %d spots (%d px = %.1f µm crops, threshold %.4f OD, "
        "median %.0f nuclei per spot)",
        sample,
        len(table),
        crop,
        crop * mpp,
        table.attrs["hematoxylin_threshold"],
        table["n_nuclei"].median(),
    )
    write_table(table.reset_index(), snakemake.output.tsv)
