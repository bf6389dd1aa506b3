import pandas as pd

from stpredict.io import read_table, write_table
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    frames = []
    for path in snakemake.input.overviews:
        t = read_table(path)
        frames.append(t.assign(task="regression"))
    for path in snakemake.input.clusters:
        t = read_table(path)
        t = t[t["unit"] == "all"]
        frames.append(
            pd.DataFrame(
                {
                    "experiment": t["experiment"],
                    "task": "clusters",
                    "method": "cnn",
                    "genes": "clusters",
                    "accuracy": t["accuracy"],
                    "chance_accuracy": t["chance_accuracy"],
                    "macro_f1": t["macro_f1"],
                    "macro_auroc": t["macro_auroc"],
                    "kappa": t["kappa"],
                }
            )
        )
    summary = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    first = ["experiment", "task", "method", "genes"]
    summary = summary[first + [c for c in summary.columns if c not in first]]
    write_table(summary, snakemake.output.tsv)
    log.info("summary of %d experiments", summary["experiment"].nunique() if len(summary) else 0)
