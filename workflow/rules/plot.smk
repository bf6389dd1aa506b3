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
        consistency="results/experiments/{experiment}/figures/consistency.png",
        consistency_report=report(
            "results/experiments/{experiment}/figures/report/consistency.png",
            caption="../report/consistency.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
        auroc="results/experiments/{experiment}/figures/auroc.png",
        auroc_report=report(
            "results/experiments/{experiment}/figures/report/auroc.png",
            caption="../report/auroc.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
        methods="results/experiments/{experiment}/figures/methods.png",
        methods_report=report(
            "results/experiments/{experiment}/figures/report/methods.png",
            caption="../report/methods.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
        maps="results/experiments/{experiment}/figures/maps.png",
        maps_report=report(
            "results/experiments/{experiment}/figures/report/maps.png",
            caption="../report/maps.rst",
            category="Figures",
            subcategory="{experiment}",
        ),
        loss="results/experiments/{experiment}/figures/loss.png",
        loss_report=report(
            "results/experiments/{experiment}/figures/report/loss.png",
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
        png="results/superres/{experiment}/{sample}.png",
        png_report=report(
            "results/superres/{experiment}/report/{sample}.png",
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
        png="results/figures/dataset.png",
        png_report=report(
            "results/figures/report/dataset.png",
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
