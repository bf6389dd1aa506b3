# Patch stores: one contiguous uint8 array per section, centres and flags beside it.


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
        mem_mb=8000,
        runtime=30,
    params:
        patches=config["patches"],
        whiteness=config["qc"]["whiteness"],
    script:
        "../scripts/extract_patches.py"
