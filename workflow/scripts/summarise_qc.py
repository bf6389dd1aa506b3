from stpredict.io import write_table
from stpredict.qc import summarise_sections
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]):
    write_table(summarise_sections(snakemake.input.h5ad), snakemake.output.summary)
