"""The paper presets build their full DAG on cohorts of the papers' size (dry runs)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import copy_workflow, placeholder_imagenet_cache, run_snakemake

pytestmark = pytest.mark.slow


def job_counts(stdout: str) -> dict[str, int]:
    table = stdout.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def touch(path: Path, directory: bool = False) -> str:
    if directory:
        path.mkdir(parents=True, exist_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return str(path)


def stnet_sheet(root: Path) -> Path:
    """23 patients, 68 sections (one patient with two), in the ST-Net cohort's naming."""
    rows = []
    for p in range(23):
        patient = f"BC{23000 + p}"
        for sec in ["C1", "C2"] if p == 0 else ["C1", "C2", "D1"]:
            d = root / "data" / patient
            rows.append(
                {
                    "sample_id": f"{patient}_{sec}",
                    "patient_id": patient,
                    "platform": "st",
                    "raw": touch(d / f"{patient}_{sec}.tsv.gz"),
                    "spots": touch(d / f"spots_{patient}_{sec}.csv.gz"),
                    "image": touch(d / f"HE_{patient}_{sec}.jpg"),
                    "annotation": touch(d / f"{patient}_{sec}_Coords.tsv"),
                }
            )
    sheet = root / "stnet_68.tsv"
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    assert len(rows) == 68
    return sheet


def visium_sheet(root: Path) -> Path:
    rows = []
    for p, n in (("P1", 3), ("P2", 2), ("P3", 2)):
        for i in range(1, n + 1):
            s = f"{p}_D{i}"
            rows.append(
                {
                    "sample_id": s,
                    "patient_id": p,
                    "platform": "visium",
                    "raw": touch(root / "data" / s / "outs", directory=True),
                    "image": touch(root / "data" / s / f"{s}.tif"),
                    "series": f"{p}_D",
                    "order": str(i),
                }
            )
    sheet = root / "visium.tsv"
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    return sheet


def test_stnet_preset_full_dag(tmp_path):
    workdir = copy_workflow(tmp_path)
    sheet = stnet_sheet(tmp_path)
    proc = run_snakemake(
        workdir,
        "-n",
        "all",
        "--configfile",
        "config/stnet.yaml",
        "--config",
        f"samples={sheet}",
        env=placeholder_imagenet_cache(tmp_path),
    )
    jobs = job_counts(proc.stdout)
    assert jobs["read_section"] == 68 and jobs["extract_patches"] == 68
    assert jobs["train_fold"] == 23 * (
        4 + 1
    )  # 4 inner folds + the final retrain per held-out patient
    assert (
        jobs["predict_fold"] == 23 and jobs["collect_predictions"] == 68
    )  # one per held-out section


def test_deepspace_preset_full_dag(tmp_path):
    workdir = copy_workflow(tmp_path)
    sheet = visium_sheet(tmp_path)
    proc = run_snakemake(
        workdir,
        "-n",
        "all",
        "--configfile",
        "config/deepspace.yaml",
        "--config",
        f"samples={sheet}",
        env=placeholder_imagenet_cache(tmp_path),
    )
    jobs = job_counts(proc.stdout)
    # one experiment per section (DeepSpaCE trained within a section): 7 sections x 5-fold CV,
    # one imputation, 7 sections x 5-fold clusters
    assert jobs["train_fold"] == 7 * 5 + 1 + 7 * 5
    assert jobs["predict_fold"] == 71
    assert jobs["make_splits"] == 7 + 1 + 7
    assert "make_demo" not in jobs  # the preset does not depend on the demo's files


def test_deepspace_clusters_across_sections_refused_before_running(tmp_path):
    workdir = copy_workflow(tmp_path)
    sheet = visium_sheet(tmp_path)
    cfg = (workdir / "config/deepspace.yaml").read_text()
    cfg = cfg.replace(
        """  deepspace_clusters:
    task: clusters
    sections: {platform: visium, each: true}""",
        """  deepspace_clusters:
    task: clusters
    sections: {platform: visium}""",
    )
    (workdir / "pooled.yaml").write_text(cfg)
    proc = run_snakemake(
        workdir,
        "-n",
        "all",
        "--configfile",
        "pooled.yaml",
        "--config",
        f"samples={sheet}",
        check=False,
        env=placeholder_imagenet_cache(tmp_path),
    )
    assert proc.returncode != 0
    assert "numbers its clusters per section" in proc.stdout + proc.stderr


def test_preset_without_imagenet_weights_is_refused_before_any_job(tmp_path):
    workdir = copy_workflow(tmp_path)
    proc = run_snakemake(
        workdir,
        "-n",
        "all",
        "--configfile",
        "config/deepspace.yaml",
        check=False,
        env={"TORCH_HOME": str(tmp_path / "empty_torch_home")},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "ImageNet weights for 'vgg16' are not in the torch cache" in out and "Fix:" in out


def test_the_same_rules_for_every_config(tmp_path):
    """Rules are not generated per experiment: a profile can set resources for any of them."""
    workdir = copy_workflow(tmp_path)
    env = placeholder_imagenet_cache(tmp_path)
    listed = {}
    for config in ("config.yaml", "config/stnet.yaml", "config/deepspace.yaml"):
        proc = run_snakemake(workdir, "--list-rules", "--configfile", config, env=env)
        listed[config] = [
            ln.strip() for ln in proc.stdout.splitlines() if ln.strip().isidentifier()
        ]
    assert listed["config.yaml"] == listed["config/stnet.yaml"] == listed["config/deepspace.yaml"]
    assert {"train_fold", "predict_fold", "collect_predictions", "baseline", "latent_space"} <= set(
        listed["config.yaml"]
    )
    assert not [
        r
        for r in listed["config.yaml"]
        if r.startswith(("collect_predictions_", "baseline_", "latent_space_"))
    ]


def test_profiles_hold_site_specifics_only(repo):
    """The rules declare their needs; a profile says where and how many, never a second value."""
    import yaml

    portable = {"mem_mb", "mem", "runtime", "gpu", "disk_mb", "threads"}
    for profile in ("default", "slurm"):
        cfg = yaml.safe_load((repo / "profiles" / profile / "config.yaml").read_text())
        for rule, res in (cfg.get("set-resources") or {}).items():
            assert not portable & set(res), (
                f"profiles/{profile}: {rule} re-declares {portable & set(res)}"
            )
        assert "num_workers" not in (repo / "profiles" / profile / "config.yaml").read_text()
    for preset in ("config.yaml", "config/stnet.yaml", "config/deepspace.yaml"):
        assert "num_workers" not in (repo / preset).read_text(), preset
