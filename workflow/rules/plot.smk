# Figures of an experiment (ST-Net Figs. 2a-d, loss curves) and of the dataset.


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
        consistency_pdf="results/experiments/{experiment}/figures/consistency.pdf",
        auroc_pdf="results/experiments/{experiment}/figures/auroc.pdf",
        methods_pdf="results/experiments/{experiment}/figures/methods.pdf",
        maps_pdf="results/experiments/{experiment}/figures/maps.pdf",
        loss_pdf="results/experiments/{experiment}/figures/loss.pdf",
    log:
        "results/logs/plot_experiment/{experiment}.log",
    conda:
        "../../envs/stpredict.yaml"
    params:
        unit=get_evaluation_unit,
        maps=lambda wc: evaluation(wc.experiment)["maps"],
    script:
        "../scripts/plot_experiment.py"


rule plot_superres:
    input:
        h5ad="results/superres/{experiment}/{sample}.h5ad",
    output:
        png=report(
            "results/superres/{experiment}/{sample}.png",
            caption="../report/superres.rst",
            category="Super-resolution",
            subcategory="{experiment}",
            labels={"section": "{sample}"},
        ),
        pdf="results/superres/{experiment}/{sample}.pdf",
    log:
        "results/logs/plot_superres/{experiment}/{sample}.log",
    conda:
        "../../envs/stpredict.yaml"
    params:
        genes=lambda wc: evaluation(wc.experiment)["maps"]["genes"],
    script:
        "../scripts/plot_superres.py"


rule plot_dataset:
    input:
        qc=expand("results/qc/{sample}.h5ad", sample=SAMPLE_IDS),
    output:
        png=report(
            "results/figures/dataset.png",
            caption="../report/dataset.rst",
            category="Figures",
        ),
        pdf="results/figures/dataset.pdf",
    log:
        "results/logs/plot_dataset.log",
    conda:
        "../../envs/stpredict.yaml"
    script:
        "../scripts/plot_dataset.py"
