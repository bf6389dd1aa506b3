import pandas as pd

from stpredict.io import write_table
from stpredict.workflow import script_logging
from stpredict.wsi.bulk import input_path, normalise_bulk, read_bulk, slide_summaries
from stpredict.wsi.subtype import classify

with script_logging(snakemake.log[0]) as log:
    p = snakemake.params
    table = pd.DataFrame(p.table).set_index("slide_id", drop=False)
    slides = list(p.slides)
    means, emb, units = slide_summaries(dict(zip(slides, snakemake.input.h5ad, strict=True)))
    features = {"pseudobulk": means}
    path = input_path(snakemake.input.get("bulk"))
    if path:
        bulk = normalise_bulk(read_bulk(path, slides), p.bulk_units, path)
        genes = [g for g in means.columns if g in set(bulk.columns)]
        features = {"pseudobulk": means[genes], "bulk": bulk[genes]}
    if emb is not None:
        features["image"] = emb
    results, scores, split = classify(features, table, dict(p.settings))
    write_table(results, snakemake.output.tsv)
    write_table(scores, snakemake.output.scores)
    log.info("patient split: train %s; test %s", split["train"], split["test"])
    log.info("subtype classification:\n%s", results.to_string(index=False))
