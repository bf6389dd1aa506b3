# Whole slides (ST-Net's TCGA application): the model card of each regression experiment
# (what its fold models need to predict a new image), every slide of wsi.slides tiled at the
# model's field of view and predicted by the fold models of wsi.experiment (mean over folds,
# TTA), and a heatmap per slide. predict_slide calls stpredict.predict_image, as the
# `stpredict predict` command does.


rule model_card:
    input:
        unpack(get_card_inputs),
    output:
        json="results/experiments/{experiment}/model.json",
    log:
        "results/logs/model_card/{experiment}.log",
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        settings=get_card_settings,
    script:
        "../scripts/model_card.py"


rule predict_slide:
    input:
        unpack(get_slide_inputs),
    output:
        h5ad="results/wsi/{slide}.h5ad",
        npy="results/wsi/{slide}/tiles.npy",
        tsv="results/wsi/{slide}/tiles.tsv",
        json="results/wsi/{slide}/tiles.json",
    log:
        "results/logs/predict_slide/{slide}.log",
    benchmark:
        "results/benchmarks/predict_slide/{slide}.tsv"
    conda:
        "../../envs/stpredict.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=slide_mem_mb,
        runtime=120,
    params:
        mpp=lambda wc: slide_row(wc)["mpp"],
        tile_um=WSI["tile_um"],
        background=WSI["background"],
        batch_size=WSI["batch_size"],
    script:
        "../scripts/predict_slide.py"


rule plot_slide:
    input:
        h5ad="results/wsi/{slide}.h5ad",
        summary=get_slide_summary,
    output:
        png="results/wsi/{slide}.png",
        png_report=report(
            "results/wsi/report/{slide}.png",
            caption="../report/wsi_heatmap.rst",
            category="Whole slides",
            labels={"slide": "{slide}"},
        ),
        pdf="results/wsi/{slide}.pdf",
    log:
        "results/logs/plot_slide/{slide}.log",
    benchmark:
        "results/benchmarks/plot_slide/{slide}.tsv"
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        genes=WSI["genes"],
    script:
        "../scripts/plot_slide.py"
