"""Bad inputs through the real Snakemake CLI: each case is a small cohort with one flaw.

Every case asserts a non-zero exit, exactly one clear error line (``stpredict error: ...`` from
the failing job, or Snakemake's WorkflowError line for what is refused at parse time) that
names the file, the sample where there is one, and says ``Fix:``; no output of the failing job
and no temporary file left under ``results/``. Cases on the workflow's own intermediates also
check that the corrupt file was removed and that rerunning Snakemake rebuilds it.

The small demo cohort is generated once per session; a case copies only what it corrupts into
its own working directory and targets only the job that must fail, so each runs in seconds.
Parse-time cases use ``-n``.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, copy_workflow, run_snakemake

pytestmark = pytest.mark.slow

BUILT_SAMPLES = ["P1_D1", "P1_D2"]
EXP = "tiny"
FOLD = f"results/experiments/{EXP}/folds/0"


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    """The small demo cohort (raw files in their true formats), generated once."""
    from stpredict.demo import make_demo

    out = tmp_path_factory.mktemp("bad_inputs_cohort") / "demo"
    make_demo(out, seed=7, threads=1, small=True)
    return out


def demo_rows(cohort: Path) -> pd.DataFrame:
    from stpredict.demo import demo_sheet

    rows = demo_sheet(str(cohort), small=True)
    rows.index = pd.Index(list(rows["sample_id"]))  # a copy: a flaw may change the sample_id cell
    return rows


def base_config(cohort: Path) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["samples"] = "sheet.tsv"
    cfg["experiments"] = {}
    cfg["wsi"]["slides"] = ""  # the demo's slides need demo_stnet
    cfg["cohorts"] = {}  # the demo's external cohort is predicted by demo_stnet
    cfg["reading"]["gene_map"] = str(cohort / "gene_ids.tsv")
    cfg["evaluation"]["gene_groups"] = ""
    return cfg


def tiny_experiment(**over) -> dict:
    """A one-fold experiment (D1 -> D2 imputation, tiny CNN, one epoch): seconds on a CPU."""
    exp = {
        "split": {
            "scheme": "section_imputation",
            "train_sections": ["P1_D1"],
            "test_section": "P1_D2",
            "val_frac": 0.2,
        },
        "targets": {
            "transform": "log1p",
            "genes": {"mode": "top_mean", "n": 20, "panel": "", "min_frac": 0.1},
        },
        "train": {"epochs": 1, "batch_size": 64},
        "tta": 1,
        "evaluation": {
            "baselines": ["mean", "nuclear_rf"],
            "ols": False,
            "latent": False,
            "attributions": {"enabled": False},
            "random_forest": {"n_estimators": 5},
        },
    }
    for k, v in over.items():
        exp[k] = v
    return exp


def write_case(wd: Path, rows: pd.DataFrame, cfg: dict) -> None:
    rows.to_csv(wd / "sheet.tsv", sep="\t", index=False)
    (wd / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.fixture(scope="session")
def built(tmp_path_factory, cohort) -> Path:
    """A workdir where 2 sections are read, cut into patches and QC'd and the tiny experiment ran."""
    wd = copy_workflow(tmp_path_factory.mktemp("bad_inputs_built"))
    cfg = base_config(cohort)
    cfg["experiments"] = {EXP: tiny_experiment()}
    write_case(wd, demo_rows(cohort).loc[BUILT_SAMPLES], cfg)
    run_snakemake(
        wd,
        f"results/experiments/{EXP}/predictions/P1_D2.h5ad",
        f"results/experiments/{EXP}/baselines/nuclear_rf/summary.tsv",
        "--configfile",
        "run.yaml",
        timeout=600,
    )
    return wd


# ------------------------------------------------------------------------------ cases
@dataclass
class Ctx:
    """What a flaw may change: the working directory, the cohort, the sheet rows and the config."""

    wd: Path
    cohort: Path
    rows: pd.DataFrame
    cfg: dict
    post: Callable[[Path], None] | None = (
        None  # edits the written sheet (what a DataFrame cannot hold)
    )
    env: dict[str, str] = field(default_factory=dict)  # environment of the snakemake run

    def copy(self, src: str | Path, name: str | None = None) -> Path:
        """Copy a cohort file or folder into the workdir's data/ (never change the cohort)."""
        src = Path(src)
        dst = self.wd / "data" / (name or src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
        return dst


@dataclass
class Case:
    """One flaw: the sections used, how to break them, the target, and what the error must say."""

    id: str
    samples: list[str]
    flaw: Callable[[Ctx], None]
    target: list[str]
    expect: list[str]
    parse: bool = False  # refused before any job runs (dry-run)
    absent: list[str] = field(default_factory=list)  # must not exist after the failure
    rerun: list[str] = field(default_factory=list)  # rebuilt by a second run (which must succeed)
    built: bool = False  # start from the built workdir
    passes: bool = False  # a positive case: the run must succeed
    reader: bool = False  # a raw-file check implemented by the readers' helper


def _rows(c: Ctx, sample: str, **cells) -> None:
    for k, v in cells.items():
        c.rows.loc[sample, k] = str(v)


def _exp(c: Ctx, **over) -> None:
    c.cfg["experiments"] = {
        "e": {"split": {"scheme": "random_within_section", "n_folds": 2}, **over}
    }


def _truncate(path: Path, frac: float = 0.5) -> None:
    mode = path.stat().st_mode
    os.chmod(path, mode | stat.S_IWUSR)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])


def _cut_table(path: Path) -> None:
    """Cut a table inside its last lines (what an interrupted copy leaves)."""
    text = path.read_text()
    path.write_text(text[: int(len(text) * 0.7)])


# ---- images
def _tiff_rewrite(
    c: Ctx, sample: str, fn: Callable[[np.ndarray], np.ndarray], dtype=None, name=None
) -> None:
    import tifffile

    src = Path(c.rows.loc[sample, "image"])
    arr = fn(tifffile.imread(src))
    if dtype is not None:
        arr = arr.astype(dtype) * (257 if dtype == np.uint16 else 1)
    dst = c.wd / "data" / (name or src.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        dst,
        arr,
        tile=(256, 256),
        resolution=(2500, 2500),
        resolutionunit="CENTIMETER",
        compression="zlib",
        photometric="rgb" if arr.ndim == 3 and arr.shape[-1] == 3 else None,
    )
    _rows(c, sample, image=dst)


def _pil_rewrite(c: Ctx, sample: str, fn, suffix: str = ".jpg", **save) -> None:
    from PIL import Image

    src = Path(c.rows.loc[sample, "image"])
    with Image.open(src) as im:
        out = fn(im.convert("RGB"))
    dst = c.wd / "data" / (src.stem + suffix)
    dst.parent.mkdir(parents=True, exist_ok=True)
    out.save(dst, **save)
    _rows(c, sample, image=dst)


def _st_counts(c: Ctx, sample: str, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    src = Path(c.rows.loc[sample, "raw"])
    df = pd.read_csv(src, sep="\t", index_col=0)
    dst = c.wd / "data" / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    fn(df).to_csv(dst, sep="\t")
    _rows(c, sample, raw=dst)


def _visium_outs(c: Ctx, sample: str) -> Path:
    outs = c.copy(c.rows.loc[sample, "raw"], f"{sample}_outs")
    _rows(c, sample, raw=outs)
    return outs


# ---- flaws, parse time
def f_missing_file(c):
    _rows(c, "P1_D1", image=c.wd / "data/does_not_exist.tif")


def f_duplicate_ids(c):
    c.rows = pd.concat([c.rows, c.rows.loc[["P1_D1"]]])


def f_bad_platform(c):
    _rows(c, "P1_D1", platform="xenium")


def f_empty_sheet(c):
    c.rows = c.rows.iloc[0:0]


def f_unknown_column(c):
    c.rows["notes"] = "x"


def f_extra_cell(c):
    c.post = lambda sheet: sheet.write_text(
        "\n".join(
            ln + ("\tstray" if i == 1 else "")
            for i, ln in enumerate(sheet.read_text().splitlines())
        )
        + "\n"
    )


def f_missing_required_column(c):
    c.rows = c.rows.drop(columns=["patient_id"])


def f_bad_sample_id(c):
    _rows(c, "P1_D1", sample_id="P1 D1")


def f_st_without_spots(c):
    _rows(c, "BC50001_C1", spots="")


def f_ihc_without_gene(c):
    _rows(c, "P1_D1", ihc_image=c.rows.loc["P1_D1", "image"], ihc_gene="")


def f_mpp_zero(c):
    _rows(c, "P1_D1", mpp="0")


def f_mpp_not_a_number(c):
    _rows(c, "P1_D1", mpp="2,5")


def f_series_patient_clash(c):
    _rows(c, "P1_D1", series="S", order="1")
    _rows(c, "P2_A1", series="S", order="2")


def f_series_order_clash(c):
    _rows(c, "P1_D1", series="S", order="1")
    _rows(c, "P1_D2", series="S", order="1")


def f_sheet_missing(c):
    c.cfg["samples"] = "no_such_sheet.tsv"


def f_fov_both(c):
    c.cfg["patches"]["fov_px"] = 224


def f_fov_neither(c):
    c.cfg["patches"]["fov_um"] = None


def f_unknown_config_key(c):
    c.cfg["qc"]["min_umis"] = 300


def f_gene_map_missing(c):
    c.cfg["reading"]["gene_map"] = "data/no_gene_map.tsv"


def f_lopo_one_patient(c):
    _exp(c, split={"scheme": "leave_one_patient_out"})


def f_inner_folds_one(c):
    _exp(c, split={"scheme": "leave_one_patient_out", "inner_folds": 1})


def f_imputation_test_in_train(c):
    _exp(
        c,
        split={
            "scheme": "section_imputation",
            "train_sections": ["P1_D1", "P1_D2"],
            "test_section": "P1_D2",
        },
    )


def f_imputation_unknown_section(c):
    _exp(
        c,
        split={
            "scheme": "section_imputation",
            "train_sections": ["P1_D1"],
            "test_section": "P1_D9",
        },
    )


def f_experiment_selects_nothing(c):
    _exp(c, sections={"platform": "st"})


def f_experiment_unknown_sample(c):
    _exp(c, sections={"samples": ["P1_D1", "P9_X1"]})


def f_unknown_panel_gene(c):
    panel = c.wd / "data/panel.txt"
    panel.parent.mkdir(parents=True, exist_ok=True)
    panel.write_text("ESR1\nERBB2\nNOTAGENE1\n")
    _exp(
        c,
        targets={
            "transform": "log1p",
            "genes": {"mode": "panel", "n": 3, "panel": str(panel), "min_frac": 0.1},
        },
    )


def f_clusters_on_st(c):
    _exp(c, task="clusters")


def f_clusters_without_graphclust(c):
    outs = _visium_outs(c, "P1_D1")
    shutil.rmtree(outs / "analysis")
    _exp(c, task="clusters")


def f_backbone_typo(c):
    _exp(c, model={"backbone": "densenet12", "weights": "none"})


def f_weights_missing(c):
    _exp(c, model={"backbone": "tiny", "weights": "data/pretrained.pt"})


def f_same_raw_twice(c):
    copy = c.rows.loc[["P1_D1"]].copy()
    copy["sample_id"], copy["patient_id"] = "P9_D1", "P9"
    copy["image"] = c.copy(c.rows.loc["P1_D1", "image"], "P9_D1.tif")
    c.rows = pd.concat([c.rows, copy.set_axis(["P9_D1"])])


def f_patient_case(c):
    _rows(c, "P1_D2", patient_id="p1")


def f_imagenet_missing(c):
    c.env["TORCH_HOME"] = str(c.wd / "empty_torch_home")
    _exp(c, model={"backbone": "vgg16", "weights": "imagenet"})


def f_attribution_gene_unmeasured(c):
    _exp(c, evaluation={"attributions": {"gene": "NOTAGENE7"}})


def f_patience_without_validation(c):
    _exp(
        c,
        split={"scheme": "random_within_section", "n_folds": 2, "val_frac": 0.0},
        train={"patience": 3},
    )


def f_clusters_pooled_without_map(c):
    _exp(c, task="clusters", sections={"samples": ["P1_D1", "P1_D2"]})


def f_exclude_absent_cluster(c):
    _exp(
        c,
        task="clusters",
        sections={"samples": ["P1_D1"]},
        exclude_clusters=[99],
        train={"epochs": 1},
    )


def f_too_few_spots_for_folds(c):
    # more folds than the section has kept spots: some folds would test nothing
    _exp(
        c,
        sections={"samples": ["P1_D1"]},
        split={"scheme": "random_within_section", "n_folds": 2500},
        train={"epochs": 1},
    )


def f_tta_typo(c):
    _exp(c, tta=3)


def f_augmentation_typo(c):
    _exp(c, train={"augmentation": "dihedal"})


def f_cross_entropy_regression(c):
    _exp(c, train={"loss": "cross_entropy"})


# ---- flaws, reading raw files
def _transpose_spots(c: Ctx, sample: str) -> None:
    spots = pd.read_csv(c.rows.loc[sample, "spots"], sep="\t")
    spots[["pixel_x", "pixel_y"]] = spots[["pixel_y", "pixel_x"]].to_numpy()
    dst = c.wd / "data/transposed.spots.txt"
    dst.parent.mkdir(parents=True, exist_ok=True)
    spots.to_csv(dst, sep="\t", index=False)
    _rows(c, sample, spots=dst)


def f_transposed_coordinates(c):
    _transpose_spots(c, "BC50002_C2")


def f_transposed_coordinates_near_square(c):
    _transpose_spots(c, "BC50001_C1")


def f_hires_as_fullres(c):
    _rows(c, "P1_D1", image=Path(c.rows.loc["P1_D1", "raw"]) / "spatial/tissue_hires_image.png")


def f_greyscale(c):
    _pil_rewrite(c, "BC50001_C1", lambda im: im.convert("L"))


def f_rgba(c):
    _pil_rewrite(c, "BC50001_C1", lambda im: im.convert("RGBA"), suffix=".png")


def f_16bit_tiff(c):
    _tiff_rewrite(c, "P1_D1", lambda a: a, dtype=np.uint16)


def f_gzip_truncated_counts(c):
    dst = c.copy(c.rows.loc["BC50001_C1", "raw"])
    _truncate(dst, 0.6)
    _rows(c, "BC50001_C1", raw=dst)


def f_missing_scalefactors(c):
    outs = _visium_outs(c, "P1_D1")
    (outs / "spatial/scalefactors_json.json").unlink()


def f_truncated_tiff(c):
    dst = c.copy(c.rows.loc["P1_D1", "image"])
    _truncate(dst, 0.6)
    _rows(c, "P1_D1", image=dst)


def f_truncated_jpeg(c):
    dst = c.copy(c.rows.loc["BC50001_C1", "image"])
    _truncate(dst, 0.6)
    _rows(c, "BC50001_C1", image=dst)


def f_jpeg_300dpi(c):
    _pil_rewrite(c, "BC50001_C1", lambda im: im, quality=92, dpi=(300, 300))


def f_mirrored(c):
    _tiff_rewrite(c, "P1_D1", lambda a: a[:, ::-1])


def f_flipped(c):
    _tiff_rewrite(c, "P1_D1", lambda a: a[::-1])


def f_rotated_180(c):
    _tiff_rewrite(c, "P1_D1", lambda a: a[::-1, ::-1])


def f_positions_of_other_section(c):
    outs = _visium_outs(c, "P1_D1")
    (outs / "spatial/tissue_positions_list.csv").unlink()
    shutil.copy(
        Path(c.rows.loc["P1_D2", "raw"]) / "spatial/tissue_positions.csv",
        outs / "spatial/tissue_positions.csv",
    )


def f_st_spots_of_other_section(c):
    _rows(c, "BC50001_C1", spots=c.copy(c.rows.loc["BC50002_C2", "spots"]))


def f_annotation_of_other_section(c):
    _rows(c, "BC50001_C1", annotation=c.copy(c.rows.loc["BC50002_C2", "annotation"]))


def f_negative_counts(c):
    def neg(df):
        df.iloc[::7, 3] = -2
        return df

    _st_counts(c, "BC50001_C1", neg)


def f_fractional_counts(c):
    _st_counts(c, "BC50001_C1", lambda df: df * 0.37)


def f_positions_only_header(c):
    outs = _visium_outs(c, "P1_D2")
    p = outs / "spatial/tissue_positions.csv"
    p.write_text(p.read_text().splitlines()[0] + "\n")


def f_matrix_no_barcodes(c):
    outs = _visium_outs(c, "P2_A1")
    with gzip.open(outs / "filtered_feature_bc_matrix/barcodes.tsv.gz", "wt") as fh:
        fh.write("")


def f_image_of_other_section(c):
    _rows(c, "BC50001_C1", image=c.rows.loc["BC50005_C1", "image"])


# ---- flaws, QC
def f_qc_removes_everything(c):
    c.cfg["qc"]["min_umi"] = 10_000_000


def f_all_white_image(c):
    _tiff_rewrite(c, "P1_D1", lambda a: np.full_like(a, 255))


def f_all_white_image_no_bounds_check(c):
    f_all_white_image(c)
    c.cfg["reading"]["bounds_check"] = False


# ---- flaws, the workflow's own intermediates (on the built workdir)
def _drop(c: Ctx, *paths: str) -> None:
    for p in paths:
        for f in c.wd.glob(p):
            os.chmod(f, f.stat().st_mode | stat.S_IWUSR)
            f.unlink()


def f_truncated_section(c):
    _drop(c, "results/patches/P1_D1/*", "results/qc/P1_D1.*")
    _truncate(c.wd / "results/sections/P1_D1.h5ad")


def f_truncated_qc(c):
    _drop(c, f"results/experiments/{EXP}/splits.tsv")
    _truncate(c.wd / "results/qc/P1_D1.h5ad")


def f_truncated_store(c):
    _drop(c, f"{FOLD}/predictions.h5ad")
    _truncate(c.wd / "results/patches/P1_D2/spots.npy", 0.8)


def f_truncated_patch_table(c):
    _drop(c, "results/qc/P1_D1.*")
    _cut_table(c.wd / "results/patches/P1_D1/spots.tsv")


def f_corrupt_patch_json(c):
    _drop(c, "results/qc/P1_D1.*")
    _truncate(c.wd / "results/patches/P1_D1/spots.json")


def f_truncated_splits(c):
    _drop(c, f"{FOLD}/predictions.h5ad")
    _cut_table(c.wd / f"results/experiments/{EXP}/splits.tsv")


def f_corrupt_model(c):
    _drop(c, f"{FOLD}/predictions.h5ad")
    _truncate(c.wd / f"{FOLD}/model.pt", 0.4)


def f_truncated_fitted(c):
    _drop(c, f"{FOLD}/predictions.h5ad")
    _truncate(c.wd / f"{FOLD}/fitted.json")


def f_truncated_fold_predictions(c):
    _drop(c, f"results/experiments/{EXP}/predictions/P1_D2.h5ad")
    _truncate(c.wd / f"{FOLD}/predictions.h5ad")


def f_truncated_nuclear_features(c):
    _drop(c, f"results/experiments/{EXP}/baselines/nuclear_rf/*")
    _cut_table(c.wd / "results/features/P1_D1/nuclear.tsv")


# ---- whole slides (wsi.slides): a slide table beside the sheet
def _slides(c: Ctx, mpp: str = "2.0", image: str | None = None, experiment: str = EXP) -> None:
    from PIL import Image

    if image is None:
        (c.wd / "data").mkdir(exist_ok=True)
        image = "data/blank.png"
        Image.fromarray(np.full((400, 400, 3), 250, np.uint8)).save(c.wd / image)
    pd.DataFrame({"slide_id": ["B"], "image": [image], "mpp": [mpp]}).to_csv(
        c.wd / "slides.tsv", sep="\t", index=False
    )
    c.cfg["wsi"] = {"slides": "slides.tsv", "experiment": experiment}


def f_wsi_unknown_experiment(c):
    _slides(c, experiment="nope")


def f_wsi_missing_image(c):
    _slides(c, image="data/no_such_slide.tif")


def f_wsi_no_tissue(c):
    _slides(c)


def f_wsi_no_mpp(c):
    _slides(c, mpp="")


SECTION = "results/sections/{}.h5ad"
FIX = "Fix:"
V, V2, ST = ["P1_D1"], ["P1_D1", "P1_D2"], ["BC50001_C1"]
SHEET = "sheet.tsv"
CFG = "run.yaml"

CASES = [
    # whole slides: the slide table and wsi.experiment at parse time, the slide's job
    Case(
        "wsi_unknown_experiment",
        V,
        f_wsi_unknown_experiment,
        ["sections"],
        ["wsi.experiment 'nope'", CFG],
        parse=True,
    ),
    Case(
        "wsi_missing_image",
        V,
        f_wsi_missing_image,
        ["sections"],
        ["slides.tsv", "sample 'B'", "no_such_slide.tif", "column 'image'"],
        parse=True,
    ),
    Case(
        "wsi_no_tissue",
        BUILT_SAMPLES,
        f_wsi_no_tissue,
        ["results/wsi/B.h5ad"],
        ["sample 'B'", "data/blank.png", "no tissue tile"],
        absent=["results/wsi/B.h5ad", "results/wsi/B/tiles.npy"],
        built=True,
    ),
    Case(
        "wsi_no_mpp",
        BUILT_SAMPLES,
        f_wsi_no_mpp,
        ["results/wsi/B.h5ad"],
        ["sample 'B'", "data/blank.png", "µm/px"],
        absent=["results/wsi/B.h5ad"],
        built=True,
    ),
    # the sheet and the config, refused at parse time
    Case(
        "missing_file",
        V,
        f_missing_file,
        ["sections"],
        ["sample 'P1_D1'", "does_not_exist.tif", "column 'image'"],
        parse=True,
    ),
    Case(
        "duplicate_ids",
        V2,
        f_duplicate_ids,
        ["sections"],
        [SHEET, "duplicate sample_id P1_D1"],
        parse=True,
    ),
    Case(
        "bad_platform",
        V,
        f_bad_platform,
        ["sections"],
        [SHEET, "sample 'P1_D1'", "column 'platform'"],
        parse=True,
    ),
    Case("empty_sheet", V, f_empty_sheet, ["sections"], [SHEET, "no rows"], parse=True),
    Case(
        "unknown_column",
        V,
        f_unknown_column,
        ["sections"],
        [SHEET, "unknown column(s) notes"],
        parse=True,
    ),
    Case(
        "extra_cell",
        V2,
        f_extra_cell,
        ["sections"],
        [SHEET, "sample 'P1_D1'", "row 2 has 14 cells"],
        parse=True,
    ),
    Case(
        "missing_required_column",
        V,
        f_missing_required_column,
        ["sections"],
        [SHEET, "patient_id"],
        parse=True,
    ),
    Case(
        "bad_sample_id",
        V,
        f_bad_sample_id,
        ["sections"],
        [SHEET, "sample 'P1 D1'", "column 'sample_id'"],
        parse=True,
    ),
    Case(
        "st_without_spots",
        ST,
        f_st_without_spots,
        ["sections"],
        [SHEET, "sample 'BC50001_C1'", "column 'spots'"],
        parse=True,
    ),
    Case(
        "ihc_without_gene",
        V,
        f_ihc_without_gene,
        ["sections"],
        [SHEET, "sample 'P1_D1'", "ihc_gene"],
        parse=True,
    ),
    Case(
        "mpp_zero",
        V,
        f_mpp_zero,
        ["sections"],
        [SHEET, "sample 'P1_D1'", "must be positive"],
        parse=True,
    ),
    Case(
        "mpp_not_a_number",
        V,
        f_mpp_not_a_number,
        ["sections"],
        [SHEET, "sample 'P1_D1'", "column 'mpp'"],
        parse=True,
    ),
    Case(
        "series_patient_clash",
        ["P1_D1", "P2_A1"],
        f_series_patient_clash,
        ["sections"],
        [SHEET, "series 'S' spans several patients"],
        parse=True,
    ),
    Case(
        "series_order_clash",
        V2,
        f_series_order_clash,
        ["sections"],
        [SHEET, "P1_D1, P1_D2 share series 'S'"],
        parse=True,
    ),
    Case(
        "sheet_missing",
        V,
        f_sheet_missing,
        ["sections"],
        ["no_such_sheet.tsv", "does not exist"],
        parse=True,
    ),
    Case(
        "fov_both",
        V,
        f_fov_both,
        ["sections"],
        [CFG, "fov_um (110) and patches.fov_px (224) are both set"],
        parse=True,
    ),
    Case(
        "fov_neither",
        V,
        f_fov_neither,
        ["sections"],
        [CFG, "neither patches.fov_um nor patches.fov_px"],
        parse=True,
    ),
    Case(
        "unknown_config_key",
        V,
        f_unknown_config_key,
        ["sections"],
        [CFG, "'min_umis' was unexpected"],
        parse=True,
    ),
    Case(
        "gene_map_missing",
        V,
        f_gene_map_missing,
        ["sections"],
        ["no_gene_map.tsv", "reading.gene_map"],
        parse=True,
    ),
    Case(
        "lopo_one_patient",
        V2,
        f_lopo_one_patient,
        ["sections"],
        [CFG, "experiment 'e'", "patient 'P1'", "P1_D1"],
        parse=True,
    ),
    Case(
        "inner_folds_one",
        ["P1_D1", "P2_A1"],
        f_inner_folds_one,
        ["sections"],
        [CFG, "experiment 'e'", "inner_folds is 1"],
        parse=True,
    ),
    Case(
        "imputation_test_in_train",
        V2,
        f_imputation_test_in_train,
        ["sections"],
        [CFG, "experiment 'e'", "'P1_D2' is also a training section"],
        parse=True,
    ),
    Case(
        "imputation_unknown_section",
        V2,
        f_imputation_unknown_section,
        ["sections"],
        [CFG, "experiment 'e'", "P1_D9"],
        parse=True,
    ),
    Case(
        "experiment_selects_nothing",
        V2,
        f_experiment_selects_nothing,
        ["sections"],
        [CFG, "experiment 'e'", "selects no section"],
        parse=True,
    ),
    Case(
        "experiment_unknown_sample",
        V,
        f_experiment_unknown_sample,
        ["sections"],
        [CFG, "experiment 'e'", "P9_X1"],
        parse=True,
    ),
    Case(
        "unknown_panel_gene",
        ["P1_D1", "BC50001_C1"],
        f_unknown_panel_gene,
        ["sections"],
        [CFG, "experiment 'e'", "NOTAGENE1", "P1_D1"],
        parse=True,
    ),
    Case(
        "clusters_on_st",
        ST,
        f_clusters_on_st,
        ["sections"],
        [CFG, "sample 'BC50001_C1'", "no clusters"],
        parse=True,
    ),
    Case(
        "clusters_without_graphclust",
        V,
        f_clusters_without_graphclust,
        ["sections"],
        [CFG, "sample 'P1_D1'", "graphclust"],
        parse=True,
    ),
    Case(
        "backbone_typo",
        V,
        f_backbone_typo,
        ["sections"],
        [CFG, "experiment 'e'", "densenet12", "densenet121"],
        parse=True,
    ),
    Case(
        "weights_missing",
        V,
        f_weights_missing,
        ["sections"],
        [CFG, "experiment 'e'", "data/pretrained.pt"],
        parse=True,
    ),
    Case(
        "same_raw_twice",
        ["P1_D1", "P9_D1"],
        f_same_raw_twice,
        ["sections"],
        [SHEET, "sample 'P1_D1'", "name the same raw", "counted twice"],
        parse=True,
    ),
    Case(
        "patient_id_case",
        V2,
        f_patient_case,
        ["sections"],
        [SHEET, "'P1', 'p1'", "differ only in case"],
        parse=True,
    ),
    Case(
        "imagenet_weights_missing",
        V,
        f_imagenet_missing,
        ["sections"],
        [CFG, "experiment 'e'", "vgg16-397923af.pth", "TORCH_HOME"],
        parse=True,
    ),
    Case(
        "attribution_gene_unmeasured",
        V2,
        f_attribution_gene_unmeasured,
        ["sections"],
        [CFG, "experiment 'e'", "NOTAGENE7", "none of the experiment's sections"],
        parse=True,
    ),
    Case(
        "patience_without_validation",
        V,
        f_patience_without_validation,
        ["sections"],
        [CFG, "experiment 'e'", "no validation spots", "val_frac"],
        parse=True,
    ),
    Case(
        "clusters_pooled_without_map",
        V2,
        f_clusters_pooled_without_map,
        ["sections"],
        [CFG, "experiment 'e'", "numbers its clusters per section", "cluster_map"],
        parse=True,
    ),
    Case(
        "exclude_absent_cluster",
        V,
        f_exclude_absent_cluster,
        ["results/experiments/e/splits.tsv"],
        ["experiment 'e'", "exclude_clusters", "['99']"],
        absent=["results/experiments/e/splits.tsv"],
    ),
    Case(
        "too_few_spots_for_folds",
        V,
        f_too_few_spots_for_folds,
        ["results/experiments/e/splits.tsv"],
        ["sample 'P1_D1'", "has no test spots", "n_folds"],
        absent=["results/experiments/e/splits.tsv"],
    ),
    Case(
        "tta_typo", V, f_tta_typo, ["sections"], [CFG, "experiments.e.tta", "1, 4, 8"], parse=True
    ),
    Case(
        "augmentation_typo",
        V,
        f_augmentation_typo,
        ["sections"],
        [CFG, "experiments.e.train.augmentation", "dihedal"],
        parse=True,
    ),
    Case(
        "cross_entropy_regression",
        V,
        f_cross_entropy_regression,
        ["sections"],
        [CFG, "experiment 'e'", "cross_entropy"],
        parse=True,
    ),
    # raw files, refused by read_section (or extract_patches)
    Case(
        "transposed_coordinates",
        ["BC50002_C2"],
        f_transposed_coordinates,
        [SECTION.format("BC50002_C2")],
        ["sample 'BC50002_C2'", "transposed.spots.txt", "transposed"],
        absent=[SECTION.format("BC50002_C2")],
    ),
    Case(
        "transposed_coordinates_near_square_tissue",
        ST,
        f_transposed_coordinates_near_square,
        [SECTION.format("BC50001_C1")],
        ["sample 'BC50001_C1'", "transposed.spots.txt"],
        absent=[SECTION.format("BC50001_C1")],
        reader=True,
    ),
    Case(
        "hires_as_fullres",
        V,
        f_hires_as_fullres,
        [SECTION.format("P1_D1")],
        ["sample 'P1_D1'", "tissue_hires_image.png"],
        absent=[SECTION.format("P1_D1")],
    ),
    Case(
        "greyscale_image",
        ST,
        f_greyscale,
        [SECTION.format("BC50001_C1")],
        ["sample 'BC50001_C1'", "BC50001_C1.jpg", "greyscale"],
        absent=[SECTION.format("BC50001_C1")],
    ),
    Case(
        "rgba_image",
        ST,
        f_rgba,
        [SECTION.format("BC50001_C1")],
        ["sample 'BC50001_C1'", "BC50001_C1.png", "RGBA"],
        absent=[SECTION.format("BC50001_C1")],
    ),
    Case(
        "tiff_16bit",
        V,
        f_16bit_tiff,
        [SECTION.format("P1_D1")],
        ["sample 'P1_D1'", "P1_D1_fullres.tif", "16-bit"],
        absent=[SECTION.format("P1_D1")],
    ),
    Case(
        "gzip_truncated_counts",
        ST,
        f_gzip_truncated_counts,
        [SECTION.format("BC50001_C1")],
        ["sample 'BC50001_C1'", "BC50001_C1.tsv.gz"],
        absent=[SECTION.format("BC50001_C1")],
    ),
    Case(
        "missing_scalefactors",
        V,
        f_missing_scalefactors,
        [SECTION.format("P1_D1")],
        ["sample 'P1_D1'", "scalefactors_json.json"],
        absent=[SECTION.format("P1_D1")],
    ),
    Case(
        "truncated_tiff",
        V,
        f_truncated_tiff,
        [SECTION.format("P1_D1"), "results/patches/P1_D1/spots.npy"],
        ["sample 'P1_D1'", "P1_D1_fullres.tif"],
        absent=[SECTION.format("P1_D1"), "results/patches/P1_D1/spots.npy"],
        reader=True,
    ),
    Case(
        "truncated_jpeg",
        ST,
        f_truncated_jpeg,
        [SECTION.format("BC50001_C1"), "results/patches/BC50001_C1/spots.npy"],
        ["sample 'BC50001_C1'", "BC50001_C1.jpg"],
        absent=[SECTION.format("BC50001_C1"), "results/patches/BC50001_C1/spots.npy"],
        reader=True,
    ),
    Case(
        "jpeg_300dpi_tag_with_sheet_mpp",
        ST,
        f_jpeg_300dpi,
        [SECTION.format("BC50001_C1")],
        [],
        passes=True,
        reader=True,
    ),
    Case(
        "mirrored_image",
        V,
        f_mirrored,
        [SECTION.format("P1_D1")],
        ["sample 'P1_D1'", "P1_D1_fullres.tif"],
        absent=[SECTION.format("P1_D1")],
        reader=True,
    ),
    Case(
        "flipped_image",
        V,
        f_flipped,
        [SECTION.format("P1_D1")],
        ["sample 'P1_D1'", "P1_D1_fullres.tif"],
        absent=[SECTION.format("P1_D1")],
        reader=True,
    ),
    Case(
        "rotated_180_image",
        V,
        f_rotated_180,
        [SECTION.format("P1_D1")],
        ["sample 'P1_D1'", "P1_D1_fullres.tif"],
        absent=[SECTION.format("P1_D1")],
        reader=True,
    ),
    Case(
        "positions_of_other_section",
        V2,
        f_positions_of_other_section,
        [SECTION.format("P1_D1")],
        ["sample 'P1_D1'", "tissue_positions"],
        absent=[SECTION.format("P1_D1")],
        reader=True,
    ),
    Case(
        "st_spots_of_other_section",
        ["BC50001_C1", "BC50002_C2"],
        f_st_spots_of_other_section,
        [SECTION.format("BC50001_C1")],
        ["sample 'BC50001_C1'", "BC50002_C2_selection.tsv"],
        absent=[SECTION.format("BC50001_C1")],
        reader=True,
    ),
    Case(
        "annotation_of_other_section",
        ["BC50001_C1", "BC50002_C2"],
        f_annotation_of_other_section,
        [SECTION.format("BC50001_C1")],
        ["sample 'BC50001_C1'", "BC50002_C2_Coords.tsv"],
        absent=[SECTION.format("BC50001_C1")],
        reader=True,
    ),
    Case(
        "image_of_other_section",
        ["BC50001_C1"],
        f_image_of_other_section,
        [SECTION.format("BC50001_C1")],
        [
            "sample 'BC50001_C1'",
            "HE_BC50005_C1.jpg",
            "probably the image of another section",
            "give the image the coordinates were aligned to",
        ],
        absent=[SECTION.format("BC50001_C1")],
        reader=True,
    ),
    Case(
        "negative_counts",
        ST,
        f_negative_counts,
        [SECTION.format("BC50001_C1")],
        ["sample 'BC50001_C1'", "BC50001_C1.tsv.gz", "negative"],
        absent=[SECTION.format("BC50001_C1")],
        reader=True,
    ),
    Case(
        "fractional_counts",
        ST,
        f_fractional_counts,
        [SECTION.format("BC50001_C1")],
        ["sample 'BC50001_C1'", "BC50001_C1.tsv.gz"],
        absent=[SECTION.format("BC50001_C1")],
        reader=True,
    ),
    Case(
        "positions_only_header",
        ["P1_D2"],
        f_positions_only_header,
        [SECTION.format("P1_D2")],
        ["sample 'P1_D2'", "tissue_positions.csv"],
        absent=[SECTION.format("P1_D2")],
        reader=True,
    ),
    Case(
        "matrix_no_barcodes",
        ["P2_A1"],
        f_matrix_no_barcodes,
        [SECTION.format("P2_A1")],
        ["sample 'P2_A1'", "filtered_feature_bc_matrix"],
        absent=[SECTION.format("P2_A1")],
        reader=True,
    ),
    # QC
    Case(
        "qc_removes_every_spot",
        V,
        f_qc_removes_everything,
        ["results/qc/P1_D1.h5ad"],
        [
            "sample 'P1_D1'",
            "results/sections/P1_D1.h5ad",
            "QC removes all",
            "min_umi 1e+07",
            "median UMI",
        ],
        absent=["results/qc/P1_D1.h5ad", "results/qc/P1_D1.tsv", "results/qc/P1_D1.png"],
    ),
    Case(
        "all_white_image",
        V,
        f_all_white_image,
        ["results/qc/P1_D1.h5ad"],
        ["sample 'P1_D1'", "P1_D1_fullres.tif", "not darker"],
        absent=[SECTION.format("P1_D1"), "results/qc/P1_D1.h5ad"],
    ),
    Case(
        "all_white_image_whiteness_filter",
        V,
        f_all_white_image_no_bounds_check,
        ["results/qc/P1_D1.h5ad"],
        [
            "sample 'P1_D1'",
            "results/sections/P1_D1.h5ad",
            "the whiteness filter removes 1724 of 1724",
            "check the section's image",
        ],
        absent=["results/qc/P1_D1.h5ad", "results/qc/P1_D1.png"],
    ),
    # the workflow's own intermediates: removed, and rebuilt by the rerun
    Case(
        "truncated_section_h5ad",
        BUILT_SAMPLES,
        f_truncated_section,
        ["results/qc/P1_D1.h5ad"],
        ["sample 'P1_D1'", "results/sections/P1_D1.h5ad", "it was removed"],
        absent=[SECTION.format("P1_D1"), "results/patches/P1_D1/spots.npy"],
        rerun=[SECTION.format("P1_D1"), "results/qc/P1_D1.h5ad"],
        built=True,
    ),
    Case(
        "truncated_qc_h5ad",
        BUILT_SAMPLES,
        f_truncated_qc,
        [f"results/experiments/{EXP}/splits.tsv"],
        ["sample 'P1_D1'", "results/qc/P1_D1.h5ad", "it was removed"],
        absent=["results/qc/P1_D1.h5ad", f"results/experiments/{EXP}/splits.tsv"],
        rerun=["results/qc/P1_D1.h5ad"],
        built=True,
    ),
    Case(
        "truncated_patch_store",
        BUILT_SAMPLES,
        f_truncated_store,
        [f"{FOLD}/predictions.h5ad"],
        ["sample 'P1_D2'", "results/patches/P1_D2/spots.npy", "it was removed"],
        absent=["results/patches/P1_D2/spots.npy", f"{FOLD}/predictions.h5ad"],
        rerun=["results/patches/P1_D2/spots.npy", f"{FOLD}/predictions.h5ad"],
        built=True,
    ),
    Case(
        "truncated_patch_table",
        BUILT_SAMPLES,
        f_truncated_patch_table,
        ["results/qc/P1_D1.h5ad"],
        ["sample 'P1_D1'", "results/patches/P1_D1/spots.tsv", "it was removed"],
        absent=["results/patches/P1_D1/spots.tsv", "results/qc/P1_D1.h5ad"],
        built=True,
    ),
    Case(
        "corrupt_patch_json",
        BUILT_SAMPLES,
        f_corrupt_patch_json,
        ["results/qc/P1_D1.h5ad"],
        ["sample 'P1_D1'", "results/patches/P1_D1/spots.json", "it was removed"],
        absent=["results/patches/P1_D1/spots.json", "results/qc/P1_D1.h5ad"],
        built=True,
    ),
    Case(
        "truncated_splits",
        BUILT_SAMPLES,
        f_truncated_splits,
        [f"{FOLD}/predictions.h5ad"],
        [f"results/experiments/{EXP}/splits.tsv", "it was removed"],
        absent=[f"results/experiments/{EXP}/splits.tsv", f"{FOLD}/predictions.h5ad"],
        built=True,
    ),
    Case(
        "corrupt_model_pt",
        BUILT_SAMPLES,
        f_corrupt_model,
        [f"{FOLD}/predictions.h5ad"],
        [f"{FOLD}/model.pt", "it was removed"],
        absent=[f"{FOLD}/model.pt", f"{FOLD}/predictions.h5ad"],
        rerun=[f"{FOLD}/model.pt", f"{FOLD}/predictions.h5ad"],
        built=True,
    ),
    Case(
        "truncated_fitted_json",
        BUILT_SAMPLES,
        f_truncated_fitted,
        [f"{FOLD}/predictions.h5ad"],
        [f"{FOLD}/fitted.json", "it was removed", "model.pt"],
        absent=[f"{FOLD}/fitted.json", f"{FOLD}/model.pt", f"{FOLD}/predictions.h5ad"],
        built=True,
    ),
    Case(
        "truncated_fold_predictions",
        BUILT_SAMPLES,
        f_truncated_fold_predictions,
        [f"results/experiments/{EXP}/predictions/P1_D2.h5ad"],
        [f"{FOLD}/predictions.h5ad", "it was removed"],
        absent=[f"{FOLD}/predictions.h5ad", f"results/experiments/{EXP}/predictions/P1_D2.h5ad"],
        built=True,
    ),
    Case(
        "truncated_nuclear_features",
        BUILT_SAMPLES,
        f_truncated_nuclear_features,
        [f"results/experiments/{EXP}/baselines/nuclear_rf/summary.tsv"],
        ["sample 'P1_D1'", "results/features/P1_D1/nuclear.tsv", "it was removed"],
        absent=[
            "results/features/P1_D1/nuclear.tsv",
            f"results/experiments/{EXP}/baselines/nuclear_rf/summary.tsv",
        ],
        built=True,
    ),
]


def _param(case: Case):
    return pytest.param(case, id=case.id)


def test_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


# ------------------------------------------------------------------------------ the test
def _error_lines(proc, parse: bool) -> list[str]:
    lines = (proc.stderr + proc.stdout).splitlines()
    if parse:
        return [ln for ln in lines if FIX in ln]
    return [ln for ln in lines if ln.startswith("stpredict error:")]


def _leftover_temp_files(wd: Path) -> list[Path]:
    res = wd / "results"
    return sorted(p for p in res.rglob(".*.tmp*")) if res.exists() else []


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case: Case, tmp_path, cohort, request):
    t0 = time.perf_counter()
    if case.built:
        wd = tmp_path / "wd"
        shutil.copytree(request.getfixturevalue("built"), wd, symlinks=True)
    else:
        wd = copy_workflow(tmp_path)
    rows = demo_rows(cohort)
    ctx = Ctx(wd, cohort, rows, base_config(cohort))
    if case.built:
        ctx.cfg["experiments"] = {EXP: tiny_experiment()}
    case.flaw(ctx)
    write_case(wd, ctx.rows[ctx.rows.index.isin(case.samples)], ctx.cfg)
    if ctx.post is not None:
        ctx.post(wd / SHEET)

    args = [*(["-n"] if case.parse else []), *case.target, "--configfile", CFG]
    proc = run_snakemake(wd, *args, check=False, timeout=600, env=ctx.env)
    out = (proc.stderr + proc.stdout)[-6000:]
    if case.passes:
        assert proc.returncode == 0, out
        return
    assert proc.returncode != 0, out
    lines = _error_lines(proc, case.parse)
    assert len(lines) == 1, f"expected one error line, got {lines}\n{out}"
    line = lines[0]
    print(f"{case.id}: {line}")
    assert FIX in line, line
    for text in case.expect:
        assert text in line, f"{text!r} not in: {line}"
    for p in case.absent:
        assert not (wd / p).exists(), f"{p} left behind"
    assert not _leftover_temp_files(wd), _leftover_temp_files(wd)
    if case.parse:
        assert not (wd / "results").exists() or not any((wd / "results").rglob("*.h5ad"))
    if case.rerun:
        again = run_snakemake(wd, *case.target, "--configfile", CFG, check=False, timeout=600)
        assert again.returncode == 0, (again.stderr + again.stdout)[-6000:]
        for p in case.rerun:
            assert (wd / p).is_file(), f"{p} not rebuilt"
        if f"{FOLD}/model.pt" in case.rerun:
            # not protected(): a changed training setting must be able to retrain the fold
            assert stat.S_IMODE((wd / f"{FOLD}/model.pt").stat().st_mode) & stat.S_IWUSR
    print(f"{case.id}: {time.perf_counter() - t0:.1f} s")
