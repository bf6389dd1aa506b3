# Patch stores (one contiguous uint8 array per section, centres and flags beside it) and spot QC
# (UMI / gene thresholds and the whiteness filter, a figure per section, a summary).


rule extract_patches:
    input:
        section="results/sections/{sample}.h5ad",
        image=get_image,
    output:
        npy="results/patches/{sample}/spots.npy",
        tsv="results/patches/{sample}/spots.tsv",
        json="results/patches/{sample}/spots.json",
    log:
        "results/logs/extract_patches/{sample}.log",
    benchmark:
        "results/benchmarks/extract_patches/{sample}.tsv"
    priority: 30
    conda:
        "../../envs/stpredict.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=30,
    params:
        patches=config["patches"],
        whiteness=config["qc"]["whiteness"],
    script:
        "../scripts/extract_patches.py"


# Super-resolution centres (triangles / squares / stride grids, patches.centres) through the
# same extractor into a store of the same format; whiteness flagged with the section's
# threshold of its spot patches (read from spots.json, not recomputed from the grid).
rule extract_grid:
    input:
        section="results/sections/{sample}.h5ad",
        spots="results/patches/{sample}/spots.json",
        image=get_image,
    output:
        npy="results/patches/{sample}/{grid}.npy",
        tsv="results/patches/{sample}/{grid}.tsv",
        json="results/patches/{sample}/{grid}.json",
    log:
        "results/logs/extract_grid/{sample}/{grid}.log",
    benchmark:
        "results/benchmarks/extract_grid/{sample}/{grid}.tsv"
    conda:
        "../../envs/stpredict.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=30,
    params:
        patches=config["patches"],
        max_white_frac=config["qc"]["whiteness"]["max_white_frac"],
    script:
        "../scripts/extract_grid.py"


rule filter_spots:
    input:
        section="results/sections/{sample}.h5ad",
        patches="results/patches/{sample}/spots.tsv",
    output:
        h5ad="results/qc/{sample}.h5ad",
        tsv="results/qc/{sample}.tsv",
        # its report copy is written by summarise_qc (a new output here would rerun every
        # job downstream of the QC'd sections when upgrading a finished run)
        png="results/qc/{sample}.png",
    log:
        "results/logs/filter_spots/{sample}.log",
    priority: 30
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        qc=config["qc"],
    script:
        "../scripts/filter_spots.py"


rule summarise_qc:
    input:
        tsv=expand("results/qc/{sample}.tsv", sample=SAMPLE_IDS),
        h5ad=expand("results/qc/{sample}.h5ad", sample=SAMPLE_IDS),
        png=expand("results/qc/{sample}.png", sample=SAMPLE_IDS),
    output:
        summary=report(
            "results/qc/summary.tsv",
            caption="../report/qc_summary.rst",
            category="Quality control",
        ),
        # the small copies of the QC figures that the report embeds
        png_report=[
            report(
                f"results/qc/report/{s}.png",
                caption="../report/qc_section.rst",
                category="Quality control",
                labels={"section": s},
            )
            for s in SAMPLE_IDS
        ],
    log:
        "results/logs/summarise_qc.log",
    conda:
        "../../envs/stpredict.yaml"
    script:
        "../scripts/summarise_qc.py"
