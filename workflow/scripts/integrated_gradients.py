from pathlib import Path

import numpy as np
import pandas as pd

from stpredict.errors import ConfigError
from stpredict.evaluate.attributions import integrated_gradients, pick_ig_patches
from stpredict.evaluate.metrics import scored_spots
from stpredict.io import read_h5ad, read_table, write_table
from stpredict.learn.predict import load_model
from stpredict.patches.store import patches_for_spots
from stpredict.plot.latent import plot_ig_overlays
from stpredict.vocab import units_label
from stpredict.workflow import script_logging, write_report_copies

with script_logging(snakemake.log[0]) as log:
    cfg = snakemake.params.cfg
    summary = read_table(snakemake.input.summary, dtype={"gene": str})
    raw = summary[summary["target"] == "raw"].dropna(subset=["median_pearson"])
    gene = cfg["gene"] or str(raw.sort_values("median_pearson", ascending=False)["gene"].iloc[0])
    adatas = [scored_spots(read_h5ad(p, images=False)) for p in snakemake.input.predictions]
    if not all(gene in a.var_names for a in adatas):
        raise ConfigError(
            f"gene '{gene}' of evaluation.attributions.gene is not predicted in every "
            "held-out section",
            fix="choose one of the experiment's genes (metrics/summary.tsv)",
        )
    obs = pd.concat([a.obs[["sample_id", "spot_id", "fold"]] for a in adatas], ignore_index=True)
    pred = np.concatenate([np.asarray(a[:, gene].layers["predicted"]).ravel() for a in adatas])
    picks = pick_ig_patches(pred, n=int(cfg["n_patches"]))
    stores = {Path(p).parent.name: p for p in snakemake.input.stores}
    models = {Path(p).parent.name: p for p in snakemake.input.models}
    patches, attrs, rows, loaded = [], [], [], {}
    for i in picks:
        sample, spot, fold = (str(obs.loc[i, c]) for c in ("sample_id", "spot_id", "fold"))
        patch = patches_for_spots(stores[sample], [spot])
        if fold not in loaded:
            loaded[fold] = load_model(models[fold], device=None)
        model, meta = loaded[fold]
        target = [str(g) for g in meta["genes"]].index(gene)
        a, delta = integrated_gradients(
            model, patch, target, n_steps=int(cfg["n_steps"]), return_delta=True
        )
        patches.append(patch[0])
        attrs.append(a[0])
        rows.append(
            {
                "sample_id": sample,
                "spot_id": spot,
                "fold": fold,
                "gene": gene,
                "predicted": float(pred[i]),
                "attribution_sum": float(a[0].sum()),
                "convergence_delta": float(np.ravel(delta)[0]),
            }
        )
    units = units_label(adatas[0].uns["stpredict"]["target_transform"]["name"])
    plot_ig_overlays(
        np.stack(patches),
        np.stack(attrs),
        gene,
        snakemake.output.png,
        values=[r["predicted"] for r in rows],
        units_label=units,
    )
    write_table(pd.DataFrame(rows), snakemake.output.tsv)
    log.info(
        "%s: integrated gradients of %s on %d patches",
        snakemake.wildcards.experiment,
        gene,
        len(rows),
    )
    write_report_copies(snakemake.output)
