from pathlib import Path

from stpredict.evaluate.baselines import read_features, run_baseline, write_baseline_predictions
from stpredict.evaluate.metrics import score_experiment
from stpredict.ingest.section import load_sections
from stpredict.io import write_table
from stpredict.learn.folds import read_manifest
from stpredict.workflow import script_logging

with script_logging(snakemake.log[0]) as log:
    name, method = snakemake.wildcards.experiment, snakemake.params.method
    exp = snakemake.params.experiment
    ev = exp["evaluation"]
    sections = load_sections({Path(p).stem: p for p in snakemake.input.qc})
    features = None
    if "features" in snakemake.input.keys():
        features = read_features({p.split("/")[-2]: p for p in snakemake.input.features})
    fitted = {p.split("/")[-2]: p for p in snakemake.input.fitted}
    params = {**ev["random_forest"], **ev["nmf"]}
    adatas = run_baseline(
        method,
        read_manifest(snakemake.input.splits),
        sections,
        fitted,
        features=features,
        platforms=snakemake.params.platforms,
        params=params,
        seed=int(exp["seed"]),
        n_jobs=snakemake.threads,
        experiment=name,
    )
    per_gene, summary = score_experiment(
        adatas,
        snakemake.params.platforms,
        unit=snakemake.params.unit,
        alpha=float(snakemake.params.alpha),
    )
    log.info(
        "%s / %s: %d sections, %d genes; median r over genes %.3f",
        name,
        method,
        len(adatas),
        summary["gene"].nunique(),
        summary.loc[summary["target"] == "raw", "median_pearson"].median(),
    )
    write_baseline_predictions(
        adatas, {Path(p).stem: p for p in snakemake.input.qc}, snakemake.output.predictions
    )
    write_table(per_gene, snakemake.output.per_gene)
    write_table(summary, snakemake.output.summary)
