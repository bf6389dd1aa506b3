from stpredict.ihc.register import register_section
from stpredict.io import write_json
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    sample = snakemake.wildcards.sample
    result = register_section(
        snakemake.input.section,
        snakemake.input.image,
        snakemake.input.ihc,
        snakemake.params.registration,
        seed=snakemake.params.seed,
        sample=sample,
        known_affine=snakemake.input.get("known"),
    )
    log.info(
        "%s: %d of %d matches are RANSAC inliers, residual %.2f px; ECC %.3f -> %.3f (%s)%s",
        sample,
        result["n_inliers"],
        result["n_matches"],
        result["ransac_residual_px"],
        result["ecc_start"],
        result["ecc_end"],
        result["note"],
        (
            f"; error against the known transform: mean {result['known_affine_error_px']['mean']:.2f}"
            f" px, max {result['known_affine_error_px']['max']:.2f} px"
            if "known_affine_error_px" in result
            else ""
        ),
    )
    write_json(result, snakemake.output.json)
