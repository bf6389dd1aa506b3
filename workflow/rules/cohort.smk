# Predict-only runs on new cohorts (cohorts: in the config): each section of a cohort's sheet
# read, QC'd (the cohort's thresholds), cut at the MODEL's geometry (field of view and patch
# size of its model.json card, the section's own µm/px) and predicted by every fold model of
# the models folder of an earlier run (mean over folds, TTA); sections with counts are scored
# against their measurements transformed with the folds' fitted transforms (external
# validation, nothing refitted); image-only rows (platform image) are predicted only. Nothing
# is trained: no rule here reads or writes results/experiments/ except the models folder.
# Parse-time helpers: the end of common.smk (cohorts).


rule cohort_read_section:
    input:
        unpack(get_cohort_section_inputs),
    output:
        h5ad="results/cohorts/{cohort}/sections/{section}.h5ad",
    log:
        "results/logs/cohorts/{cohort}/read_section/{section}.log",
    benchmark:
        "results/benchmarks/cohorts/{cohort}/read_section/{section}.tsv"
    wildcard_constraints:
        section=_alternatives(COHORT_KINDS["counts"]),
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        row=cohort_row,
        mpp_tolerance=config["reading"]["mpp_tolerance"],
        bounds_check=config["reading"]["bounds_check"],
    script:
        "../scripts/read_section.py"


rule cohort_patches:
    input:
        section="results/cohorts/{cohort}/sections/{section}.h5ad",
        image=lambda wc: cohort_row(wc)["image"],
        card=cohort_card,
    output:
        npy="results/cohorts/{cohort}/patches/{section}/spots.npy",
        tsv="results/cohorts/{cohort}/patches/{section}/spots.tsv",
        json="results/cohorts/{cohort}/patches/{section}/spots.json",
    log:
        "results/logs/cohorts/{cohort}/patches/{section}.log",
    benchmark:
        "results/benchmarks/cohorts/{cohort}/patches/{section}.tsv"
    wildcard_constraints:
        section=_alternatives(COHORT_KINDS["counts"]),
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=16000,
        runtime=30,
    params:
        whiteness=lambda wc: COHORTS[wc.cohort]["qc"]["whiteness"],
        mpp_tolerance=config["reading"]["mpp_tolerance"],
    script:
        "../scripts/cohort_patches.py"


rule cohort_qc:
    input:
        section="results/cohorts/{cohort}/sections/{section}.h5ad",
        patches="results/cohorts/{cohort}/patches/{section}/spots.tsv",
    output:
        h5ad="results/cohorts/{cohort}/qc/{section}.h5ad",
        tsv="results/cohorts/{cohort}/qc/{section}.tsv",
    log:
        "results/logs/cohorts/{cohort}/qc/{section}.log",
    benchmark:
        "results/benchmarks/cohorts/{cohort}/qc/{section}.tsv"
    wildcard_constraints:
        section=_alternatives(COHORT_KINDS["counts"]),
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        qc=lambda wc: COHORTS[wc.cohort]["qc"],
    script:
        "../scripts/filter_spots.py"


rule cohort_predict:
    input:
        qc="results/cohorts/{cohort}/qc/{section}.h5ad",
        section="results/cohorts/{cohort}/sections/{section}.h5ad",
        store="results/cohorts/{cohort}/patches/{section}/spots.npy",
        card=cohort_card,
    output:
        h5ad="results/cohorts/{cohort}/predictions/{section}.h5ad",
    log:
        "results/logs/cohorts/{cohort}/predict/{section}.log",
    benchmark:
        "results/benchmarks/cohorts/{cohort}/predict/{section}.tsv"
    wildcard_constraints:
        section=_alternatives(COHORT_KINDS["counts"]),
    conda:
        "../../envs/stpredict.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        tta=lambda wc: COHORTS[wc.cohort]["tta"],
        batch_size=lambda wc: COHORTS[wc.cohort]["batch_size"],
        min_gene_share=lambda wc: COHORTS[wc.cohort]["min_gene_share"],
    script:
        "../scripts/cohort_predict.py"


rule cohort_grid:
    input:
        section="results/cohorts/{cohort}/sections/{section}.h5ad",
        spots="results/cohorts/{cohort}/patches/{section}/spots.json",
        image=lambda wc: cohort_row(wc)["image"],
        card=cohort_card,
    output:
        npy="results/cohorts/{cohort}/patches/{section}/{grid}.npy",
        tsv="results/cohorts/{cohort}/patches/{section}/{grid}.tsv",
        json="results/cohorts/{cohort}/patches/{section}/{grid}.json",
    log:
        "results/logs/cohorts/{cohort}/grid/{section}/{grid}.log",
    benchmark:
        "results/benchmarks/cohorts/{cohort}/grid/{section}/{grid}.tsv"
    wildcard_constraints:
        section=_alternatives(COHORT_KINDS["counts"]),
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=16000,
        runtime=30,
    params:
        max_white_frac=lambda wc: COHORTS[wc.cohort]["qc"]["whiteness"][
            "max_white_frac"
        ],
        mpp_tolerance=config["reading"]["mpp_tolerance"],
    script:
        "../scripts/cohort_grid.py"


rule cohort_superres:
    input:
        unpack(get_cohort_superres_inputs),
    output:
        h5ad="results/cohorts/{cohort}/superres/{section}.h5ad",
    log:
        "results/logs/cohorts/{cohort}/superres/{section}.log",
    benchmark:
        "results/benchmarks/cohorts/{cohort}/superres/{section}.tsv"
    wildcard_constraints:
        section=_alternatives(COHORT_KINDS["counts"]),
    conda:
        "../../envs/stpredict.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        grid=get_cohort_grid,
        tta=lambda wc: COHORTS[wc.cohort]["tta"],
        whiteness=lambda wc: COHORTS[wc.cohort]["qc"]["whiteness"]["enabled"],
    script:
        "../scripts/cohort_superres.py"


rule cohort_score:
    input:
        predictions=get_cohort_predictions,
    output:
        per_gene="results/cohorts/{cohort}/metrics/per_gene.tsv",
        summary=report(
            "results/cohorts/{cohort}/metrics/summary.tsv",
            caption="../report/cohort_summary.rst",
            category="Cohorts",
            labels={"cohort": "{cohort}"},
        ),
    log:
        "results/logs/cohorts/{cohort}/score.log",
    benchmark:
        "results/benchmarks/cohorts/{cohort}/score.tsv"
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        alpha=lambda wc: COHORTS[wc.cohort]["alpha"],
    script:
        "../scripts/cohort_score.py"


# ---------------------------------------------------------------- image-only rows
rule cohort_predict_image:
    input:
        unpack(get_cohort_image_inputs),
    output:
        h5ad="results/cohorts/{cohort}/predictions/{section}.h5ad",
        npy="results/cohorts/{cohort}/patches/{section}/tiles.npy",
        tsv="results/cohorts/{cohort}/patches/{section}/tiles.tsv",
        json="results/cohorts/{cohort}/patches/{section}/tiles.json",
    log:
        "results/logs/cohorts/{cohort}/predict_image/{section}.log",
    benchmark:
        "results/benchmarks/cohorts/{cohort}/predict_image/{section}.tsv"
    wildcard_constraints:
        section=_alternatives(COHORT_KINDS["image"]),
    conda:
        "../../envs/stpredict.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        row=cohort_row,
        tile_um=None,
        background=WSI["background"],
        tta=lambda wc: COHORTS[wc.cohort]["tta"],
        batch_size=lambda wc: COHORTS[wc.cohort]["batch_size"],
        mpp_tolerance=config["reading"]["mpp_tolerance"],
    script:
        "../scripts/cohort_predict_image.py"


# super-resolution of an image-only row: overlapping tiles stride_um apart over the whole
# image (also for a row with spots: those are its predictions, not a finer grid)
rule cohort_superres_image:
    input:
        unpack(get_cohort_tile_inputs),
    output:
        h5ad="results/cohorts/{cohort}/superres/{section}.h5ad",
        npy="results/cohorts/{cohort}/patches/{section}/stride.npy",
        tsv="results/cohorts/{cohort}/patches/{section}/stride.tsv",
        json="results/cohorts/{cohort}/patches/{section}/stride.json",
    log:
        "results/logs/cohorts/{cohort}/superres_image/{section}.log",
    benchmark:
        "results/benchmarks/cohorts/{cohort}/superres_image/{section}.tsv"
    wildcard_constraints:
        section=_alternatives(COHORT_KINDS["image"]),
    conda:
        "../../envs/stpredict.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        row=cohort_tile_row,
        tile_um=lambda wc: COHORTS[wc.cohort]["stride_um"],
        background=WSI["background"],
        tta=lambda wc: COHORTS[wc.cohort]["tta"],
        batch_size=lambda wc: COHORTS[wc.cohort]["batch_size"],
        mpp_tolerance=config["reading"]["mpp_tolerance"],
    script:
        "../scripts/cohort_predict_image.py"


# ---------------------------------------------------------------- maps (both kinds)
rule cohort_maps:
    input:
        h5ad="results/cohorts/{cohort}/predictions/{section}.h5ad",
    output:
        png="results/cohorts/{cohort}/maps/{section}.png",
        # the small copy the report embeds (write_report_copies)
        png_report=report(
            "results/cohorts/{cohort}/maps/report/{section}.png",
            caption="../report/cohort_maps.rst",
            category="Cohorts",
            labels={"cohort": "{cohort}", "section": "{section}", "figure": "maps"},
        ),
        pdf="results/cohorts/{cohort}/maps/{section}.pdf",
    log:
        "results/logs/cohorts/{cohort}/maps/{section}.log",
    benchmark:
        "results/benchmarks/cohorts/{cohort}/maps/{section}.tsv"
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        genes=lambda wc: COHORTS[wc.cohort]["genes"],
        kind="predictions",
    script:
        "../scripts/cohort_maps.py"


rule cohort_superres_maps:
    input:
        h5ad="results/cohorts/{cohort}/superres/{section}.h5ad",
    output:
        # not in the report (the demo's report stays under 10 MB): results/cohorts/ holds it
        png="results/cohorts/{cohort}/superres/{section}.png",
        pdf="results/cohorts/{cohort}/superres/{section}.pdf",
    log:
        "results/logs/cohorts/{cohort}/superres_maps/{section}.log",
    benchmark:
        "results/benchmarks/cohorts/{cohort}/superres_maps/{section}.tsv"
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        genes=lambda wc: COHORTS[wc.cohort]["genes"],
        kind="superres",
    script:
        "../scripts/cohort_maps.py"
