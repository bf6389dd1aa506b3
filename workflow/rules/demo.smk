# The embedded demo cohort: raw Space Ranger / legacy ST outputs in their true formats,
# IHC, unlabelled and whole-slide images, and the planted truth, all from one seed.


rule make_demo:
    output:
        files=DEMO_OUTPUTS["files"],
        dirs=[directory(d) for d in DEMO_OUTPUTS["directories"]],
    params:
        outdir=DEMO_DIR,
        seed=config["demo"]["seed"],
    threads: 2
    resources:
        mem_mb=6000,
        runtime=20,
    log:
        "results/logs/make_demo.log",
    benchmark:
        "results/benchmarks/make_demo.tsv"
    script:
        "../scripts/make_demo.py"
