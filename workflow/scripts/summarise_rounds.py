from stpredict.io import write_table
from stpredict.learn.rounds import summarise_pools, summarise_rounds
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    inp = snakemake.input
    records = [
        {"control": c, "round": int(k), "fold": str(f), "predictions": p, "history": h, "fitted": j}
        for (c, k, f), p, h, j in zip(
            snakemake.params.records, inp.predictions, inp.histories, inp.fitted, strict=True
        )
    ]
    pools = summarise_pools(
        [
            {"control": c, "round": int(k), "fold": str(f), "pool": p}
            for (c, k, f), p in zip(snakemake.params.pool_records, inp.pools, strict=True)
        ]
    )
    write_table(pools, snakemake.output.pools)
    table = summarise_rounds(records, pools)
    write_table(table, snakemake.output.tsv)
    for (control, k), g in table.groupby(["control", "round"], sort=False):
        log.info(
            "%s round %d: median r %.3f, validation loss %.4g, pool %d, drawn %d%s",
            control,
            k,
            g["pearson"].median(),
            g["val_loss"].iloc[0],
            g["pool_n"].iloc[0],
            g["pseudo_n"].iloc[0],
            " (chosen)" if g["chosen"].any() else "",
        )
