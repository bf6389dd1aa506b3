"""A whole Snakemake run killed mid-training (SIGKILL) and resumed ends as an uninterrupted run.

Two working directories run the same small config on the same small demo cohort: one straight
through, one killed with SIGKILL (Snakemake and its jobs, the whole process group) as soon as a
fold has written its first epoch checkpoint, then unlocked and rerun with ``--rerun-incomplete``
as a user would. The resumed fold continues from its checkpoint (``resumed_from`` > 0 in its log)
and every result (weights, histories, predictions, metric tables) equals the uninterrupted run's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import copy_workflow, run_snakemake

pytestmark = pytest.mark.slow

EXP = "resume"
TARGETS = (f"results/experiments/{EXP}/metrics/summary.tsv",)
#: per-epoch columns that measure time, not results
TIMING = ["seconds", "images_per_s"]


def _write_run(workdir: Path, cohort: Path) -> None:
    from stpredict.demo import demo_sheet

    sheet = demo_sheet(str(cohort), small=True)
    sheet[sheet["sample_id"] == "P1_D1"].to_csv(workdir / "sheet.tsv", sep="\t", index=False)
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["samples"] = "sheet.tsv"
    cfg["reading"]["gene_map"] = str(cohort / "gene_ids.tsv")
    cfg["evaluation"]["gene_groups"] = ""
    cfg["evaluation"]["baselines"] = ["mean"]
    cfg["ihc"]["known_affine"] = {}
    cfg["wsi"]["slides"] = ""  # no whole slides (the demo's are predicted by demo_stnet)
    cfg["cohorts"] = {}  # the demo's external cohort is predicted by demo_stnet
    cfg["experiments"] = {
        EXP: {
            "sections": {"samples": ["P1_D1"]},
            "split": {"scheme": "random_within_section", "n_folds": 2, "val_frac": 0.2},
            "targets": {
                "transform": "log1p",
                "genes": {"mode": "top_mean", "n": 20, "panel": "", "min_frac": 0.1},
            },
            "model": {"backbone": "tiny", "weights": "none"},
            # enough epochs that the kill lands mid-training; no early stop
            "train": {"epochs": 40, "patience": None, "batch_size": 32, "augmentation": "dihedral"},
            "tta": 4,
            "evaluation": {
                "baselines": ["mean"],
                "ols": False,
                "latent": False,
                "attributions": {"enabled": False},
            },
        }
    }
    (workdir / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _kill_mid_training(workdir: Path, timeout: float = 600) -> Path:
    """Start the run, SIGKILL its whole process group after a fold's first checkpoint."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *TARGETS, "--configfile", "run.yaml"]
    folds = workdir / f"results/experiments/{EXP}/folds"
    with open(workdir / "killed_run.log", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                ckpts = list(folds.glob("*/checkpoint.pt"))
                if ckpts:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return ckpts[0].parent
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    pytest.fail(
        "no checkpoint appeared before the run ended:\n" + (workdir / "killed_run.log").read_text()
    )


def _history(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t").drop(columns=TIMING)


def _assert_same_results(a: Path, b: Path) -> None:
    exp_a, exp_b = a / f"results/experiments/{EXP}", b / f"results/experiments/{EXP}"
    models = sorted(p.relative_to(exp_a) for p in exp_a.glob("folds/*/model.pt"))
    assert len(models) == 2
    for rel in models:
        sa = torch.load(exp_a / rel, map_location="cpu", weights_only=True)["state_dict"]
        sb = torch.load(exp_b / rel, map_location="cpu", weights_only=True)["state_dict"]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{rel}: {k} differs"
        hist = rel.parent / "history.tsv"
        pd.testing.assert_frame_equal(_history(exp_a / hist), _history(exp_b / hist))
    preds = sorted(p.relative_to(exp_a) for p in exp_a.glob("**/*.h5ad"))
    assert preds
    for rel in preds:
        pa, pb = ad.read_h5ad(exp_a / rel), ad.read_h5ad(exp_b / rel)
        assert list(pa.obs_names) == list(pb.obs_names), rel
        np.testing.assert_array_equal(
            pa.layers["predicted"], pb.layers["predicted"], err_msg=str(rel)
        )
        np.testing.assert_array_equal(np.asarray(pa.X), np.asarray(pb.X), err_msg=str(rel))
    tables = sorted(p.relative_to(exp_a) for p in exp_a.glob("metrics/**/*.tsv"))
    assert tables
    for rel in tables:
        pd.testing.assert_frame_equal(
            pd.read_csv(exp_a / rel, sep="\t"), pd.read_csv(exp_b / rel, sep="\t"), obj=str(rel)
        )


def test_a_killed_run_resumed_equals_an_uninterrupted_one(tmp_path):
    from stpredict.demo import make_demo

    cohort = tmp_path / "cohort"
    make_demo(cohort, seed=7, threads=1, small=True)
    (tmp_path / "straight").mkdir()
    (tmp_path / "killed").mkdir()
    straight = copy_workflow(tmp_path / "straight")
    killed = copy_workflow(tmp_path / "killed")
    for wd in (straight, killed):
        _write_run(wd, cohort)
    run_snakemake(straight, *TARGETS, "--configfile", "run.yaml")

    fold_dir = _kill_mid_training(killed)
    assert not (fold_dir / "model.pt").exists(), "the kill came after the fold had finished"
    # as a user: the killed Snakemake left its lock; unlock, then rerun the incomplete jobs
    run_snakemake(killed, "--unlock", *TARGETS, "--configfile", "run.yaml")
    run_snakemake(killed, *TARGETS, "--configfile", "run.yaml", "--rerun-incomplete")
    log = (killed / f"results/logs/train_fold/{EXP}/{fold_dir.name}.log").read_text()
    resumed = [int(s) for s in re.findall(r"'resumed_from': (\d+)", log)]
    assert resumed and resumed[-1] >= 1, log[-3000:]
    assert not (fold_dir / "checkpoint.pt").exists()  # a finished fold keeps no checkpoint
    _assert_same_results(straight, killed)
