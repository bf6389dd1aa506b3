import json

import yaml

import stpredict
from stpredict.io import atomic_path, write_table
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]):
    resolved = {
        "stpredict_version": stpredict.__version__,
        **json.loads(json.dumps(dict(snakemake.params.config))),
    }
    # the experiments as they run: defaults filled in, sections.each expanded
    resolved["experiments"] = json.loads(json.dumps(dict(snakemake.params.experiments)))
    with atomic_path(snakemake.output.config) as tmp:
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
    write_table(snakemake.params.samples, snakemake.output.samples)
