# Per-fold training and prediction: split manifests, one GPU job per fold, predictions per
# held-out section.


rule make_splits:
    input:
        qc=get_experiment_qc,
        cluster_map=get_cluster_map,
    output:
        splits="results/experiments/{experiment}/splits.tsv",
    log:
        "results/logs/make_splits/{experiment}.log",
    priority: 20
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        experiment=get_split_settings,
        sheet=get_split_sheet,
    script:
        "../scripts/make_splits.py"


rule train_fold:
    input:
        unpack(get_fold_inputs),
    output:
        # not protected(): a changed training setting must be able to retrain the fold
        model="results/experiments/{experiment}/folds/{fold}/model.pt",
        history="results/experiments/{experiment}/folds/{fold}/history.tsv",
        fitted="results/experiments/{experiment}/folds/{fold}/fitted.json",
    log:
        "results/logs/train_fold/{experiment}/{fold}.log",
    benchmark:
        "results/benchmarks/train_fold/{experiment}/{fold}.tsv"
    priority: 20
    conda:
        "../../envs/stpredict.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=train_mem_mb,
        runtime=720,
    params:
        experiment=get_train_settings,
    script:
        "../scripts/train_fold.py"


rule predict_fold:
    input:
        unpack(get_fold_inputs),
        model="results/experiments/{experiment}/folds/{fold}/model.pt",
        fitted="results/experiments/{experiment}/folds/{fold}/fitted.json",
    output:
        h5ad="results/experiments/{experiment}/folds/{fold}/predictions.h5ad",
    log:
        "results/logs/predict_fold/{experiment}/{fold}.log",
    benchmark:
        "results/benchmarks/predict_fold/{experiment}/{fold}.tsv"
    priority: 20
    conda:
        "../../envs/stpredict.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=predict_mem_mb,
        runtime=120,
    params:
        experiment=get_predict_settings,
    script:
        "../scripts/predict_fold.py"


rule collect_predictions:
    input:
        folds=get_section_folds,
        # uns["spatial"] and var["gene_ids"] of the section: the file opens on its own
        section="results/sections/{sample}.h5ad",
        cluster_map=get_cluster_map,
    output:
        h5ad="results/experiments/{experiment}/predictions/{sample}.h5ad",
    log:
        "results/logs/collect_predictions/{experiment}/{sample}.log",
    priority: 20
    conda:
        "../../envs/stpredict.yaml"
    script:
        "../scripts/collect_predictions.py"


# Super-resolution: the grid centres of a held-out section predicted (TTA) by the mean of the
# fold models that test it, beside its measured spots and their held-out predictions.
rule predict_superres:
    input:
        unpack(get_superres_inputs),
    output:
        h5ad="results/superres/{experiment}/{sample}.h5ad",
    log:
        "results/logs/predict_superres/{experiment}/{sample}.log",
    benchmark:
        "results/benchmarks/predict_superres/{experiment}/{sample}.tsv"
    conda:
        "../../envs/stpredict.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=predict_mem_mb,
        runtime=120,
    params:
        grid=lambda wc: superres_grid(wc.experiment, wc.sample),
        tta=lambda wc: EXPERIMENTS[wc.experiment]["tta"],
        precision=lambda wc: EXPERIMENTS[wc.experiment]["train"]["precision"],
        whiteness=config["qc"]["whiteness"]["enabled"],
    script:
        "../scripts/predict_superres.py"
