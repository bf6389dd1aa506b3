from stpredict.workflow import script_logging
from stpredict.wsi.card import write_model_card

with script_logging(snakemake.log[0]) as log:
    settings = dict(snakemake.params.settings)
    folds = {
        k: {"model": m, "fitted": f}
        for k, m, f in zip(
            settings.pop("folds"), snakemake.input.models, snakemake.input.fitted, strict=True
        )
    }
    stores = {p.split("/")[-2]: p for p in snakemake.input.stores}
    sections = {p.split("/")[-1].removesuffix(".h5ad"): p for p in snakemake.input.sections}
    card = write_model_card(
        snakemake.wildcards.experiment, settings, folds, stores, snakemake.output.json, sections
    )
    log.info(
        "%s: %d folds, %d genes, field of view %.4g µm, %.4g µm/px",
        card["experiment"],
        len(card["folds"]),
        len(card.get("genes", [])),
        card["fov_um"],
        card["patch_mpp"],
    )
