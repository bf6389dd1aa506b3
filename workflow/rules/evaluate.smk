# Scores of the held-out predictions: per gene x held-out unit, and per-gene summaries.


rule score_predictions:
    input:
        predictions=get_experiment_predictions,
    output:
        per_gene=report(
            "results/experiments/{experiment}/metrics/per_gene.tsv",
            caption="../report/per_gene.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
        summary=report(
            "results/experiments/{experiment}/metrics/summary.tsv",
            caption="../report/summary.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
        table1="results/experiments/{experiment}/metrics/table1.tsv",
    log:
        "results/logs/score_predictions/{experiment}.log",
    conda:
        "../../envs/stpredict.yaml"
    params:
        platforms=get_experiment_platforms,
        unit=get_evaluation_unit,
    script:
        "../scripts/score_predictions.py"
