"""A live Slurm: a reduced demo run submitted through profiles/slurm by the official executor plugin.

tests/slurm/setup.sh installs (Debian packages) and starts a one-node Slurm with accounting
(slurmctld, slurmd, slurmdbd + MariaDB, munge) on loopback; the run goes through
``--workflow-profile profiles/slurm`` unchanged, with only ``--max-threads`` (this node has 2 CPUs)
and short status-poll intervals on the command line. Every job's request is then read back from
Slurm's accounting (``sacct``) and compared with what its rule declares. Skips only where Slurm
cannot be started here (not root, no apt).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, copy_workflow

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SETUP = REPO / "tests/slurm/setup.sh"
TEARDOWN = REPO / "tests/slurm/teardown.sh"
EXPERIMENT = "slurm_cv"

#: what each rule of the reduced run declares (rule + profiles/slurm, threads capped at 2):
#: partition, CPUs, memory (MB), runtime (min), GPUs
EXPECTED = {
    "read_section": ("cpu", 1, 4000, 20, 0),
    "extract_patches": ("cpu", 2, 16000, 30, 0),
    "filter_spots": ("cpu", 1, 4000, 10, 0),
    "make_splits": ("cpu", 1, 4000, 10, 0),
    "train_fold": ("gpu", 2, 4000, 720, 1),  # tiny CNN: 4 GB (a torchvision backbone: 32 GB)
    "predict_fold": ("gpu", 2, 4000, 120, 1),
    "score_predictions": ("cpu", 1, 8000, 60, 0),  # the profile's default-resources
}
#: rules that must never become cluster jobs (localrules)
LOCAL = {"all", "write_run_config", "summarise_qc", "collect_predictions", "summarise_experiments"}


def _can_start_slurm() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux to install and start Slurm"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "needs apt-get (Debian) or an installed Slurm"
    return None


@pytest.fixture(scope="module")
def slurm():
    reason = _can_start_slurm()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        subprocess.run(["bash", str(TEARDOWN)], capture_output=True, timeout=120)
        pytest.fail(f"tests/slurm/setup.sh failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    try:
        yield proc.stderr
    finally:
        subprocess.run(["bash", str(TEARDOWN)], capture_output=True, timeout=120)


def _reduced_config(workdir: Path) -> Path:
    """The demo config cut to one small Visium section and one 2-fold experiment of 2 epochs.

    The section comes from the demo generator's small cohort, written here (not a Slurm job):
    the test is about what Slurm is asked for, and every job costs a workflow parse on the node.
    """
    from stpredict.demo import demo_sheet, make_demo

    cohort = workdir / "cohort"
    make_demo(cohort, seed=7, threads=1, small=True)
    sheet = demo_sheet(str(cohort), small=True)
    sheet[sheet["sample_id"] == "P1_D1"].to_csv(
        workdir / "samples_slurm.tsv", sep="\t", index=False
    )
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["samples"] = "samples_slurm.tsv"
    cfg["reading"]["gene_map"] = str(cohort / "gene_ids.tsv")
    cfg["evaluation"]["gene_groups"] = ""
    cfg["evaluation"]["baselines"] = ["mean"]
    cfg["ihc"]["known_affine"] = {}
    exp = cfg["experiments"]["demo_deepspace"]
    exp["split"] = {"scheme": "random_within_section", "n_folds": 2, "val_frac": 0.2}
    exp["train"] = {**exp["train"], "epochs": 2, "patience": None}
    exp["tta"] = 1
    exp.pop("superres", None)
    exp["evaluation"] = {
        "baselines": ["mean"],
        "ols": False,
        "latent": False,
        "attributions": {"enabled": False},
    }
    cfg["experiments"] = {EXPERIMENT: exp}
    cfg["wsi"]["slides"] = ""  # the demo's slides need demo_stnet
    cfg["cohorts"] = {}  # the demo's external cohort is predicted by demo_stnet
    path = workdir / "config_slurm.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _accounting(run_started: str) -> pd.DataFrame:
    out = subprocess.run(
        [
            "sacct",
            "-X",
            "--parsable2",
            "--noheader",
            "--allusers",
            "--starttime",
            run_started,
            "--format=JobIDRaw,Comment%200,Partition,ReqTRES%200,TimelimitRaw,State",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    for line in out.strip().splitlines():
        jobid, comment, partition, tres, limit, state = line.split("|")
        m = re.match(r"rule_(.+?)(?:_wildcards_.*)?$", comment)
        req = dict(kv.split("=", 1) for kv in tres.split(",") if "=" in kv)
        mem = req.get("mem", "0M")
        mem_mb = int(float(mem[:-1]) * (1024 if mem.endswith("G") else 1))
        rows.append(
            {
                "job": jobid,
                "rule": m.group(1) if m else comment,
                "partition": partition,
                "cpus": int(req.get("cpu", 0)),
                "mem_mb": mem_mb,
                "runtime": int(limit),
                "gpus": int(req.get("gres/gpu", 0)),
                "state": state,
            }
        )
    return pd.DataFrame(rows)


def test_reduced_demo_runs_through_the_slurm_profile(slurm, tmp_path):
    (tmp_path / "run").mkdir()
    workdir = copy_workflow(tmp_path / "run")
    config = _reduced_config(workdir)
    started = subprocess.run(
        ["date", "+%Y-%m-%dT%H:%M:%S"], capture_output=True, text=True, check=True
    ).stdout.strip()
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--workflow-profile",
        "profiles/slurm",
        "--configfile",
        str(config),
        "--max-threads",
        "2",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--seconds-between-status-checks",
        "1",
        "--slurm-keep-successful-logs",
        f"results/experiments/{EXPERIMENT}/metrics/summary.tsv",
        "results/summary.tsv",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out, _ = proc.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # SIGINT: Snakemake cancels its Slurm jobs (SIGTERM waits)
        out, _ = proc.communicate(timeout=300)
        pytest.fail("the Slurm run did not finish in 20 minutes:\n" + out[-6000:])
    assert proc.returncode == 0, out[-8000:]
    (tmp_path / "snakemake.log").write_text(out)

    summary = pd.read_csv(
        workdir / f"results/experiments/{EXPERIMENT}/metrics/summary.tsv", sep="\t"
    )
    assert len(summary) > 0
    jobs = _accounting(started)
    assert len(jobs) and (jobs["state"] == "COMPLETED").all(), jobs.to_string()
    assert not LOCAL & set(jobs["rule"]), f"local rules were submitted: {LOCAL & set(jobs['rule'])}"
    assert (jobs["rule"] == "train_fold").sum() == 2 and (jobs["rule"] == "predict_fold").sum() == 2
    for rule, (partition, cpus, mem_mb, runtime, gpus) in EXPECTED.items():
        got = jobs[jobs["rule"] == rule]
        assert len(got), f"{rule} was not submitted to Slurm:\n{jobs.to_string()}"
        for row in got.itertuples():
            assert (row.partition, row.cpus, row.mem_mb, row.runtime, row.gpus) == (
                partition,
                cpus,
                mem_mb,
                runtime,
                gpus,
            ), f"{rule}: sacct shows {row}"
    # what the test saw, for the README / the note
    print(jobs.drop_duplicates("rule").to_string(index=False))
