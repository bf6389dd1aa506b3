"""A training process killed for real (SIGKILL) mid-run and rerun ends with the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import torch

WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from stpredict.learn.experiments import resolve_experiment
    from stpredict.learn.train import PatchDataset, TrainConfig, train

    root, out, slow = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "slow"
    rng = np.random.default_rng(0)
    level = rng.uniform(40, 215, size=(48, 1, 1, 1))
    if not (root / "a.npy").exists():
        np.save(root / "a.npy", np.clip(level + rng.normal(0, 10, (48, 16, 16, 3)), 0, 255).astype(np.uint8))
    y = (level[:, 0, 0] / 100.0).astype(np.float32)
    tr = PatchDataset([root / "a.npy"], [np.arange(40)], targets=y[:40])
    va = PatchDataset([root / "a.npy"], [np.arange(40, 48)], targets=y[40:])
    exp = resolve_experiment({"model": {"backbone": "tiny", "tiny_width": 4},
                              "train": {"batch_size": 8, "epochs": 6, "lr": 0.01,
                                        "augmentation": "dihedral", "optimiser": "adam"}}, {})
    cfg = TrainConfig.from_experiment(exp, seed=5)
    # the pause after each epoch only gives the test time to kill; it touches no random state
    train(cfg, tr, va, out, callback=(lambda e, row: time.sleep(1.5)) if slow else None)
    """
)


def run(script: Path, root: Path, out: Path, mode: str) -> subprocess.Popen:
    with open(root / f"{out.name}_{mode}.err", "a") as err:
        return subprocess.Popen(
            [sys.executable, str(script), str(root), str(out), mode],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def test_sigkilled_training_resumes_to_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run(script, tmp_path, full, "fast").wait(timeout=300) == 0

    proc = run(script, tmp_path, cut, "slow")
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until two epochs are checkpointed, then kill -9
        hist = cut / "history.tsv"
        if hist.exists() and len(pd.read_csv(hist, sep="\t")) >= 2:
            break
        assert proc.poll() is None, (tmp_path / "cut_slow.err").read_text()
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (cut / "model.pt").exists()
    assert (cut / "checkpoint.pt").exists()  # the one rolling checkpoint
    before = pd.read_csv(cut / "history.tsv", sep="\t")
    done = len(before)
    assert 2 <= done < 6

    assert run(script, tmp_path, cut, "fast").wait(timeout=300) == 0  # the rerun resumes
    a = torch.load(full / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(cut / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    h_full = pd.read_csv(full / "history.tsv", sep="\t")
    h_cut = pd.read_csv(cut / "history.tsv", sep="\t")
    assert h_full["epoch"].tolist() == h_cut["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    pd.testing.assert_series_equal(h_full["val_loss"], h_cut["val_loss"])
    # it resumed rather than restarted: the epochs run before the kill were not run again
    pd.testing.assert_series_equal(before["seconds"], h_cut["seconds"].iloc[:done])
    # model.pt holds the result: no checkpoint or best weights are left behind
    for d in (full, cut):
        assert not (d / "checkpoint.pt").exists() and not (d / "best.pt").exists()
