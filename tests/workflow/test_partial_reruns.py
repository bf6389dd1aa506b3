"""Partial reruns stay partial: Snakemake's own plan (a dry run) after a change to a finished demo.

Each job's params hold exactly what its outputs depend on, so adding a section reruns only that
section's jobs and the aggregates that include it, an evaluation setting reruns no training, and a
training hyper-parameter reruns training and what follows but not ingestion or patching.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import run_snakemake

pytestmark = pytest.mark.slow

#: jobs that depend on sections or experiments only through their inputs
UPSTREAM = {"make_demo", "read_section", "extract_patches", "filter_spots"}
FOLD_JOBS = {"make_splits", "train_fold", "predict_fold"}


def plan(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> number of jobs of the dry-run plan (the 'Job stats' table)."""
    proc = run_snakemake(workdir, "-n", *args)
    counts: dict[str, int] = {}
    lines = proc.stdout.splitlines()
    if "Job stats:" not in lines:
        assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
        return counts
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def plan_jobs(workdir: Path, *args: str) -> str:
    """The dry run's text (job headers with their wildcards)."""
    return run_snakemake(workdir, "-n", *args).stdout


def write_config(workdir: Path, tmp_path: Path, edit) -> str:
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    edit(cfg)
    path = tmp_path / "config_changed.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def test_a_finished_demo_has_nothing_to_do(demo_run):
    counts = plan(demo_run)
    assert not (set(counts) - {"all", "write_run_config"}), counts


def test_an_evaluation_setting_reruns_no_training(demo_run, tmp_path):
    def edit(cfg):
        cfg["evaluation"]["maps"]["n_sections"] = 1
        cfg["evaluation"]["alpha"] = 0.01

    counts = plan(demo_run, "--configfile", write_config(demo_run, tmp_path, edit))
    assert not (FOLD_JOBS | UPSTREAM) & set(counts), counts
    assert counts.get("score_predictions", 0) >= 1 and counts.get("plot_experiment", 0) >= 1


def test_a_training_setting_reruns_training_of_that_experiment_only(demo_run, tmp_path):
    def edit(cfg):
        cfg["experiments"]["demo_clusters"]["train"]["lr"] = 0.002

    changed = write_config(demo_run, tmp_path, edit)
    counts = plan(demo_run, "--configfile", changed)
    assert not UPSTREAM & set(counts), counts
    assert "make_splits" not in counts, counts  # the split does not depend on the optimiser
    assert counts.get("train_fold") == 2 and counts.get("predict_fold") == 2, counts
    text = plan_jobs(demo_run, "--configfile", changed)
    assert "experiment=demo_clusters" in text
    for other in ("demo_stnet", "demo_deepspace", "demo_imputation"):
        assert f"experiment={other}, fold=" not in text, other


def test_adding_a_section_reruns_only_its_jobs_and_the_aggregates(demo_run, tmp_path):
    cfg = yaml.safe_load((demo_run / "config.yaml").read_text())
    sheet = pd.read_csv(demo_run / cfg["samples"], sep="\t", dtype=str, keep_default_na=False)
    row = sheet[sheet["sample_id"] == "P2_A1"].iloc[0].copy()
    src = demo_run / "results/demo/visium/P2_A1"
    dst = tmp_path / "P3_A1"
    shutil.copytree(src, dst)
    row["sample_id"], row["patient_id"] = "P3_A1", "P3"
    for col in ("raw", "image", "annotation"):
        if row[col]:
            row[col] = str(
                dst / (demo_run / row[col]).relative_to(src)
            )  # sheet paths: workdir-relative
    new_sheet = tmp_path / "samples.tsv"
    pd.concat([sheet, row.to_frame().T]).to_csv(new_sheet, sep="\t", index=False)
    counts = plan(demo_run, "--config", f"samples={new_sheet}")
    for rule in ("read_section", "extract_patches", "filter_spots"):
        assert counts.get(rule) == 1, (rule, counts)  # the new section only
    assert not FOLD_JOBS & set(counts), counts  # no experiment includes P3_A1
    assert counts.get("summarise_qc") == 1 and counts.get("plot_dataset") == 1, counts
