import json
from pathlib import Path

import numpy as np
import pandas as pd

from stpredict.evaluate.latent import (
    latent_vs_physical,
    neighbour_test,
    purity_summary,
    purity_table,
    typical_atypical,
    umap_embedding,
)
from stpredict.evaluate.metrics import scored_spots
from stpredict.io import atomic_path, read_h5ad, write_table
from stpredict.patches.store import patches_for_spots
from stpredict.plot.latent import plot_umap
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    name, unit, platforms = (
        snakemake.wildcards.experiment,
        snakemake.params.unit,
        snakemake.params.platforms,
    )
    seed = int(snakemake.params.seed)
    adatas = [scored_spots(read_h5ad(p, images=False)) for p in snakemake.input.predictions]
    stores = {Path(p).parent.name: p for p in snakemake.input.stores}
    by_unit = {}
    for a in adatas:
        by_unit.setdefault(str(a.obs[unit].iloc[0]), []).append(a)
    purity = purity_table(by_unit, seed=seed)
    purity.insert(0, "experiment", name)
    write_table(purity, snakemake.output.purity)
    summary = {"experiment": name, "unit": unit, "purity": purity_summary(purity)}

    tests, physical = [], []
    regression = adatas[0].uns["stpredict"].get("task") == "regression"
    for a in adatas:
        sample = str(a.obs["sample_id"].iloc[0])
        if regression:
            t = neighbour_test(a, platforms[sample])
            t.insert(0, "sample_id", sample)
            tests.append(t)
        physical.append({"sample_id": sample, **latent_vs_physical(a, platforms[sample])})
    neighbours = (
        pd.concat(tests, ignore_index=True)
        if tests
        else pd.DataFrame(columns=["sample_id", "gene", "r_similar", "r_distinct", "n_spots"])
    )
    write_table(neighbours, snakemake.output.neighbours)
    write_table(pd.DataFrame(physical), snakemake.output.physical)
    if tests:
        g = neighbours.groupby("gene")[["r_similar", "r_distinct"]].median()
        summary["neighbour_test"] = {
            "median_r_similar": float(g["r_similar"].median()),
            "median_r_distinct": float(g["r_distinct"].median()),
            "genes_similar_better": int((g["r_similar"] > g["r_distinct"]).sum()),
            "n_genes": int(g.notna().all(axis=1).sum()),
        }
    summary["latent_vs_physical"] = {
        "mean_share_adjacent": float(np.mean([p["share_adjacent"] for p in physical])),
        "mean_chance": float(np.mean([p["chance"] for p in physical])),
    }

    # UMAP figures: the units with the most annotated spots of both classes first
    def n_both(ads):
        lab = np.concatenate([x.obs["annotation"].astype(str).to_numpy() for x in ads])
        return min((lab == "tumor").sum(), (lab == "non").sum()), len(lab)

    order = sorted(by_unit, key=lambda u: n_both(by_unit[u]), reverse=True)
    coords_rows = []
    figures = Path(snakemake.output.umaps)  # one figure per shown unit: figures/umap/{unit}.png
    figures.mkdir(parents=True, exist_ok=True)
    for u in order[: int(snakemake.params.n_figures)]:
        out_png = figures / f"{u}.png"
        ads = by_unit[u]
        emb = np.concatenate([np.asarray(x.obsm["embedding"]) for x in ads])
        labels = np.concatenate([x.obs["annotation"].astype(str).to_numpy() for x in ads])
        coords = umap_embedding(emb, seed=seed)
        examples = typical_atypical(emb, labels)
        patches = None
        if len(examples):
            obs = pd.concat([x.obs[["sample_id", "spot_id"]] for x in ads], ignore_index=True)
            picked = obs.loc[examples["index"].astype(int)]
            patches = np.concatenate(
                [
                    patches_for_spots(stores[s], [spot])
                    for s, spot in zip(picked["sample_id"], picked["spot_id"], strict=True)
                ]
            )
        title = f"{name}: {unit.replace('_id', '')} {u} ({len(emb)} spots)"
        plot_umap(coords, labels, out_png, examples=examples, patches=patches, title=title)
        obs = pd.concat(
            [x.obs[["sample_id", "spot_id", "annotation"]] for x in ads], ignore_index=True
        )
        coords_rows.append(obs.assign(unit=u, umap_1=coords[:, 0], umap_2=coords[:, 1]))
    umap = pd.concat(coords_rows, ignore_index=True) if coords_rows else pd.DataFrame()
    write_table(umap, snakemake.output.umap)
    p = summary["purity"]
    log.info("%s: k-means purity %.2f ± %.2f over %d units", name, p["mean"], p["sd"], p["n_units"])
    with atomic_path(snakemake.output.summary) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2, default=float) + "\n")
