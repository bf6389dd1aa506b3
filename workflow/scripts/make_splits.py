from pathlib import Path

import pandas as pd

from stpredict.ingest.section import load_sections
from stpredict.learn.folds import build_manifest, write_manifest
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    name = snakemake.wildcards.experiment
    sections = load_sections({Path(p).stem: p for p in snakemake.input.qc})
    sheet = pd.DataFrame(snakemake.params.sheet).set_index("sample_id", drop=False)
    manifest = build_manifest(snakemake.params.experiment, sections, sheet, name=name)
    log.info(
        "%s: %d manifest rows, folds %s (audited: no leakage)",
        name,
        len(manifest),
        sorted(manifest["fold"].unique()),
    )
    write_manifest(manifest, snakemake.output.splits)
