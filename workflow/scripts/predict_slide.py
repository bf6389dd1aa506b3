from pathlib import Path

import torch

from stpredict.workflow import script_logging
from stpredict.wsi.predict import predict_image

with script_logging(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    bg = snakemake.params.background
    adata = predict_image(
        Path(snakemake.input.card).parent,
        snakemake.input.image,
        mpp=snakemake.params.mpp or None,
        out=snakemake.output.h5ad,
        slide_id=snakemake.wildcards.slide,
        store=str(Path(snakemake.output.npy).with_suffix("")),
        tile_um=snakemake.params.tile_um,
        background_rgb=bg["rgb"],
        max_background_frac=bg["max_frac"],
        batch_size=snakemake.params.batch_size,
    )
    tiles = adata.uns["stpredict"]["tiles"]
    log.info(
        "%s: %d of %d tiles kept (%d background), %d genes",
        snakemake.wildcards.slide,
        tiles["n_kept"],
        tiles["n_tiles"],
        tiles["n_background"],
        adata.n_vars,
    )
