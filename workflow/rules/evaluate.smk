# Evaluation of the held-out predictions: metrics, baselines on the same folds, the DeepSpaCE
# OLS table, latent space, attributions, cluster-task metrics, figures and run summaries.


rule score_predictions:
    input:
        predictions=get_experiment_predictions,
    output:
        per_gene=report(
            "results/experiments/{experiment}/metrics/per_gene.tsv",
            caption="../report/per_gene.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
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


# One rule per baseline, each fitted on the CNN's folds and scored like the CNN.
for _method in BASELINES:

    rule:
        name:
            f"baseline_{_method}"
        input:
            unpack(lambda wc, m=_method: get_baseline_inputs(wc, m)),
        output:
            predictions=f"results/experiments/{{experiment}}/baselines/{_method}/predictions.h5ad",
            per_gene=f"results/experiments/{{experiment}}/baselines/{_method}/per_gene.tsv",
            summary=f"results/experiments/{{experiment}}/baselines/{_method}/summary.tsv",
        log:
            f"results/logs/baseline_{_method}/{{experiment}}.log",
        benchmark:
            f"results/benchmarks/baseline_{_method}/{{experiment}}.tsv"
        conda:
            "../../envs/stpredict.yaml"
        threads: 2
        resources:
            mem_mb=8000,
            runtime=120,
        params:
            method=_method,
            experiment=get_experiment,
            platforms=get_experiment_platforms,
            unit=get_evaluation_unit,
            alpha=lambda wc: evaluation(wc.experiment)["alpha"],
        script:
            "../scripts/run_baseline.py"


rule compare_methods:
    input:
        per_gene="results/experiments/{experiment}/metrics/per_gene.tsv",
        summary="results/experiments/{experiment}/metrics/summary.tsv",
        baselines=get_baseline_scores,
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
        gene_groups=lambda wc: evaluation(wc.experiment)["gene_groups"],
    script:
        "../scripts/compare_methods.py"


rule ols_table:
    input:
        predictions=get_experiment_predictions,
        patches=get_held_out_patches,
    output:
        tsv=report(
            "results/experiments/{experiment}/metrics/ols.tsv",
            caption="../report/ols.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
    log:
        "results/logs/ols_table/{experiment}.log",
    conda:
        "../../envs/stpredict.yaml"
    params:
        predictors=["mean_rgb", "brightness", "log_total_umi"],
    script:
        "../scripts/ols_table.py"


# One latent-space job per experiment: its number of UMAP figures (units shown) is known here.
for _name in [n for n in EXPERIMENTS if evaluation(n)["latent"]]:

    rule:
        name:
            f"latent_space_{rule_suffix(_name)}"
        input:
            predictions=experiment_predictions([_name]),
            stores=[f"results/patches/{s}/spots.npy" for s in held_out_samples(_name)],
            tables=[f"results/patches/{s}/spots.tsv" for s in held_out_samples(_name)],
        output:
            purity=report(
                f"results/experiments/{_name}/latent/purity.tsv",
                caption="../report/purity.rst",
                category="Latent space",
                subcategory=_name,
            ),
            neighbours=f"results/experiments/{_name}/latent/neighbour_test.tsv",
            physical=f"results/experiments/{_name}/latent/physical.tsv",
            umap=f"results/experiments/{_name}/latent/umap.tsv",
            summary=f"results/experiments/{_name}/latent/summary.json",
            umaps=report(
                [
                    f"results/experiments/{_name}/figures/umap_{i}.png"
                    for i in range(1, n_umap_figures(_name) + 1)
                ],
                caption="../report/umap.rst",
                category="Latent space",
                subcategory=_name,
            ),
        log:
            f"results/logs/latent_space/{_name}.log",
        conda:
            "../../envs/stpredict.yaml"
        params:
            name=_name,
            unit=get_evaluation_unit({"experiment": _name}),
            platforms=get_experiment_platforms({"experiment": _name}),
            seed=EXPERIMENTS[_name]["seed"],
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
        png=report(
            "results/experiments/{experiment}/figures/integrated_gradients.png",
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
    resources:
        gpu=1,
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
        confusion_png=report(
            "results/experiments/{experiment}/figures/confusion.png",
            caption="../report/confusion.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
        maps_png=report(
            "results/experiments/{experiment}/figures/cluster_maps.png",
            caption="../report/cluster_maps.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
        loss_png=report(
            "results/experiments/{experiment}/figures/loss.png",
            caption="../report/loss.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
    log:
        "results/logs/score_clusters/{experiment}.log",
    conda:
        "../../envs/stpredict.yaml"
    params:
        unit=get_evaluation_unit,
    script:
        "../scripts/score_clusters.py"


rule plot_experiment:
    input:
        summary="results/experiments/{experiment}/metrics/summary.tsv",
        per_gene="results/experiments/{experiment}/metrics/per_gene.tsv",
        comparison="results/experiments/{experiment}/metrics/comparison.tsv",
        predictions=get_experiment_predictions,
        sections=lambda wc: [
            f"results/sections/{s}.h5ad" for s in held_out_samples(wc.experiment)
        ],
        histories=get_all_histories,
    output:
        consistency=report(
            "results/experiments/{experiment}/figures/consistency.png",
            caption="../report/consistency.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
        auroc=report(
            "results/experiments/{experiment}/figures/auroc.png",
            caption="../report/auroc.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
        methods=report(
            "results/experiments/{experiment}/figures/methods.png",
            caption="../report/methods.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
        maps=report(
            "results/experiments/{experiment}/figures/maps.png",
            caption="../report/maps.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
        loss=report(
            "results/experiments/{experiment}/figures/loss.png",
            caption="../report/loss.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
    log:
        "results/logs/plot_experiment/{experiment}.log",
    conda:
        "../../envs/stpredict.yaml"
    params:
        unit=get_evaluation_unit,
        maps=lambda wc: evaluation(wc.experiment)["maps"],
    script:
        "../scripts/plot_experiment.py"


rule plot_dataset:
    input:
        qc=expand("results/qc/{sample}.h5ad", sample=SAMPLE_IDS),
    output:
        png=report(
            "results/figures/dataset.png",
            caption="../report/dataset.rst",
            category="Figures",
        ),
    log:
        "results/logs/plot_dataset.log",
    conda:
        "../../envs/stpredict.yaml"
    script:
        "../scripts/plot_dataset.py"


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
