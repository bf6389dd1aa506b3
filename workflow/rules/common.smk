# Helpers shared by every rule: config and sample-sheet validation, wildcard constraints,
# input functions (get_*). No rule lives here.
import os
import re
import sys
from pathlib import Path

# The library lives in src/: importable here and in every job (also in a conda env or on a
# cluster node without `pip install -e .`), and always the copy that ships with this workflow.
_SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, _SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_SRC, os.environ.get("PYTHONPATH", "")) if p
)


envvars:
    "PYTHONPATH",


from snakemake.utils import validate

from stpredict.config import (
    check_config_schema,
    check_run_config,
    check_sheet_paths,
    check_training_sheet,
    empty_sheet,
    load_schema,
    read_sheet,
    validate_sheet,
)
from stpredict.demo import demo_outputs
from stpredict.errors import ConfigError

# the configuration file(s) of this run, named in parse-time errors
CONFIG_FILES = (
    ", ".join(os.path.relpath(f) for f in workflow.configfiles) or "config.yaml"
)

try:  # one line naming the key, before Snakemake's validate (which also fills in defaults)
    check_config_schema(
        config,
        load_schema(workflow.source_path("../schemas/config.schema.yaml")),
        CONFIG_FILES,
    )
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None
validate(config, workflow.source_path("../schemas/config.schema.yaml"))

DEMO_DIR = "results/demo"
DEMO_OUTPUTS = demo_outputs(DEMO_DIR)
DEMO_ROLES = f"{DEMO_DIR}/gene_roles.tsv"
# the demo's external cohort (rule make_demo_cohort; predict-only runs in cohort.smk)
from stpredict.demo.external import external_outputs, external_sheet

DEMO_COHORT_FILES = external_outputs(DEMO_DIR)
DEMO_COHORT_SHEET = DEMO_COHORT_FILES[-1]

try:
    check_run_config(config, file=CONFIG_FILES)
    # no sheet: a predict-only run (cohorts) with no experiment and no section of its own
    SAMPLES = (
        validate_sheet(
            read_sheet(config["samples"]),
            load_schema(workflow.source_path("../schemas/samples.schema.yaml")),
            config["samples"],
        )
        if config["samples"]
        else empty_sheet()
    )
    check_training_sheet(SAMPLES, config, CONFIG_FILES)
    check_sheet_paths(
        SAMPLES,
        config["samples"],
        produced=DEMO_OUTPUTS["files"] + DEMO_OUTPUTS["directories"],
    )
    gene_map = config["reading"]["gene_map"]
    if (
        gene_map
        and gene_map not in DEMO_OUTPUTS["files"]
        and not Path(gene_map).exists()
    ):
        raise ConfigError(
            "reading.gene_map names a file that does not exist",
            file=gene_map,
            fix="correct the path or set reading.gene_map to an empty string",
        )
    gene_groups = config["evaluation"]["gene_groups"]
    if (
        gene_groups
        and gene_groups not in DEMO_OUTPUTS["files"]
        and not Path(gene_groups).exists()
    ):
        raise ConfigError(
            "evaluation.gene_groups names a file that does not exist",
            file=gene_groups,
            fix="correct the path or set evaluation.gene_groups to an empty string",
        )
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

SAMPLE_IDS = SAMPLES["sample_id"].tolist()


wildcard_constraints:
    sample="|".join(re.escape(s) for s in SAMPLE_IDS) or "NO_SAMPLE",


def get_row(wildcards):
    """The sample-sheet row of ``wildcards.sample`` as a plain dict."""
    return SAMPLES.loc[wildcards.sample].to_dict()


def get_section_inputs(wildcards):
    """Raw inputs of one section: only the cells that are filled in."""
    row = get_row(wildcards)
    inputs = {
        col: row[col]
        for col in ("raw", "spots", "image", "annotation", "clusters")
        if row[col]
    }
    if config["reading"]["gene_map"]:
        inputs["gene_map"] = config["reading"]["gene_map"]
    return inputs


def get_image(wildcards):
    """The full-resolution image of a section (patches are cut from it)."""
    row = get_row(wildcards)
    if not row["image"]:
        raise WorkflowError(
            f"sample '{wildcards.sample}': no 'image' in {config['samples']}: patches need "
            "the full-resolution image. Fix: fill the 'image' column."
        )
    return row["image"]


def get_demo_outdir(wildcards, output):
    """The demo's root folder, derived from the rule's own output."""
    return str(Path(output.roles).parent)


def get_demo_cohort_outdir(wildcards, output):
    """The demo's root folder, derived from the external cohort's sheet ({demo}/cohort/samples.tsv)."""
    return str(Path(output.sheet).parent.parent)


def get_demo_files():
    """Every demo file the make_demo rule declares, except the named gene_roles.tsv."""
    return [f for f in DEMO_OUTPUTS["files"] if f != DEMO_ROLES]


# ---------------------------------------------------------------------------- experiments
from stpredict.learn.experiments import (
    SHEET_COLUMNS_OF_SPLITS,
    check_experiment,
    expand_experiments,
    experiment_samples,
    job_settings,
)
from stpredict.learn.splits import fold_ids, fold_test_samples, inner_folds, outer_folds

try:
    # resolved, one per section for `sections.each` (name.sample), clusters labels checked
    EXPERIMENTS = expand_experiments(config.get("experiments", {}), config, SAMPLES)
except ConfigError as exc:  # names the experiment
    raise WorkflowError(
        f"{exc} (config {CONFIG_FILES}, sample sheet {config['samples']})"
    ) from None
EXPERIMENT_SAMPLES = {}
for _name, _exp in EXPERIMENTS.items():
    try:
        # the checks that read files or import torchvision run once, in the main process
        check_experiment(
            _exp,
            SAMPLES,
            gene_map=config["reading"]["gene_map"],
            thorough=workflow.is_main_process,
        )
        EXPERIMENT_SAMPLES[_name] = experiment_samples(_exp, SAMPLES)
    except ConfigError as exc:
        raise WorkflowError(
            f"experiment '{_name}' (in {CONFIG_FILES}, sample sheet {config['samples']}): {exc}"
        ) from None


from stpredict.evaluate.baselines import BASELINES, NEEDS_FEATURES


wildcard_constraints:
    experiment="|".join(re.escape(e) for e in EXPERIMENTS) or "NO_EXPERIMENT",
    fold=r"\d+(\.\d+)?",
    method="|".join(BASELINES),


def get_experiment(wildcards):
    """The resolved settings of ``wildcards.experiment``."""
    return EXPERIMENTS[wildcards.experiment]


# A job's params hold exactly what its outputs depend on (Snakemake reruns a job whose params
# changed): the split, training and prediction jobs get their part of the experiment
# (stpredict.learn.experiments.JOB_KEYS), the split also the sheet rows of its own sections.
def get_split_settings(wildcards):
    """What the split manifest of ``wildcards.experiment`` depends on."""
    return job_settings(EXPERIMENTS[wildcards.experiment], "split")


def get_train_settings(wildcards):
    """What a training job of ``wildcards.experiment`` depends on (no evaluation settings)."""
    return job_settings(EXPERIMENTS[wildcards.experiment], "train")


def get_predict_settings(wildcards):
    """What a prediction job of ``wildcards.experiment`` depends on (training + TTA)."""
    return job_settings(EXPERIMENTS[wildcards.experiment], "predict")


def get_rounds_settings(wildcards):
    """What a pseudo-label or student job of ``wildcards.experiment`` depends on."""
    return job_settings(EXPERIMENTS[wildcards.experiment], "rounds")


def get_baseline_settings(wildcards):
    """What a baseline job depends on besides its inputs (seed, estimator settings)."""
    return job_settings(EXPERIMENTS[wildcards.experiment], "baseline")


def get_split_sheet(wildcards):
    """The sheet rows (patients, series, order) of the experiment's own sections, as records."""
    rows = SAMPLES.loc[
        EXPERIMENT_SAMPLES[wildcards.experiment], list(SHEET_COLUMNS_OF_SPLITS)
    ]
    return rows.astype(str).to_dict("records")


def get_experiment_qc(wildcards):
    """QC'd section files of the experiment's sections."""
    return [f"results/qc/{s}.h5ad" for s in EXPERIMENT_SAMPLES[wildcards.experiment]]


def get_cluster_map(wildcards):
    """The experiment's cluster map (clusters task across sections), if any."""
    path = EXPERIMENTS[wildcards.experiment].get("cluster_map")
    return [path] if path else []


def rule_suffix(name):
    """An experiment name as part of a rule name (rule names are identifiers)."""
    return re.sub(r"\W", "_", name)


def get_fold_inputs(wildcards):
    """Manifest, QC'd sections, patch stores (and inner-fold histories) of a fold."""
    exp = EXPERIMENTS[wildcards.experiment]
    samples = EXPERIMENT_SAMPLES[wildcards.experiment]
    inputs = {
        "splits": f"results/experiments/{wildcards.experiment}/splits.tsv",
        "qc": [f"results/qc/{s}.h5ad" for s in samples],
        "stores": [f"results/patches/{s}/spots.npy" for s in samples],
    }
    if exp.get("cluster_map"):
        inputs["cluster_map"] = exp["cluster_map"]
    inner = inner_folds(exp, SAMPLES, wildcards.fold)
    if inner:
        inputs["inner"] = [
            f"results/experiments/{wildcards.experiment}/folds/{f}/history.tsv"
            for f in inner
        ]
    return inputs


def held_out_samples(name):
    """Sections of an experiment that get predictions (every section some fold tests)."""
    exp = EXPERIMENTS[name]
    out = []
    for k in outer_folds(exp, SAMPLES):
        out += [s for s in fold_test_samples(exp, SAMPLES, k) if s not in out]
    return out


def experiment_predictions(names=None):
    """Per-section prediction files of the given experiments (all by default)."""
    return [
        f"results/experiments/{name}/predictions/{s}.h5ad"
        for name in (names or EXPERIMENTS)
        for s in held_out_samples(name)
    ]


def get_section_folds(wildcards):
    """Prediction files of the outer folds that test ``wildcards.sample``."""
    exp = EXPERIMENTS[wildcards.experiment]
    folds = [
        f"results/experiments/{wildcards.experiment}/folds/{k}/predictions.h5ad"
        for k in outer_folds(exp, SAMPLES)
        if wildcards.sample in fold_test_samples(exp, SAMPLES, k)
    ]
    if not folds:
        raise WorkflowError(
            f"experiment '{wildcards.experiment}' holds out no spots of section "
            f"'{wildcards.sample}': no prediction file to collect"
        )
    return folds


def get_experiment_predictions(wildcards):
    """Per-section prediction files of ``wildcards.experiment``."""
    return experiment_predictions([wildcards.experiment])


def get_experiment_platforms(wildcards):
    """Platform of each section the experiment predicts."""
    name = (
        wildcards["experiment"] if isinstance(wildcards, dict) else wildcards.experiment
    )
    return {s: SAMPLES.loc[s, "platform"] for s in held_out_samples(name)}


def get_evaluation_unit(wildcards):
    """Held-out unit of the metrics: the patient for patient-level splits, else the section."""
    name = (
        wildcards["experiment"] if isinstance(wildcards, dict) else wildcards.experiment
    )
    if EXPERIMENTS[name]["split"]["scheme"] == "leave_one_patient_out":
        return "patient_id"
    return "sample_id"


def experiment_metrics(names=None):
    """Metric tables of the regression experiments."""
    return [
        f"results/experiments/{name}/metrics/summary.tsv"
        for name in (names or EXPERIMENTS)
        if EXPERIMENTS[name]["task"] == "regression"
    ]


# ----------------------------------------------------------------------------- evaluation


def evaluation(name):
    """The resolved ``evaluation`` settings of an experiment."""
    return EXPERIMENTS[name]["evaluation"]


def regression_experiments():
    return [n for n in EXPERIMENTS if EXPERIMENTS[n]["task"] == "regression"]


def cluster_experiments():
    return [n for n in EXPERIMENTS if EXPERIMENTS[n]["task"] == "clusters"]


def experiment_baselines(name):
    """Baselines of a regression experiment (none for cluster experiments)."""
    if EXPERIMENTS[name]["task"] != "regression":
        return []
    return list(evaluation(name)["baselines"])


def experiment_units(name):
    """Held-out units of an experiment (patients for leave-one-patient-out, else sections)."""
    samples = held_out_samples(name)
    if EXPERIMENTS[name]["split"]["scheme"] == "leave_one_patient_out":
        return sorted({str(SAMPLES.loc[s, "patient_id"]) for s in samples})
    return samples


def feature_samples():
    """Sections whose nuclear features some baseline needs."""
    out = []
    for name in regression_experiments():
        if NEEDS_FEATURES & set(experiment_baselines(name)):
            out += [s for s in EXPERIMENT_SAMPLES[name] if s not in out]
    return out


def get_nuclear_fov(wildcards):
    """Field of view of the nuclear features: evaluation.nuclear.fov_um, else the patches'."""
    fov = config["evaluation"]["nuclear"]["fov_um"] or config["patches"]["fov_um"]
    return {"fov_um": fov, "fov_px": None if fov else config["patches"]["fov_px"]}


def outer_fold_files(name, filename):
    return {
        str(k): f"results/experiments/{name}/folds/{k}/{filename}"
        for k in outer_folds(EXPERIMENTS[name], SAMPLES)
    }


def get_baseline_inputs(wildcards):
    """Manifest, QC'd sections, the outer folds' fitted targets (+ nuclear features) of a baseline."""
    name, method = wildcards.experiment, wildcards.method
    samples = EXPERIMENT_SAMPLES[name]
    inputs = {
        "splits": f"results/experiments/{name}/splits.tsv",
        "qc": [f"results/qc/{s}.h5ad" for s in samples],
        "fitted": list(outer_fold_files(name, "fitted.json").values()),
    }
    if method in NEEDS_FEATURES:
        inputs["features"] = [f"results/features/{s}/nuclear.tsv" for s in samples]
    return inputs


def get_baseline_tables(kind):
    """Input function: the ``kind`` table (per_gene | summary) of every baseline, in order."""

    def tables(wildcards):
        return [
            f"results/experiments/{wildcards.experiment}/baselines/{m}/{kind}.tsv"
            for m in experiment_baselines(wildcards.experiment)
        ]

    return tables


def get_held_out_patches(wildcards):
    return [
        f"results/patches/{s}/spots.tsv" for s in held_out_samples(wildcards.experiment)
    ]


def get_held_out_stores(wildcards):
    return [
        f"results/patches/{s}/spots.npy" for s in held_out_samples(wildcards.experiment)
    ]


def get_outer_models(wildcards):
    return list(outer_fold_files(wildcards.experiment, "model.pt").values())


def get_all_histories(wildcards):
    exp = EXPERIMENTS[wildcards.experiment]
    return [
        f"results/experiments/{wildcards.experiment}/folds/{k}/history.tsv"
        for k in fold_ids(exp, SAMPLES)
    ]


def experiment_analyses(names=None):
    """Every table and figure of the evaluation stage for the given experiments."""
    out = []
    for name in names or EXPERIMENTS:
        base = f"results/experiments/{name}"
        ev = evaluation(name)
        if EXPERIMENTS[name]["task"] == "regression":
            out += [
                f"{base}/metrics/summary.tsv",
                f"{base}/metrics/comparison.tsv",
                f"{base}/figures/consistency.png",
            ]
            if ev["ols"]:
                out.append(f"{base}/metrics/ols.tsv")
            if ev["attributions"]["enabled"]:
                out.append(f"{base}/figures/integrated_gradients.png")
        else:
            out += [f"{base}/metrics/clusters.tsv", f"{base}/figures/confusion.png"]
        if ev["latent"]:
            out.append(f"{base}/latent/purity.tsv")
    return out


# ------------------------------------------------------------------------ super-resolution
from stpredict.patches.centres import GRID_NAME_PATTERN, grid_name, resolve_grid


wildcard_constraints:
    grid=GRID_NAME_PATTERN,


def superres_samples(name):
    """Held-out sections of an experiment with super-resolution (none when it is off)."""
    return held_out_samples(name) if EXPERIMENTS[name]["superres"]["enabled"] else []


def superres_grid(name, sample):
    """File name of the grid of ``sample`` in experiment ``name`` (triangles, stride55um...)."""
    sr = EXPERIMENTS[name]["superres"]
    kind = resolve_grid(sr["grid"], SAMPLES.loc[sample, "platform"], sample=sample)
    return grid_name(kind, sr["stride_um"])


def experiment_superres(names=None):
    """Super-resolution AnnData and maps of every held-out section of the given experiments."""
    return [
        f"results/superres/{name}/{s}.{ext}"
        for name in (names or EXPERIMENTS)
        for s in superres_samples(name)
        for ext in ("h5ad", "png")
    ]


def get_superres_inputs(wildcards):
    """Grid store, collected predictions, section and the models of the folds that test it."""
    name, sample = wildcards.experiment, wildcards.sample
    if sample not in superres_samples(name):
        raise WorkflowError(
            f"experiment '{name}' has no super-resolution of section '{sample}' (superres "
            "disabled, or the section is never held out)"
        )
    exp = EXPERIMENTS[name]
    grid = superres_grid(name, sample)
    return {
        "section": f"results/sections/{sample}.h5ad",
        "predictions": f"results/experiments/{name}/predictions/{sample}.h5ad",
        "grid": f"results/patches/{sample}/{grid}.npy",
        "grid_tsv": f"results/patches/{sample}/{grid}.tsv",
        "grid_json": f"results/patches/{sample}/{grid}.json",
        "models": [
            f"results/experiments/{name}/folds/{k}/model.pt"
            for k in outer_folds(exp, SAMPLES)
            if sample in fold_test_samples(exp, SAMPLES, k)
        ],
    }


# --- portable resource needs that follow the experiment (profiles add only site specifics)
#: MB of memory of a fold job: torchvision backbones at 224 px with loader workers, vs the demo's
#: tiny CNN on small patches (demo job benchmarks: peak RSS 0.97 GB training, 0.77 GB predicting)
FOLD_MEM_MB = {
    "train": {"tiny": 4000, "other": 32000},
    "predict": {"tiny": 4000, "other": 16000},
}


def _fold_mem_mb(wildcards, job):
    backbone = EXPERIMENTS[wildcards.experiment]["model"]["backbone"]
    return FOLD_MEM_MB[job]["tiny" if backbone == "tiny" else "other"]


def train_mem_mb(wildcards):
    """Memory (MB) a training job of ``wildcards.experiment`` asks for."""
    return _fold_mem_mb(wildcards, "train")


def predict_mem_mb(wildcards):
    """Memory (MB) a prediction job of ``wildcards.experiment`` asks for."""
    return _fold_mem_mb(wildcards, "predict")


# ------------------------------------------------------------------------------------ ihc
from stpredict.ihc.plan import ihc_plan

try:
    # sample -> experiment, gene, image, known affine; IHC sections no experiment predicts are
    # left out with a note unless ihc.experiment names one (then it is refused)
    IHC_PLAN, _ihc_notes = ihc_plan(
        config["ihc"],
        SAMPLES,
        EXPERIMENTS,
        held_out_samples,
        gene_map=config["reading"]["gene_map"],
        thorough=workflow.is_main_process,
    )
except ConfigError as exc:
    raise WorkflowError(
        f"{exc} (config {CONFIG_FILES}, sample sheet {config['samples']})"
    ) from None
if workflow.is_main_process:
    for _note in _ihc_notes:
        print(f"stpredict: {_note}", file=sys.stderr)


def ihc_outputs():
    """The tables and figures of every IHC comparison of the run."""
    return [
        f"results/ihc/{s}{suffix}"
        for s in IHC_PLAN
        for suffix in (".tsv", "_summary.tsv", "_scatter.png", "_maps.png")
    ]


def ihc_entry(wildcards):
    """The IHC plan of ``wildcards.sample``."""
    if wildcards.sample not in IHC_PLAN:
        raise WorkflowError(
            f"sample '{wildcards.sample}' has no IHC comparison: its sheet row has no "
            "ihc_image, or no experiment holds it out and predicts its ihc_gene"
        )
    return IHC_PLAN[wildcards.sample]


def get_ihc_registration_inputs(wildcards):
    """The IHC image, the H&E image, the section (µm/px) and a known transform if given."""
    entry = ihc_entry(wildcards)
    inputs = {
        "ihc": entry["image"],
        "image": get_image(wildcards),
        "section": f"results/sections/{wildcards.sample}.h5ad",
    }
    if entry["known_affine"]:
        inputs["known"] = entry["known_affine"]
    return inputs


def get_ihc_predictions(wildcards):
    """The per-section predictions of the experiment the IHC is compared with."""
    entry = ihc_entry(wildcards)
    return (
        f"results/experiments/{entry['experiment']}/predictions/{wildcards.sample}.h5ad"
    )


# seed of RANSAC and of the bootstrap
IHC_SEED = config["seed"] if config["ihc"]["seed"] is None else config["ihc"]["seed"]
# ------------------------------------------------------------------ semi-supervised rounds
# (rules in rounds.smk: DeepSpaCE's noisy-student teacher/student rounds)
from stpredict.learn.pool import (
    check_semi_supervised,
    images_of_tables,
    interspot_grids,
    pool_sections,
    pool_slides,
    pool_tables,
    resolve_pool,
)
from stpredict.learn.rounds import round_chains, round_dir, round_records, teacher_dir

for _name, _exp in EXPERIMENTS.items():
    try:  # before any job: a pool that cannot work, a scheme without validation spots...
        EXPERIMENTS[_name] = _exp = resolve_pool(
            _exp, SAMPLES, EXPERIMENT_SAMPLES[_name], wsi_slides=config["wsi"]["slides"]
        )
        check_semi_supervised(
            _exp,
            SAMPLES,
            EXPERIMENT_SAMPLES[_name],
            produced=DEMO_OUTPUTS["files"],
        )
    except ConfigError as exc:
        raise WorkflowError(
            f"experiment '{_name}' (in {CONFIG_FILES}, sample sheet {config['samples']}): {exc}"
        ) from None


wildcard_constraints:
    round=r"[1-9]\d*",
    control="none|permuted|random|irrelevant",
    kind="images|irrelevant",
    pool_slide=r"[^/]+",


def semi_supervised_experiments():
    """Experiments with semi_supervised.enabled."""
    return [n for n in EXPERIMENTS if EXPERIMENTS[n]["semi_supervised"]["enabled"]]


def experiment_rounds(names=None):
    """rounds.tsv and the rounds figure of every semi-supervised experiment."""
    out = []
    for name in names or semi_supervised_experiments():
        out += [
            f"results/experiments/{name}/rounds.tsv",
            f"results/experiments/{name}/figures/rounds.png",
        ]
    return out


def _semi_experiment(wildcards):
    exp = EXPERIMENTS[wildcards.experiment]
    if not exp["semi_supervised"]["enabled"]:
        raise WorkflowError(
            f"experiment '{wildcards.experiment}' has no semi_supervised rounds. "
            "Fix: set semi_supervised.enabled: true in its config"
        )
    chains = round_chains(exp)
    if "control" in wildcards.keys() and wildcards.control not in chains:
        raise WorkflowError(
            f"experiment '{wildcards.experiment}' runs no '{wildcards.control}' chain "
            f"(its chains: {', '.join(chains)})"
        )
    if "round" in wildcards.keys() and int(wildcards.round) > int(
        exp["semi_supervised"]["rounds"]
    ):
        raise WorkflowError(
            f"experiment '{wildcards.experiment}' runs {exp['semi_supervised']['rounds']} rounds"
        )
    if "fold" in wildcards.keys() and wildcards.fold not in outer_folds(exp, SAMPLES):
        raise WorkflowError(
            f"experiment '{wildcards.experiment}': fold {wildcards.fold} is not an outer fold"
        )
    return exp


def get_tile_inputs(wildcards):
    """Images tables of a tile store and the images they list (once the tables exist)."""
    tables = pool_tables(_semi_experiment(wildcards), wildcards.kind)
    if not tables:
        raise WorkflowError(
            f"experiment '{wildcards.experiment}' has no {wildcards.kind} images table"
        )
    return {"tables": tables, "images": _table_images(tables)}


def _table_images(tables):
    """The images of images tables, the same before and after the tables are written.

    A demo table's images are the demo's files beside it (known at parse time); another table's
    are read from it. (Reading a demo table only once it exists would change the job's inputs
    between runs, and Snakemake would rerun the tiles and every round after them.)
    """
    out = []
    for t in tables:
        if t in DEMO_OUTPUTS["files"]:
            folder = Path(t).parent
            out += [
                f
                for f in DEMO_OUTPUTS["files"]
                if Path(f).parent == folder and f != t and f not in out
            ]
        else:
            out += [f for f in images_of_tables([t]) if f not in out]
    return out


def get_round_inputs(wildcards, student=False):
    """Manifest, sections, stores, teacher, the fold's fitted targets and the pool of a round."""
    exp = _semi_experiment(wildcards)
    name, fold = wildcards.experiment, wildcards.fold
    samples = EXPERIMENT_SAMPLES[name]
    teacher = teacher_dir(name, wildcards.round, wildcards.control, fold)
    inputs = {
        "splits": f"results/experiments/{name}/splits.tsv",
        "qc": [f"results/qc/{s}.h5ad" for s in samples],
        "stores": [f"results/patches/{s}/spots.npy" for s in samples],
        "teacher_model": f"{teacher}/model.pt",
        "teacher_fitted": f"{teacher}/fitted.json",
        "fitted": f"results/experiments/{name}/folds/{fold}/fitted.json",
        "pool_qc": [],
        "pool_stores": [],
        "interspot_stores": [],
        "interspot_spots": [],
        "wsi_stores": [],
    }
    if wildcards.control == "irrelevant":
        inputs["irrelevant_tiles"] = f"results/experiments/{name}/pool/irrelevant.npy"
    else:
        secs = pool_sections(exp)
        inputs["pool_qc"] = [f"results/qc/{s}.h5ad" for s in secs]
        inputs["pool_stores"] = [f"results/patches/{s}/spots.npy" for s in secs]
        if pool_tables(exp, "images"):
            inputs["tiles"] = f"results/experiments/{name}/pool/images.npy"
        grids = interspot_grids(exp, SAMPLES)  # crops between spots (extract_grid)
        inputs["interspot_stores"] = [f"results/patches/{s}/{g}.npy" for s, g in grids]
        inputs["interspot_spots"] = [f"results/patches/{s}/spots.tsv" for s, _ in grids]
        inputs["wsi_stores"] = pool_slide_stores(
            name
        )  # whole-slide tiles (tile_pool_slide)
    if student:
        base = round_dir(name, wildcards.round, wildcards.control, fold)
        inputs["pseudo"] = f"{base}/pseudo.tsv"
    return inputs


def get_student_inputs(wildcards):
    return get_round_inputs(wildcards, student=True)


def _records(wildcards):
    exp = _semi_experiment(wildcards)
    return round_records(
        wildcards.experiment,
        outer_folds(exp, SAMPLES),
        round_chains(exp),
        int(exp["semi_supervised"]["rounds"]),
    )


def get_round_files(kind):
    """Input function: the ``kind`` file (predictions, history, fitted) of every round record."""

    def files(wildcards):
        return [r[kind] for r in _records(wildcards) if r[kind]]  # no pool in round 0

    return files


def get_round_keys(wildcards):
    """(control, round, fold) of every round record, in the order of the inputs."""
    return [[r["control"], r["round"], r["fold"]] for r in _records(wildcards)]


def get_pool_keys(wildcards):
    """(control, round, fold) of every student round (the pool summaries), in input order."""
    return [
        [r["control"], r["round"], r["fold"]] for r in _records(wildcards) if r["pool"]
    ]


# ----------------------------------------------------------------------- whole slides (wsi)
# (rules in wsi.smk: model cards, tiles of whole-slide images predicted by wsi.experiment)
from stpredict.demo import demo_slides
from stpredict.wsi.slides import read_slides, validate_slides
from stpredict.wsi.subtype import check_labels

WSI = config["wsi"]


def _read_slide_table(path):
    """A slide table, the same before and after the demo writes its own (parse time)."""
    # the demo's own table, before make_demo writes it
    if path in DEMO_OUTPUTS["files"] and not Path(path).exists():
        return validate_slides(demo_slides(DEMO_DIR), path, DEMO_OUTPUTS["files"])
    return read_slides(path, produced=DEMO_OUTPUTS["files"])


def _slide_table():
    """The slide table of wsi.slides (None when empty)."""
    return _read_slide_table(WSI["slides"]) if WSI["slides"] else None


def _check_wsi_experiment(name):
    if not name:
        raise ConfigError(
            "wsi.slides is given but wsi.experiment is empty: no model to predict the tiles",
            fix=f"name a regression experiment of the config ({', '.join(regression_experiments())})",
        )
    if name not in EXPERIMENTS:
        raise ConfigError(
            f"wsi.experiment '{name}' is not an experiment of the config",
            fix=f"use one of {', '.join(EXPERIMENTS)}",
        )
    if EXPERIMENTS[name]["task"] != "regression":
        raise ConfigError(
            f"wsi.experiment '{name}' classifies clusters; tiles are predicted by a "
            "gene-expression experiment",
            fix=f"use one of {', '.join(regression_experiments())}",
        )


try:
    SLIDES = _slide_table()
    if SLIDES is not None:
        _check_wsi_experiment(WSI["experiment"])
        LABELLED_SLIDES = check_labels(SLIDES, WSI["slides"])["slide_id"].tolist()
    else:
        LABELLED_SLIDES = []
except ConfigError as exc:
    raise WorkflowError(f"{exc} (config {CONFIG_FILES})") from None
SLIDE_IDS = [] if SLIDES is None else SLIDES["slide_id"].tolist()

# slides of the `wsi` pool sources of the semi-supervised experiments (rule tile_pool_slide)
POOL_SLIDES = {}
for _name in semi_supervised_experiments():
    try:
        POOL_SLIDES[_name] = pool_slides(
            EXPERIMENTS[_name], _read_slide_table
        ).set_index("slide_id", drop=False)
    except ConfigError as exc:
        raise WorkflowError(
            f"experiment '{_name}' (in {CONFIG_FILES}): {exc}"
        ) from None


def pool_slide_stores(name):
    """The pool tile stores of an experiment's `wsi` sources (one per slide)."""
    table = POOL_SLIDES.get(name)
    if table is None:
        return []
    return [
        f"results/experiments/{name}/pool/wsi/{s}/tiles.npy" for s in table["slide_id"]
    ]


def pool_slide_row(wildcards):
    """The slide table row of a `wsi` pool slide of the experiment."""
    table = POOL_SLIDES.get(wildcards.experiment)
    if table is None or wildcards.pool_slide not in table.index:
        raise WorkflowError(
            f"experiment '{wildcards.experiment}' has no wsi pool slide '{wildcards.pool_slide}'"
        )
    return table.loc[wildcards.pool_slide].to_dict()


def get_pool_slide_inputs(wildcards):
    """The slide's image and the experiment's spot stores (its geometry)."""
    return {
        "image": pool_slide_row(wildcards)["image"],
        "stores": [
            f"results/patches/{s}/spots.json"
            for s in EXPERIMENT_SAMPLES[wildcards.experiment]
        ],
    }


wildcard_constraints:
    slide="|".join(re.escape(s) for s in SLIDE_IDS) or "NO_SLIDE",


def model_cards(names=None):
    """Model cards of the regression experiments: what a model folder needs to predict images."""
    return [
        f"results/experiments/{name}/model.json"
        for name in (names or regression_experiments())
    ]


def get_card_inputs(wildcards):
    """Outer-fold models and fitted targets, and the spot stores' geometry of an experiment."""
    name = wildcards.experiment
    return {
        "models": list(outer_fold_files(name, "model.pt").values()),
        "fitted": list(outer_fold_files(name, "fitted.json").values()),
        "stores": [f"results/patches/{s}/spots.json" for s in EXPERIMENT_SAMPLES[name]],
        "sections": [f"results/sections/{s}.h5ad" for s in EXPERIMENT_SAMPLES[name]],
    }


def get_card_settings(wildcards):
    """What a model card depends on besides its input files."""
    exp = EXPERIMENTS[wildcards.experiment]
    return {
        "task": exp["task"],
        "tta": exp["tta"],
        "precision": exp["train"]["precision"],
        "folds": list(outer_fold_files(wildcards.experiment, "model.pt")),
    }


def slide_row(wildcards):
    """The slide table's row of ``wildcards.slide``."""
    return SLIDES.loc[wildcards.slide].to_dict()


def get_slide_inputs(wildcards):
    """The slide's image and the model card and fold models of wsi.experiment."""
    name = WSI["experiment"]
    return {
        "image": slide_row(wildcards)["image"],
        "card": f"results/experiments/{name}/model.json",
        "models": list(outer_fold_files(name, "model.pt").values()),
    }


def slide_mem_mb(wildcards):
    """Memory (MB) of a slide prediction job (the fold prediction jobs' need)."""
    backbone = EXPERIMENTS[WSI["experiment"]]["model"]["backbone"]
    return FOLD_MEM_MB["predict"]["tiny" if backbone == "tiny" else "other"]


def get_slide_summary(wildcards):
    """The experiment's metric summary (the heatmaps' default genes), when wsi.genes is empty."""
    if WSI["genes"]:
        return []
    return experiment_metrics([WSI["experiment"]])


def heatmap_slides():
    """Slides with a heatmap: the first wsi.heatmaps of the table (null = all)."""
    n = WSI["heatmaps"]
    return SLIDE_IDS if n is None else SLIDE_IDS[: int(n)]


def slide_files(slides=None):
    """Prediction files of the slides (default: every slide of the table)."""
    return [f"results/wsi/{s}.h5ad" for s in (SLIDE_IDS if slides is None else slides)]


def wsi_seed(section):
    """Seed of a pseudo-bulk analysis: its own, else the global seed."""
    value = WSI[section]["seed"]
    return int(config["seed"] if value is None else value)


def subtype_table():
    """patient_id and subtype of the labelled slides (the subtype rule's params)."""
    cols = ["slide_id", "patient_id", "subtype"]
    return SLIDES.loc[LABELLED_SLIDES, cols].to_dict(orient="list")


def get_pseudobulk_figure_inputs(wildcards):
    """The pseudo-bulk tables, the subtype scores and co-localisation when they are run."""
    out = {
        "tsv": "results/wsi/pseudobulk_vs_bulk.tsv",
        "summary": "results/wsi/pseudobulk_summary.tsv",
        "means": "results/wsi/pseudobulk.tsv",
        "bulk": WSI["bulk"],
    }
    if LABELLED_SLIDES:
        out |= {
            "subtype": "results/wsi/subtype.tsv",
            "scores": "results/wsi/subtype_scores.tsv",
        }
    if WSI["colocalisation"]["markers"]:
        out["coloc"] = "results/wsi/colocalisation.tsv"
    return out


def wsi_analyses():
    """Pseudo-bulk vs bulk (with wsi.bulk), co-localisation (with markers), subtypes (labels)."""
    if not SLIDE_IDS:
        return []
    out = []
    if WSI["bulk"]:
        out += ["results/wsi/pseudobulk_vs_bulk.tsv", "results/figures/pseudobulk.png"]
    if WSI["colocalisation"]["markers"]:
        out.append("results/wsi/colocalisation.tsv")
    if LABELLED_SLIDES:
        out.append("results/wsi/subtype.tsv")
    return out


def wsi_outputs():
    """Per-slide predictions, the heatmaps of wsi.heatmaps slides, the pseudo-bulk analyses."""
    return (
        slide_files()
        + [f"results/wsi/{s}.png" for s in heatmap_slides()]
        + wsi_analyses()
    )


# ------------------------------------------------------------------------------------- cohorts
# Predict-only cohorts (cohorts:, rules in cohort.smk): resolved cohorts, their sheets and model
# cards at parse time, and the input functions of the cohort rules.
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
            out += [
                f"{base}/superres/{s}.{e}" for s in sections for e in ("h5ad", "png")
            ]
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
