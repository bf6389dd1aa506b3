# The embedded demo cohort: raw Space Ranger / legacy ST outputs in their true formats,
# IHC, unlabelled and whole-slide images, and the planted truth, all from one seed.


rule make_demo:
    output:
        roles=DEMO_ROLES,
        files=get_demo_files(),
        dirs=[directory(d) for d in DEMO_OUTPUTS["directories"]],
    log:
        "results/logs/make_demo.log",
    benchmark:
        "results/benchmarks/make_demo.tsv"
    conda:
        "../../envs/stpredict.yaml"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=20,
    params:
        outdir=get_demo_outdir,
        seed=config["demo"]["seed"],
    script:
        "../scripts/make_demo.py"
