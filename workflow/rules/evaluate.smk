# Evaluation of the held-out predictions: metrics, baselines on the same folds, the DeepSpaCE
# OLS table, latent space, attributions, cluster-task metrics, figures and run summaries.


rule score_predictions:
    input:
        predictions=get_experiment_predictions,
    output:
        # per gene x unit x target x stratum: too long for the report (summary, table1,
        # strata and comparison are its digests)
        per_gene="results/experiments/{experiment}/metrics/per_gene.tsv",
        summary=report(
            "results/experiments/{experiment}/metrics/summary.tsv",
            caption="../report/summary.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
        table1=report(
            "results/experiments/{experiment}/metrics/table1.tsv",
            caption="../report/table1.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
        strata=report(
            "results/experiments/{experiment}/metrics/strata.tsv",
            caption="../report/strata.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
        per_fold="results/experiments/{experiment}/metrics/per_fold.tsv",
        folds=report(
            "results/experiments/{experiment}/metrics/folds.tsv",
            caption="../report/folds.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
    log:
        "results/logs/score_predictions/{experiment}.log",
    priority: 10
    conda:
        "../../envs/stpredict.yaml"
    params:
        platforms=get_experiment_platforms,
        unit=get_evaluation_unit,
        alpha=lambda wc: evaluation(wc.experiment)["alpha"],
    script:
        "../scripts/score_predictions.py"


rule nuclear_features:
    input:
        section="results/sections/{sample}.h5ad",
        image=get_image,
    output:
        tsv="results/features/{sample}/nuclear.tsv",
    log:
        "results/logs/nuclear_features/{sample}.log",
    benchmark:
        "results/benchmarks/nuclear_features/{sample}.tsv"
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        fov=get_nuclear_fov,
        min_area_um2=config["evaluation"]["nuclear"]["min_area_um2"],
    script:
        "../scripts/nuclear_features.py"


# One rule for every baseline (wildcard `method`), fitted on the CNN's folds and scored like it.
rule baseline:
    input:
        unpack(get_baseline_inputs),
    output:
        predictions="results/experiments/{experiment}/baselines/{method}/predictions.h5ad",
        per_gene="results/experiments/{experiment}/baselines/{method}/per_gene.tsv",
        summary="results/experiments/{experiment}/baselines/{method}/summary.tsv",
    log:
        "results/logs/baseline/{experiment}/{method}.log",
    benchmark:
        "results/benchmarks/baseline/{experiment}/{method}.tsv"
    conda:
        "../../envs/stpredict.yaml"
    threads: 2
    resources:
        # the random forests hold the features of every training spot
        mem_mb=lambda wc: 32000 if wc.method in NEEDS_FEATURES else 8000,
        runtime=lambda wc: 240 if wc.method in NEEDS_FEATURES else 60,
    params:
        method=lambda wc: wc.method,
        experiment=get_baseline_settings,
        platforms=get_experiment_platforms,
        unit=get_evaluation_unit,
        alpha=lambda wc: evaluation(wc.experiment)["alpha"],
    script:
        "../scripts/run_baseline.py"


rule compare_methods:
    input:
        per_gene="results/experiments/{experiment}/metrics/per_gene.tsv",
        summary="results/experiments/{experiment}/metrics/summary.tsv",
        baseline_per_gene=get_baseline_tables("per_gene"),
        baseline_summary=get_baseline_tables("summary"),
        gene_groups=lambda wc: (
            [evaluation(wc.experiment)["gene_groups"]]
            if evaluation(wc.experiment)["gene_groups"]
            else []
        ),
    output:
        comparison=report(
            "results/experiments/{experiment}/metrics/comparison.tsv",
            caption="../report/comparison.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
        overview=report(
            "results/experiments/{experiment}/metrics/overview.tsv",
            caption="../report/overview.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
    log:
        "results/logs/compare_methods/{experiment}.log",
    conda:
        "../../envs/stpredict.yaml"
    params:
        baselines=lambda wc: experiment_baselines(wc.experiment),
    script:
        "../scripts/compare_methods.py"


rule ols_table:
    input:
        predictions=get_experiment_predictions,
        patches=get_held_out_patches,
    output:
        # per unit x gene x predictor: too long for the report (1.6 MB on the demo)
        tsv="results/experiments/{experiment}/metrics/ols.tsv",
    log:
        "results/logs/ols_table/{experiment}.log",
    conda:
        "../../envs/stpredict.yaml"
    params:
        predictors=["mean_rgb", "brightness", "log_total_umi"],
    script:
        "../scripts/ols_table.py"


rule latent_space:
    input:
        predictions=get_experiment_predictions,
        stores=get_held_out_stores,
        tables=get_held_out_patches,
    output:
        purity=report(
            "results/experiments/{experiment}/latent/purity.tsv",
            caption="../report/purity.rst",
            category="Latent space",
            subcategory="{experiment}",
        ),
        neighbours="results/experiments/{experiment}/latent/neighbour_test.tsv",
        physical="results/experiments/{experiment}/latent/physical.tsv",
        umap="results/experiments/{experiment}/latent/umap.tsv",
        summary="results/experiments/{experiment}/latent/summary.json",
        # one UMAP figure per shown unit (up to 3): unit names are data, so a folder
        umaps=report(
            directory("results/experiments/{experiment}/figures/umap"),
            patterns=["{name}.png"],
            caption="../report/umap.rst",
            category="Latent space",
            subcategory="{experiment}",
        ),
    log:
        "results/logs/latent_space/{experiment}.log",
    conda:
        "../../envs/stpredict.yaml"
    params:
        unit=get_evaluation_unit,
        platforms=get_experiment_platforms,
        seed=lambda wc: EXPERIMENTS[wc.experiment]["seed"],
        n_figures=3,
    script:
        "../scripts/latent_space.py"


rule integrated_gradients:
    input:
        summary="results/experiments/{experiment}/metrics/summary.tsv",
        predictions=get_experiment_predictions,
        stores=get_held_out_stores,
        tables=get_held_out_patches,
        models=get_outer_models,
    output:
        png="results/experiments/{experiment}/figures/integrated_gradients.png",
        png_report=report(
            "results/experiments/{experiment}/figures/report/integrated_gradients.png",
            caption="../report/integrated_gradients.rst",
            category="Latent space",
            subcategory="{experiment}",
        ),
        pdf="results/experiments/{experiment}/figures/integrated_gradients.pdf",
        tsv="results/experiments/{experiment}/latent/integrated_gradients.tsv",
    log:
        "results/logs/integrated_gradients/{experiment}.log",
    conda:
        "../../envs/stpredict.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        cfg=lambda wc: evaluation(wc.experiment)["attributions"],
    script:
        "../scripts/integrated_gradients.py"


rule score_clusters:
    input:
        predictions=get_experiment_predictions,
        section=lambda wc: f"results/sections/{held_out_samples(wc.experiment)[0]}.h5ad",
        histories=get_all_histories,
    output:
        per_class=report(
            "results/experiments/{experiment}/metrics/clusters.tsv",
            caption="../report/clusters.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
        overview="results/experiments/{experiment}/metrics/cluster_overview.tsv",
        confusion="results/experiments/{experiment}/metrics/confusion.tsv",
        confusion_png="results/experiments/{experiment}/figures/confusion.png",
        confusion_png_report=report(
            "results/experiments/{experiment}/figures/report/confusion.png",
            caption="../report/confusion.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
        maps_png="results/experiments/{experiment}/figures/cluster_maps.png",
        maps_png_report=report(
            "results/experiments/{experiment}/figures/report/cluster_maps.png",
            caption="../report/cluster_maps.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
        loss_png="results/experiments/{experiment}/figures/loss.png",
        loss_png_report=report(
            "results/experiments/{experiment}/figures/report/loss.png",
            caption="../report/loss.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
        confusion_pdf="results/experiments/{experiment}/figures/confusion.pdf",
        maps_pdf="results/experiments/{experiment}/figures/cluster_maps.pdf",
        loss_pdf="results/experiments/{experiment}/figures/loss.pdf",
    log:
        "results/logs/score_clusters/{experiment}.log",
    conda:
        "../../envs/stpredict.yaml"
    params:
        unit=get_evaluation_unit,
    script:
        "../scripts/score_clusters.py"


rule summarise_experiments:
    input:
        overviews=[
            f"results/experiments/{n}/metrics/overview.tsv"
            for n in regression_experiments()
        ],
        clusters=[
            f"results/experiments/{n}/metrics/cluster_overview.tsv"
            for n in cluster_experiments()
        ],
    output:
        tsv=report(
            "results/summary.tsv",
            caption="../report/run_summary.rst",
            category="Summary",
        ),
    log:
        "results/logs/summarise_experiments.log",
    conda:
        "../../envs/stpredict.yaml"
    script:
        "../scripts/summarise_experiments.py"
