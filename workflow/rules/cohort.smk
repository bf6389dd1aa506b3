# Predict-only runs on new cohorts (cohorts: in the config): each section of a cohort's sheet
# read, QC'd (the cohort's thresholds), cut at the MODEL's geometry (field of view and patch
# size of its model.json card, the section's own µm/px) and predicted by every fold model of
# the models folder of an earlier run (mean over folds, TTA); sections with counts are scored
# against their measurements transformed with the folds' fitted transforms (external
# validation, nothing refitted); image-only rows (platform image) are predicted only. Nothing
# is trained: no rule here reads or writes results/experiments/ except the models folder.
# Parse-time helpers live here (not in common.smk) so that the stage stays in one file.
from stpredict.cohort.plan import (
    check_models,
    has_counts,
    read_cohort_sheet,
    resolve_cohort,
    section_kinds,
)
from stpredict.patches.centres import grid_name as _grid_name
from stpredict.patches.centres import resolve_grid as _resolve_grid

try:
    COHORTS = {
        name: resolve_cohort(name, entry, config)
        for name, entry in (config.get("cohorts") or {}).items()
    }
    COHORT_SHEETS = {}
    for _name, _c in COHORTS.items():
        _demo = (
            (lambda: external_sheet(DEMO_DIR))
            if os.path.normpath(_c["sheet"]) == os.path.normpath(DEMO_COHORT_SHEET)
            else None
        )
        COHORT_SHEETS[_name] = read_cohort_sheet(
            _c["sheet"],
            load_schema(workflow.source_path("../schemas/samples.schema.yaml")),
            produced=DEMO_COHORT_FILES,
            demo_sheet=_demo,
        )
        _c["card"] = check_models(_name, _c["models"], produced=model_cards())
    COHORT_KINDS = section_kinds(COHORT_SHEETS)
except ConfigError as exc:
    raise WorkflowError(f"{exc} (config {CONFIG_FILES})") from None


def _alternatives(ids):
    return "|".join(re.escape(s) for s in sorted(ids)) or "NO_SECTION"


wildcard_constraints:
    cohort="|".join(re.escape(c) for c in COHORTS) or "NO_COHORT",


def cohort_row(wildcards):
    """The cohort sheet's row of ``wildcards.section``, as a plain dict."""
    sheet = COHORT_SHEETS[wildcards.cohort]
    if wildcards.section not in sheet.index:
        raise WorkflowError(
            f"cohort '{wildcards.cohort}' has no section '{wildcards.section}' "
            f"(its sheet {COHORTS[wildcards.cohort]['sheet']})"
        )
    return sheet.loc[wildcards.section].to_dict()


def cohort_counted(name):
    """Sections of a cohort with counts."""
    return [s for s, row in COHORT_SHEETS[name].iterrows() if has_counts(row)]


def cohort_image_only(name):
    """Image-only rows of a cohort."""
    return [s for s, row in COHORT_SHEETS[name].iterrows() if not has_counts(row)]


def cohort_grid(name, section):
    """Super-resolution grid (file name) of a section with counts."""
    c = COHORTS[name]
    kind = _resolve_grid(
        c["grid"], COHORT_SHEETS[name].loc[section, "platform"], sample=section
    )
    return _grid_name(kind, c["stride_um"])


def cohort_outputs(names=None):
    """Every output of the given cohorts (all by default): target predict_cohort."""
    out = []
    for name in names or COHORTS:
        base = f"results/cohorts/{name}"
        sections = list(COHORT_SHEETS[name].index)
        out += [f"{base}/predictions/{s}.h5ad" for s in sections]
        out += [f"{base}/maps/{s}.png" for s in sections]
        if COHORTS[name]["superres"]:
            out += [f"{base}/superres/{s}.{e}" for s in sections for e in ("h5ad", "png")]
        if cohort_counted(name):
            out += [f"{base}/metrics/per_gene.tsv", f"{base}/metrics/summary.tsv"]
    return out


def cohort_card(wildcards):
    """The model card of the cohort's models folder."""
    return COHORTS[wildcards.cohort]["card"]


def cohort_settings(wildcards):
    """The cohort's resolved settings (its qc, tta, batch size, min_gene_share...)."""
    return COHORTS[wildcards.cohort]


def get_cohort_section_inputs(wildcards):
    """Raw inputs of a cohort section with counts (the cells that are filled in)."""
    row = cohort_row(wildcards)
    inputs = {
        col: row[col]
        for col in ("raw", "spots", "image", "annotation", "clusters")
        if row[col]
    }
    if config["reading"]["gene_map"]:
        inputs["gene_map"] = config["reading"]["gene_map"]
    return inputs


def get_cohort_image_inputs(wildcards):
    """Image (and spots) of an image-only row, and the model card."""
    row = cohort_row(wildcards)
    inputs = {"image": row["image"], "card": cohort_card(wildcards)}
    if row["spots"]:
        inputs["spots"] = row["spots"]
    return inputs


def cohort_tile_row(wildcards):
    """An image-only row without its spots: its super-resolution tiles the whole image."""
    return {**cohort_row(wildcards), "spots": ""}


def get_cohort_tile_inputs(wildcards):
    """Image of an image-only row and the model card (not its spots: the row is tiled)."""
    return {"image": cohort_row(wildcards)["image"], "card": cohort_card(wildcards)}


def get_cohort_grid(wildcards):
    return cohort_grid(wildcards.cohort, wildcards.section)


def get_cohort_superres_inputs(wildcards):
    base = f"results/cohorts/{wildcards.cohort}"
    grid = cohort_grid(wildcards.cohort, wildcards.section)
    return {
        "predictions": f"{base}/predictions/{wildcards.section}.h5ad",
        "section": f"{base}/sections/{wildcards.section}.h5ad",
        "grid": f"{base}/patches/{wildcards.section}/{grid}.npy",
        "card": cohort_card(wildcards),
    }


def get_cohort_predictions(wildcards):
    """Prediction files of the cohort's sections with counts (scored)."""
    return [
        f"results/cohorts/{wildcards.cohort}/predictions/{s}.h5ad"
        for s in cohort_counted(wildcards.cohort)
    ]


# ---------------------------------------------------------------- sections with counts
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
        "../scripts/cohort_read_section.py"


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
        "../scripts/cohort_qc.py"


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
        max_white_frac=lambda wc: COHORTS[wc.cohort]["qc"]["whiteness"]["max_white_frac"],
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
