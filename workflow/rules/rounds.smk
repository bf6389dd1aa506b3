# The learn stage's semi-supervised part: DeepSpaCE's noisy-student teacher/student rounds.
# Round 0 is the teacher (the fold models of learn.smk); per round, outer fold and chain (a
# control) one pseudo_label job and one train_student job (each gpu=1), so a cluster runs the
# rounds as a chain and a failed round reruns alone. Rule names are fixed (wildcards only).
# Input functions and parse-time checks: the end of common.smk.


rule tile_pool:
    input:
        unpack(get_tile_inputs),
    output:
        npy="results/experiments/{experiment}/pool/{kind}.npy",
        tsv="results/experiments/{experiment}/pool/{kind}.tsv",
        json="results/experiments/{experiment}/pool/{kind}.json",
    log:
        "results/logs/tile_pool/{experiment}/{kind}.log",
    benchmark:
        "results/benchmarks/tile_pool/{experiment}/{kind}.tsv"
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        patches=config["patches"],
        whiteness=config["qc"]["whiteness"],
        background=WSI["background"],
    script:
        "../scripts/tile_pool.py"


rule tile_pool_slide:
    # whole-slide tiles of the `wsi` pool source, cut at this experiment's own geometry (its
    # stores' field of view and patch side), ST-Net's background rule marking glass tiles
    input:
        unpack(get_pool_slide_inputs),
    output:
        npy="results/experiments/{experiment}/pool/wsi/{pool_slide}/tiles.npy",
        tsv="results/experiments/{experiment}/pool/wsi/{pool_slide}/tiles.tsv",
        json="results/experiments/{experiment}/pool/wsi/{pool_slide}/tiles.json",
    log:
        "results/logs/tile_pool_slide/{experiment}/{pool_slide}.log",
    benchmark:
        "results/benchmarks/tile_pool_slide/{experiment}/{pool_slide}.tsv"
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        mpp=lambda wc: pool_slide_row(wc)["mpp"],
        background=config["wsi"]["background"],
        mpp_tolerance=config["reading"]["mpp_tolerance"],
    script:
        "../scripts/tile_pool_slide.py"


rule pseudo_label:
    input:
        unpack(get_round_inputs),
    output:
        tsv="results/experiments/{experiment}/round{round}/{control}/folds/{fold}/pseudo.tsv",
        pool="results/experiments/{experiment}/round{round}/{control}/folds/{fold}/pool.tsv",
    log:
        "results/logs/pseudo_label/{experiment}/round{round}/{control}/{fold}.log",
    benchmark:
        "results/benchmarks/pseudo_label/{experiment}/round{round}/{control}/{fold}.tsv"
    priority: 20
    conda:
        "../../envs/stpredict.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        experiment=get_rounds_settings,
    script:
        "../scripts/pseudo_label.py"


rule train_student:
    input:
        unpack(get_student_inputs),
    output:
        # not protected(): a changed round setting must be able to retrain the student
        model="results/experiments/{experiment}/round{round}/{control}/folds/{fold}/model.pt",
        history="results/experiments/{experiment}/round{round}/{control}/folds/{fold}/history.tsv",
        fitted="results/experiments/{experiment}/round{round}/{control}/folds/{fold}/fitted.json",
        predictions="results/experiments/{experiment}/round{round}/{control}/folds/{fold}/predictions.h5ad",
    log:
        "results/logs/train_student/{experiment}/round{round}/{control}/{fold}.log",
    benchmark:
        "results/benchmarks/train_student/{experiment}/round{round}/{control}/{fold}.tsv"
    priority: 20
    conda:
        "../../envs/stpredict.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=720,
    params:
        experiment=get_rounds_settings,
    script:
        "../scripts/train_student.py"


rule summarise_rounds:
    input:
        predictions=get_round_files("predictions"),
        histories=get_round_files("history"),
        fitted=get_round_files("fitted"),
        pools=get_round_files("pool"),
    output:
        tsv=report(
            "results/experiments/{experiment}/rounds.tsv",
            caption="../report/rounds.rst",
            category="Semi-supervised rounds",
            subcategory="{experiment}",
        ),
        pools="results/experiments/{experiment}/pool_summary.tsv",
    log:
        "results/logs/summarise_rounds/{experiment}.log",
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        records=get_round_keys,
        pool_records=get_pool_keys,
    script:
        "../scripts/summarise_rounds.py"


rule plot_rounds:
    input:
        tsv="results/experiments/{experiment}/rounds.tsv",
    output:
        png="results/experiments/{experiment}/figures/rounds.png",
        png_report=report(
            "results/experiments/{experiment}/figures/report/rounds.png",
            caption="../report/rounds_figure.rst",
            category="Semi-supervised rounds",
            subcategory="{experiment}",
        ),
        pdf="results/experiments/{experiment}/figures/rounds.pdf",
    log:
        "results/logs/plot_rounds/{experiment}.log",
    conda:
        "../../envs/stpredict.yaml"
    script:
        "../scripts/plot_rounds.py"
