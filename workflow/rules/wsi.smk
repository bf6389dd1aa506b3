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


# Pseudo-bulk analyses (ST-Net's TCGA analysis; stpredict.wsi.bulk, coloc, subtype): the mean
# prediction per slide vs the bulk table, tumour/immune co-localisation within slides against
# a permutation null, subtype classification from pseudo-bulk, bulk and image features.


rule pseudobulk:
    input:
        h5ad=slide_files(),
        bulk=lambda wc: WSI["bulk"],
        gene_groups=lambda wc: (
            [config["evaluation"]["gene_groups"]]
            if config["evaluation"]["gene_groups"]
            else []
        ),
    output:
        tsv="results/wsi/pseudobulk_vs_bulk.tsv",
        summary=report(
            "results/wsi/pseudobulk_summary.tsv",
            caption="../report/pseudobulk_summary.rst",
            category="Whole slides",
        ),
        means="results/wsi/pseudobulk.tsv",
    log:
        "results/logs/pseudobulk.log",
    benchmark:
        "results/benchmarks/pseudobulk.tsv"
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        slides=SLIDE_IDS,
        bulk_units=WSI["bulk_units"],
        fdr=WSI["fdr"],
    script:
        "../scripts/pseudobulk.py"


rule colocalisation:
    input:
        h5ad=slide_files(),
    output:
        tsv=report(
            "results/wsi/colocalisation.tsv",
            caption="../report/colocalisation.rst",
            category="Whole slides",
        ),
    log:
        "results/logs/colocalisation.log",
    benchmark:
        "results/benchmarks/colocalisation.tsv"
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        slides=SLIDE_IDS,
        markers=WSI["colocalisation"]["markers"],
        n_perm=WSI["colocalisation"]["n_perm"],
        seed=wsi_seed("colocalisation"),
    script:
        "../scripts/colocalisation.py"


rule subtype:
    input:
        h5ad=slide_files(LABELLED_SLIDES),
        bulk=[WSI["bulk"]] if WSI["bulk"] else [],
    output:
        tsv=report(
            "results/wsi/subtype.tsv",
            caption="../report/subtype.rst",
            category="Whole slides",
        ),
        scores="results/wsi/subtype_scores.tsv",
    log:
        "results/logs/subtype.log",
    benchmark:
        "results/benchmarks/subtype.tsv"
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        slides=LABELLED_SLIDES,
        table=subtype_table() if LABELLED_SLIDES else {},
        bulk_units=WSI["bulk_units"],
        settings={k: v for k, v in WSI["subtype"].items() if k != "seed"}
        | {"seed": wsi_seed("subtype")},
    script:
        "../scripts/subtype.py"


rule plot_pseudobulk:
    input:
        unpack(get_pseudobulk_figure_inputs),
    output:
        png="results/figures/pseudobulk.png",
        png_report=report(
            "results/figures/report/pseudobulk.png",
            caption="../report/pseudobulk.rst",
            category="Whole slides",
        ),
        pdf="results/figures/pseudobulk.pdf",
    log:
        "results/logs/plot_pseudobulk.log",
    benchmark:
        "results/benchmarks/plot_pseudobulk.tsv"
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        bulk_units=WSI["bulk_units"],
    script:
        "../scripts/plot_pseudobulk.py"
