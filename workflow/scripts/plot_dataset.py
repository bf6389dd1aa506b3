import pandas as pd

from stpredict.ingest.section import read_section_light
from stpredict.plot.maps import plot_dataset_stats
from stpredict.workflow import script_logging, write_report_copies

with script_logging(snakemake.log[0]) as log:
    rows = []
    for path in snakemake.input.qc:
        a = read_section_light(path)
        meta = a.uns["stpredict"]
        rows.append(
            pd.DataFrame(
                {
                    "sample_id": str(meta["sample_id"]),
                    "patient_id": str(meta["patient_id"]),
                    "platform": str(meta["platform"]),
                    "total_counts": a.obs["total_counts"].to_numpy(),
                    "n_genes_by_counts": a.obs["n_genes_by_counts"].to_numpy(),
                    "keep": a.obs["keep"].to_numpy(),
                }
            )
        )
    spots = pd.concat(rows, ignore_index=True)
    plot_dataset_stats(spots, snakemake.output.png)
    log.info(
        "dataset figure: %d sections, %d spots (%d kept)",
        len(rows),
        len(spots),
        int(spots["keep"].sum()),
    )
    write_report_copies(snakemake.output)
