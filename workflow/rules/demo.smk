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


# The demo's external cohort (a new patient no experiment trains on: one ST section with
# counts, one image-only row) and its sheet, for the demo's predict-only run (cohorts:).
# A rule of its own: adding it does not rerun make_demo and what follows on a finished demo.
rule make_demo_cohort:
    output:
        files=DEMO_COHORT_FILES[:-1],
        sheet=DEMO_COHORT_SHEET,
    log:
        "results/logs/make_demo_cohort.log",
    benchmark:
        "results/benchmarks/make_demo_cohort.tsv"
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        outdir=get_demo_cohort_outdir,
        seed=config["demo"]["seed"],
    script:
        "../scripts/make_demo_cohort.py"
