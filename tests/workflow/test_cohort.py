"""Predict-only run on a new cohort, from a separate working directory, with a finished demo's models.

The demo run (``demo_run``, shared by the workflow tests) trained ``demo_stnet``; here a second
directory holds only a cohort config, the demo's external cohort (a new patient: one ST section
with counts, one image-only row) and the gene map, and runs ``predict_cohort`` with the
workflow of the demo run. Nothing may be trained or read from the demo run but the models
folder; the scored section must show the planted morphology-expression link; genes or µm/px
that cannot match the model are refused with one line.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import run_snakemake

pytestmark = pytest.mark.slow

#: rules a predict-only run may plan (nothing of ingestion / training of the run's own sheet)
COHORT_RULES = {
    "cohort_read_section",
    "cohort_patches",
    "cohort_qc",
    "cohort_predict",
    "cohort_grid",
    "cohort_superres",
    "cohort_score",
    "cohort_predict_image",
    "cohort_superres_image",
    "cohort_maps",
    "cohort_superres_maps",
    "predict_cohort",
}


def _write_cohort(work: Path, demo_run: Path, name: str, edit=None, gene_map=True) -> str:
    """Copy the demo's external cohort into ``work/data`` and write ``work/{name}.yaml``."""
    data = work / "data"
    if not data.exists():
        shutil.copytree(demo_run / "results" / "demo" / "cohort", data)
        shutil.copy(demo_run / "results" / "demo" / "gene_ids.tsv", data / "gene_ids.tsv")
    sheet = pd.read_csv(data / "samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    for col in ("raw", "spots", "image", "annotation"):
        sheet[col] = sheet[col].str.replace("results/demo/cohort/", "data/", regex=False)
    if edit is not None:
        sheet = edit(sheet)
    sheet.to_csv(work / f"{name}.tsv", sep="\t", index=False)
    cfg = {
        "cohorts": {
            name: {
                "sheet": f"{name}.tsv",  # relative to the working directory
                "models": os.path.relpath(demo_run / "results/experiments/demo_stnet", work),
            }
        }
    }
    if gene_map:
        cfg["reading"] = {"gene_map": "data/gene_ids.tsv"}
    (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return f"{name}.yaml"


def _run(work: Path, demo_run: Path, configfile: str, *args: str, check: bool = True):
    # targets and flags first: --configfile takes every word after it
    return run_snakemake(
        work,
        *args,
        "-s",
        str(demo_run / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        configfile,
        check=check,
    )


def _plan(stdout: str) -> dict[str, int]:
    lines = stdout.splitlines()
    counts = {}
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def cohort_run(demo_run, tmp_path_factory):
    """The predict-only run; returns its working directory and the dry run's plan."""
    work = tmp_path_factory.mktemp("cohort_run")
    cfg = _write_cohort(work, demo_run, "new")
    plan = _plan(_run(work, demo_run, cfg, "-n", "predict_cohort").stdout)
    _run(work, demo_run, cfg, "predict_cohort")
    return work, plan


def test_the_plan_trains_nothing_and_reads_only_the_cohort(cohort_run, demo_run):
    work, plan = cohort_run
    assert set(plan) <= COHORT_RULES, plan
    assert plan["cohort_predict"] == 1 and plan["cohort_predict_image"] == 1
    assert not (work / "results" / "experiments").exists()
    assert not (work / "results" / "sections").exists()


def test_outputs_exist_and_are_self_contained(cohort_run, demo_run):
    from stpredict.outputs import check_result

    work, _ = cohort_run
    base = work / "results" / "cohorts" / "new"
    card = json.loads((demo_run / "results/experiments/demo_stnet/model.json").read_text())
    n_folds = len(card["folds"])
    for rel in (
        "metrics/per_gene.tsv",
        "metrics/summary.tsv",
        "maps/BC50007_C1.png",
        "maps/BC50007_C2.png",
        "superres/BC50007_C1.h5ad",
        "superres/BC50007_C1.png",
        "superres/BC50007_C2.h5ad",
        "superres/BC50007_C2.png",
    ):
        assert (base / rel).is_file(), rel
    for s in ("BC50007_C1", "BC50007_C2"):
        a = ad_read(base / "predictions" / f"{s}.h5ad")
        assert check_result(a) == [], (s, check_result(a))
        assert a.uns["stpredict"]["averaged_over_folds"] == n_folds
        assert np.isfinite(a.layers["predicted"]).all()


def ad_read(path):
    import anndata as ad

    return ad.read_h5ad(path)


def test_the_scored_section_shows_the_planted_link(cohort_run, demo_run):
    work, _ = cohort_run
    base = work / "results" / "cohorts" / "new"
    a = ad_read(base / "predictions" / "BC50007_C1.h5ad")
    assert a.var["measured"].all() and a.n_obs > 100
    per_gene = pd.read_csv(base / "metrics" / "per_gene.tsv", sep="\t")
    raw = per_gene[(per_gene["target"] == "raw") & (per_gene["stratum"] == "all")]
    assert set(raw["unit"]) == {"BC50007_C1"}
    roles = pd.read_csv(demo_run / "results" / "demo" / "gene_roles.tsv", sep="\t")
    role = dict(zip(roles["gene"], roles["role"], strict=True))
    r = raw.set_index("gene")["pearson"]
    morph = r[[g for g in r.index if role.get(g) == "morphology"]]
    noise = r[[g for g in r.index if role.get(g) == "noise"]]
    assert len(morph) >= 5 and morph.median() > 0.5, morph.describe()
    assert morph.median() > noise.median() + 0.3
    summary = pd.read_csv(base / "metrics" / "summary.tsv", sep="\t")
    assert {"median_pearson", "p_holm"} <= set(summary.columns)


def test_the_image_only_row_is_predicted(cohort_run):
    work, _ = cohort_run
    a = ad_read(work / "results" / "cohorts" / "new" / "predictions" / "BC50007_C2.h5ad")
    assert a.n_obs > 100 and np.isnan(np.asarray(a.X)).all()
    assert not a.var["measured"].any()
    sr = ad_read(work / "results" / "cohorts" / "new" / "superres" / "BC50007_C2.h5ad")
    assert sr.n_obs > 2 * a.n_obs  # tiles 55 µm apart under a 110 µm field of view


def test_genes_and_pixel_sizes_that_cannot_match_are_refused(cohort_run, demo_run):
    work, _ = cohort_run

    def coarse(sheet):
        sheet.loc[sheet["platform"] == "image", "mpp"] = "10"
        # a mouse section against the human model: no gene matches by name nor by id (the
        # demo's human Ensembl ids match the card's gene ids even without a gene map)
        raw = sheet.loc[sheet["platform"] == "st", "raw"].iloc[0]
        counts = pd.read_csv(work / raw, sep="\t", index_col=0)
        counts.columns = [f"ENSMUSG{i:011d}" for i in range(counts.shape[1])]
        mouse = raw.replace(".tsv.gz", "_mouse.tsv.gz")
        counts.to_csv(work / mouse, sep="\t")
        sheet.loc[sheet["platform"] == "st", "raw"] = mouse
        return sheet

    cfg = _write_cohort(work, demo_run, "bad", edit=coarse, gene_map=False)
    proc = _run(work, demo_run, cfg, "--keep-going", "predict_cohort", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    genes = [ln for ln in out.splitlines() if "of the model's" in ln and "genes" in ln]
    assert genes and "sample 'BC50007_C1'" in genes[0] and "reading.gene_map" in genes[0], out[
        -3000:
    ]
    mpp = [ln for ln in out.splitlines() if "coarser than the" in ln]
    assert mpp and "BC50007_C2" in mpp[0] and "10 µm/px" in mpp[0], out[-3000:]


def test_an_image_only_row_with_spots_is_predicted_there_and_tiled_for_superres(tmp_path):
    # the row's spots are its predictions; its super-resolution tiles the whole image
    # (it used to predict the same spots again: superres identical to the predictions)
    from tests.conftest import REPO
    from tests.unit.wsi.helpers import make_model_dir, tissue_image, write_png

    exp = make_model_dir(tmp_path / "model", n_folds=1, epochs=1)
    work = tmp_path / "work"
    work.mkdir()
    write_png(work / "new.png", tissue_image(200, 240, seed=3))
    pd.DataFrame({"x": [80.0, 120.0, 160.0], "y": [100.0] * 3, "id": ["a", "b", "c"]}).to_csv(
        work / "spots.tsv", sep="\t", index=False
    )
    row = {"sample_id": "N1", "patient_id": "P9", "platform": "image", "raw": ""}
    row |= {"spots": "spots.tsv", "image": "new.png", "mpp": "1.0"}
    pd.DataFrame([row]).to_csv(work / "sheet.tsv", sep="\t", index=False)
    cfg = {"cohorts": {"c": {"sheet": "sheet.tsv", "models": str(exp), "stride_um": 16}}}
    (work / "c.yaml").write_text(yaml.safe_dump(cfg))
    targets = [f"results/cohorts/c/{d}/N1.h5ad" for d in ("predictions", "superres")]
    run_snakemake(
        work, *targets, "-s", str(REPO / "Snakefile"), "--directory", str(work),
        "--configfile", "c.yaml",
    )  # fmt: skip
    pred = ad_read(work / targets[0])
    sr = ad_read(work / targets[1])
    assert list(pred.obs_names) == ["a", "b", "c"]
    assert sr.uns["stpredict"]["kind"] == "tiles" and sr.n_obs > 3 * pred.n_obs
