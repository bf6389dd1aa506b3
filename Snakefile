# stpredict: predict spatially resolved gene expression from H&E histology.
# Table of contents only; the rules live in workflow/rules, the logic in src/stpredict.
#
#   snakemake --cores 2                 the demo run (default target `all`)
#   snakemake --cores 2 sections        read every section into results/sections/
#   snakemake --cores 2 patches         + patch stores in results/patches/
#   snakemake --cores 2 qc              + spot QC in results/qc/
#   snakemake --cores 2 experiments     + per-fold training and predictions of every experiment
#   snakemake --cores 2 rounds          + the semi-supervised teacher/student rounds (rounds.tsv)
#   snakemake --cores 2 evaluation      + metrics, baselines, latent space, figures, summary
#   snakemake --cores 2 superres        + super-resolution grids of the experiments that enable it
#   snakemake --cores 2 ihc             IHC of adjacent sections vs predictions (results/ihc/)
#   snakemake --cores 2 wsi             whole slides tiled and predicted (results/wsi/)
#   snakemake --cores 2 predict_cohort  predict-only cohorts (cohorts:) -> results/cohorts/
#   snakemake --report results/report.html   the HTML report of a finished run
#   snakemake --cores 2 stnet           only the experiments named *stnet* (likewise deepspace)
#   snakemake --configfile config/deepspace.yaml --cores 2 qc   a paper preset


from snakemake.utils import min_version

min_version("9.0")


# config.yaml (the demo run) is the default; a preset given with --configfile replaces it
# rather than being merged into it (presets are complete), and --config overrides either.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/patches.smk"
include: "workflow/rules/learn.smk"
include: "workflow/rules/rounds.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/plot.smk"
include: "workflow/rules/ihc.smk"
include: "workflow/rules/wsi.smk"
include: "workflow/rules/cohort.smk"


# Jobs that only gather or write small tables run where Snakemake runs, not as cluster jobs.
localrules:
    all,
    evaluation,
    experiments,
    stnet,
    deepspace,
    sections,
    patches,
    qc,
    write_run_config,
    summarise_qc,
    collect_predictions,
    summarise_experiments,
    model_card,
    predict_cohort,
    cohort_score,


rule all:
    default_target: True
    input:
        "results/run/config.resolved.yaml",
        "results/qc/summary.tsv",
        expand("results/patches/{sample}/spots.npy", sample=SAMPLE_IDS),
        expand("results/experiments/{experiment}/splits.tsv", experiment=EXPERIMENTS),
        experiment_predictions(),
        experiment_metrics(),
        experiment_analyses(),
        experiment_rounds(),
        expand("results/features/{sample}/nuclear.tsv", sample=feature_samples()),
        "results/figures/dataset.png",
        "results/summary.tsv",
        experiment_superres(),
        ihc_outputs(),
        model_cards(),
        wsi_outputs(),
        cohort_outputs(),


rule evaluation:
    input:
        experiment_analyses(),
        "results/figures/dataset.png",
        "results/summary.tsv",


rule experiments:
    input:
        experiment_predictions(),


rule rounds:
    input:
        experiment_rounds(),


rule stnet:
    input:
        experiment_predictions([e for e in EXPERIMENTS if "stnet" in e]),


rule deepspace:
    input:
        experiment_predictions([e for e in EXPERIMENTS if "deepspace" in e]),


rule sections:
    input:
        expand("results/sections/{sample}.h5ad", sample=SAMPLE_IDS),


rule patches:
    input:
        expand("results/patches/{sample}/spots.npy", sample=SAMPLE_IDS),


rule qc:
    input:
        "results/qc/summary.tsv",


rule superres:
    input:
        experiment_superres(),


rule ihc:
    input:
        ihc_outputs(),


rule wsi:
    input:
        wsi_outputs(),


# predict-only runs on new cohorts (cohorts:), with the models of an earlier run; from another
# directory: snakemake predict_cohort -s /path/to/Snakefile --directory DIR --configfile cohort.yaml
rule predict_cohort:
    input:
        cohort_outputs(),
