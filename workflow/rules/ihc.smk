# IHC of adjacent sections (DeepSpaCE): registration to the H&E, per-spot protein measures,
# correlation with predicted and measured expression, figures. One job per IHC section each;
# the plan (which experiment each IHC section is compared with) is made in common.smk.


rule register_ihc:
    input:
        unpack(get_ihc_registration_inputs),
    output:
        json="results/ihc/{sample}_registration.json",
    log:
        "results/logs/register_ihc/{sample}.log",
    benchmark:
        "results/benchmarks/register_ihc/{sample}.tsv"
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        registration=config["ihc"]["registration"],
        seed=IHC_SEED,
    script:
        "../scripts/register_ihc.py"


rule quantify_ihc:
    input:
        registration="results/ihc/{sample}_registration.json",
        ihc=lambda wc: ihc_entry(wc)["image"],
        qc="results/qc/{sample}.h5ad",
        predictions=get_ihc_predictions,
    output:
        # per spot: too long for the report, which shows the summary
        tsv="results/ihc/{sample}.tsv",
    log:
        "results/logs/quantify_ihc/{sample}.log",
    benchmark:
        "results/benchmarks/quantify_ihc/{sample}.tsv"
    conda:
        "../../envs/stpredict.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        gene=lambda wc: ihc_entry(wc)["gene"],
        experiment=lambda wc: ihc_entry(wc)["experiment"],
        square_px=config["ihc"]["square_px"],
        square_scale=config["ihc"]["square_scale"],
    script:
        "../scripts/quantify_ihc.py"


rule correlate_ihc:
    input:
        spots="results/ihc/{sample}.tsv",
        registration="results/ihc/{sample}_registration.json",
    output:
        tsv=report(
            "results/ihc/{sample}_summary.tsv",
            caption="../report/ihc_summary.rst",
            category="IHC",
        ),
    log:
        "results/logs/correlate_ihc/{sample}.log",
    benchmark:
        "results/benchmarks/correlate_ihc/{sample}.tsv"
    conda:
        "../../envs/stpredict.yaml"
    params:
        gene=lambda wc: ihc_entry(wc)["gene"],
        experiment=lambda wc: ihc_entry(wc)["experiment"],
        n_boot=config["ihc"]["n_boot"],
        ci=config["ihc"]["ci"],
        seed=IHC_SEED,
    script:
        "../scripts/correlate_ihc.py"


rule plot_ihc:
    input:
        spots="results/ihc/{sample}.tsv",
        summary="results/ihc/{sample}_summary.tsv",
        registration="results/ihc/{sample}_registration.json",
        section="results/qc/{sample}.h5ad",
        ihc=lambda wc: ihc_entry(wc)["image"],
        predictions=get_ihc_predictions,
    output:
        scatter="results/ihc/{sample}_scatter.png",
        scatter_report=report(
            "results/ihc/report/{sample}_scatter.png",
            caption="../report/ihc_scatter.rst",
            category="IHC",
        ),
        scatter_pdf="results/ihc/{sample}_scatter.pdf",
        maps="results/ihc/{sample}_maps.png",
        maps_report=report(
            "results/ihc/report/{sample}_maps.png",
            caption="../report/ihc_maps.rst",
            category="IHC",
        ),
        maps_pdf="results/ihc/{sample}_maps.pdf",
    log:
        "results/logs/plot_ihc/{sample}.log",
    benchmark:
        "results/benchmarks/plot_ihc/{sample}.tsv"
    conda:
        "../../envs/stpredict.yaml"
    params:
        gene=lambda wc: ihc_entry(wc)["gene"],
    script:
        "../scripts/plot_ihc.py"
