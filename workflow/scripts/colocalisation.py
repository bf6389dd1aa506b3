import numpy as np

from stpredict.io import read_h5ad, write_table
from stpredict.workflow import script_logging
from stpredict.wsi.coloc import finish, slide_rows

with script_logging(snakemake.log[0]) as log:
    p = snakemake.params
    rows = []
    for slide, path in zip(p.slides, snakemake.input.h5ad, strict=True):
        a = read_h5ad(path, sample=slide, images=False)
        side = float(a.uns["stpredict"]["tiles"].get("tile_px_fullres") or 0.0)
        if a.n_obs < 3 or not side:
            log.info("%s: %d tiles, no co-localisation", slide, a.n_obs)
            continue
        pred = np.asarray(a.layers["predicted"], dtype=np.float64)
        xy = np.asarray(a.obsm["spatial"], dtype=np.float64)
        markers = {k: list(v) for k, v in p.markers.items()}
        rows += slide_rows(slide, pred, list(a.var_names), xy, side, markers, p.n_perm, p.seed)
    table = finish(rows)
    write_table(table, snakemake.output.tsv)
    if not table.empty:
        log.info(
            "co-localisation: %d slide x pair rows, median r %.3f, %d with q < 0.05",
            len(table),
            table["r"].median(),
            int((table["q"] < 0.05).sum()),
        )
