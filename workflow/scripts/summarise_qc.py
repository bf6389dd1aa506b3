import pandas as pd

from stpredict.io import read_h5ad, write_table
from stpredict.patches.qc import qc_summary
from stpredict.plot.style import REPORT_MAX_PIXELS_PER_SECTION, report_copy
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]):
    rows = [qc_summary(read_h5ad(path)) for path in snakemake.input.h5ad]
    write_table(pd.DataFrame(rows), snakemake.output.summary)
    for png, small in zip(snakemake.input.png, snakemake.output.png_report, strict=True):
        report_copy(png, small, max_pixels=REPORT_MAX_PIXELS_PER_SECTION)
