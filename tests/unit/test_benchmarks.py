"""benchmarks/bench_training.py end to end (quick, tiny backbone) and the protocol estimates."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_training  # noqa: E402
import protocols  # noqa: E402
from protocols import Rates, deepspace_protocol, estimate, stnet_protocol  # noqa: E402


def test_quick_run_writes_one_well_formed_row_per_configuration(tmp_path):
    out, prot = tmp_path / "training.tsv", tmp_path / "protocols.tsv"
    argv = ["--quick", "--backbones", "tiny", "--size", "32", "--precisions", "fp32"]
    argv += ["--tta", "8", "1", "--out", str(out), "--protocols-out", str(prot)]
    bench_training.main(argv)
    df = pd.read_csv(out, sep="\t")
    assert list(df.columns) == bench_training.COLUMNS
    # a loader row per batch size used: training's 32 (the preset's) and prediction's 128
    assert sorted(df["mode"]) == ["infer", "infer", "loader", "loader", "train"]
    assert df["img_per_s"].gt(0).all() and np.isfinite(df["img_per_s"]).all()
    assert df["timed_images"].gt(0).all() and df["timed_s"].gt(0).all()
    assert set(df["loader_bottleneck"]) <= {True, False}
    assert (df["size_px"] == 32).all() and (df["device"].str.startswith("cpu")).all()
    assert not df["channels_last"].any()  # ignored on the CPU, as in training
    train = df[df["mode"] == "train"].iloc[0]
    loader = df[(df["mode"] == "loader") & (df["batch"] == 32)].iloc[0]
    # the stnet preset's settings: batch 32, dihedral augmentation; CPU loader: no workers
    assert (train["backbone"], train["batch"], train["augmentation"]) == ("tiny", 32, "dihedral")
    assert train["precision"] == "fp32" and train["workers"] == 0 and train["checkpoint_s"] > 0
    assert train["timed_images"] == 2 * 32  # --quick: two timed steps
    assert loader["batch"] == 32 and train["loader_img_per_s"] == pytest.approx(loader["img_per_s"])
    assert train["loader_bottleneck"] == (loader["img_per_s"] < 1.25 * train["img_per_s"])
    infer = df[df["mode"] == "infer"].set_index("tta")
    assert sorted(infer.index) == [1, 8] and (infer["batch"] == 128).all()
    infer_loader = df[(df["mode"] == "loader") & (df["batch"] == 128)]["img_per_s"].iloc[0]
    assert (infer["loader_img_per_s"] == infer_loader).all()
    assert not prot.exists()  # no protocol for the tiny backbone

    # the same configurations measured again replace their rows; other rows stay
    rows = df.to_dict("records")
    other = {**rows[0], "machine": "elsewhere", "img_per_s": 1.0}
    again = bench_training.save_rows([*rows[1:], other], out)
    assert len(again) == len(df) + 1 and len(pd.read_csv(out, sep="\t")) == len(df) + 1


def test_stnet_estimate_gives_the_documented_numbers():
    p = stnet_protocol()
    e = estimate(p, Rates(train=1000.0, infer={8: 500.0}))
    assert (e["trainings"], e["epochs"]) == (115, 5750)
    assert e["train_images"] == pytest.approx(134_692_800)  # 200 x 22 x 30,612
    assert e["val_patches"] == pytest.approx(33_673_200)  # 50 x 22 x 30,612 at TTA 8
    assert e["predict_patches"] == pytest.approx(30_612)
    assert e["train_h"] == pytest.approx(134_692.8 / 3600)
    assert e["val_h"] == pytest.approx(67_346.4 / 3600)
    assert e["predict_h"] == pytest.approx(61.224 / 3600)
    assert e["checkpoint_h"] == 0
    assert e["total_h"] == pytest.approx((134_692.8 + 67_346.4 + 61.224) / 3600)


def test_deepspace_estimate_gives_the_documented_numbers():
    e = estimate(deepspace_protocol(), Rates(train=500.0, infer={1: 2000.0}, checkpoint_s=1.0))
    assert (e["trainings"], e["epochs"]) == (46, 2300)
    assert e["train_images"] == pytest.approx(7_928_000)
    assert e["val_patches"] == pytest.approx(1_232_000)
    assert e["predict_patches"] == pytest.approx(240_400)
    assert e["train_h"] == pytest.approx(7_928_000 / 500 / 3600)
    assert e["val_h"] == pytest.approx(1_232_000 / 2000 / 3600)
    assert e["predict_h"] == pytest.approx(240_400 / 2000 / 3600)
    assert e["checkpoint_h"] == pytest.approx(2300 / 3600)
    # fewer epochs, one chain: fewer hours, by the documented counts
    small = estimate(deepspace_protocol(epochs=10, chains=1), Rates(train=500.0, infer={1: 2e3}))
    assert small["train_images"] == pytest.approx(10 * (30 * 1408 + 3520 + 5 * 7520))


def test_unmeasured_tta_is_scaled_from_the_nearest_measured_one():
    assert Rates(train=1.0, infer={1: 800.0}).infer_rate(8) == pytest.approx(100.0)
    assert Rates(train=1.0, infer={1: 800.0, 8: 90.0}).infer_rate(6) == pytest.approx(120.0)
    assert math.isnan(Rates(train=1.0).infer_rate(1))


def _row(**kw):
    base = {"machine": "m", "device": "cuda: X", "backbone": "densenet121", "mode": "train",
            "precision": "bf16", "channels_last": True, "compile": False, "batch": 32, "tta": 1,
            "img_per_s": 1.0, "checkpoint_s": 0.5}  # fmt: skip
    return {**base, **kw}


def test_rates_come_from_the_fastest_setting_at_the_protocol_batch():
    rows = pd.DataFrame(
        [
            _row(precision="bf16", img_per_s=3000.0, checkpoint_s=0.2),
            _row(precision="fp32", img_per_s=1000.0),
            _row(precision="bf16", batch=256, img_per_s=5000.0),  # not the protocol's batch
            _row(mode="infer", precision="bf16", tta=8, batch=128, img_per_s=900.0),
            _row(mode="infer", precision="fp32", tta=8, batch=128, img_per_s=2000.0),
            _row(mode="infer", precision="fp32", tta=1, batch=128, img_per_s=8000.0),
        ]
    )
    rates, best = protocols.rates_from_table(rows, stnet_protocol())
    assert (best["precision"], best["batch"]) == ("bf16", 32)
    assert rates.train == 3000.0 and rates.checkpoint_s == 0.2
    assert rates.infer == {8: 900.0, 1: 8000.0}  # same setting where measured, else the fastest
    table = protocols.estimate_table(rows)
    assert list(table["protocol"]) == ["ST-Net"]  # no vgg16 row: no DeepSpaCE estimate
    want = estimate(stnet_protocol(), rates)["total_h"]
    assert table["total_h"].iloc[0] == pytest.approx(want, abs=0.01)
