from stpredict.io import read_table
from stpredict.plot.scores import plot_rounds
from stpredict.workflow import script_logging, write_report_copies

with script_logging(snakemake.log[0]):
    table = read_table(snakemake.input.tsv, dtype={"gene": str, "control": str})
    plot_rounds(table, snakemake.output.png, title=snakemake.wildcards.experiment)
    write_report_copies(snakemake.output)
