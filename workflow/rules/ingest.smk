# Raw Space Ranger / legacy ST outputs -> one AnnData per section, with geometry checks.


rule read_section:
    input:
        unpack(get_section_inputs),
    output:
        h5ad="results/sections/{sample}.h5ad",
    log:
        "results/logs/read_section/{sample}.log",
    priority: 30
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        row=get_row,
        mpp_tolerance=config["reading"]["mpp_tolerance"],
        bounds_check=config["reading"]["bounds_check"],
    script:
        "../scripts/read_section.py"


rule write_run_config:
    output:
        config="results/run/config.resolved.yaml",
        samples="results/run/samples.tsv",
    log:
        "results/logs/write_run_config.log",
    conda:
        "../../envs/stpredict.yaml"
    params:
        config=config,
        # every experiment with its defaults filled in (and sections.each expanded)
        experiments=EXPERIMENTS,
        samples=SAMPLES,
    script:
        "../scripts/write_run_config.py"
