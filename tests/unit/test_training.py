from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

import stpredict.training as training
from stpredict.errors import ConfigError, InputError
from stpredict.training import (
    HISTORY_COLUMNS,
    PatchDataset,
    TrainConfig,
    TrainingInterrupted,
    pearson_per_output,
    train,
)

S = 16


def make_store(path, n, seed=0):
    """A patch store whose targets are learnable: per-patch brightness and redness."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(40, 215, size=(n, 1, 1, 1))
    red = rng.uniform(-30, 30, size=(n, 1, 1, 1))
    img = level + rng.normal(0, 10, size=(n, S, S, 3))
    img[..., 0:1] += red
    arr = np.clip(img, 0, 255).astype(np.uint8)
    np.save(path, arr)
    targets = np.concatenate([level[:, 0, 0] / 100.0, red[:, 0, 0] / 30.0], axis=1)
    return arr, targets.astype(np.float32)


@pytest.fixture()
def data(tmp_path):
    a, ta = make_store(tmp_path / "a.npy", 40, seed=0)
    b, tb = make_store(tmp_path / "b.npy", 24, seed=1)
    train_ds = PatchDataset([tmp_path / "a.npy", tmp_path / "b.npy"],
                            [np.arange(40), np.arange(16)], targets=np.concatenate([ta, tb[:16]]))
    val_ds = PatchDataset([tmp_path / "b.npy"], [np.arange(16, 24)], targets=tb[16:])
    return train_ds, val_ds


def cfg(**kw):
    base = dict(backbone="tiny", tiny_width=4, batch_size=8, epochs=4, lr=0.01,
                optimiser="sgd", augmentation="dihedral", seed=3)
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------- dataset


def test_patch_dataset_reads_uint8_chw_lazily(tmp_path):
    a, ta = make_store(tmp_path / "a.npy", 10)
    b, tb = make_store(tmp_path / "b.npy", 6, seed=1)
    ds = PatchDataset([tmp_path / "a.npy", tmp_path / "b.npy"], [np.array([7, 2]), np.array([5])],
                      targets=np.concatenate([ta[[7, 2]], tb[[5]]]))
    assert len(ds) == 3 and ds.patch_size == S and ds.n_targets == 2
    assert ds._arrays is None  # nothing opened before the first read
    img, y = ds[2]
    assert img.dtype == torch.uint8 and img.shape == (3, S, S)
    assert torch.equal(img, torch.from_numpy(b[5]).permute(2, 0, 1))
    torch.testing.assert_close(y, torch.from_numpy(tb[5]))
    assert torch.equal(ds[0][0].permute(1, 2, 0), torch.from_numpy(a[7]))
    assert isinstance(ds._arrays[0], np.memmap)
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned worker gets: no open maps
    assert clone._arrays is None and torch.equal(clone[1][0], ds[1][0])
    no_targets = PatchDataset([tmp_path / "a.npy"], [np.arange(3)])
    assert no_targets[0][1].numel() == 0


def test_patch_dataset_rejects_bad_input(tmp_path):
    make_store(tmp_path / "a.npy", 5)
    np.save(tmp_path / "f.npy", np.zeros((2, S, S, 3), np.float32))
    with pytest.raises(InputError, match="not a patch store"):
        PatchDataset([tmp_path / "f.npy"], [np.arange(2)])
    with pytest.raises(InputError, match="outside"):
        PatchDataset([tmp_path / "a.npy"], [np.array([5])])
    with pytest.raises(InputError, match="not found"):
        PatchDataset([tmp_path / "x.npy"], [np.arange(1)])
    with pytest.raises(InputError, match="negative"):
        PatchDataset([tmp_path / "a.npy"], [np.arange(3)], labels=np.array([0, -1, 1]))
    with pytest.raises(InputError, match="targets have shape"):
        PatchDataset([tmp_path / "a.npy"], [np.arange(3)], targets=np.zeros((2, 2)))


def test_config_validation():
    with pytest.raises(ConfigError, match="loss 'l1'"):
        TrainConfig(loss="l1")
    with pytest.raises(ConfigError, match="unknown training setting"):
        TrainConfig.from_dict({"backbone": "tiny", "epoch": 3})
    assert TrainConfig.from_dict(cfg().to_dict()) == cfg()


def test_pearson_per_output():
    x = np.arange(10.0)
    r = pearson_per_output(np.stack([x, -x, np.ones(10)], 1), np.stack([x, x, x], 1))
    np.testing.assert_allclose(r[:2], [1.0, -1.0])
    assert math.isnan(r[2])


# ------------------------------------------------------------------------------- training


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("num_workers", [0, 2])
def test_interrupted_run_resumes_to_identical_weights(data, tmp_path, num_workers):
    train_ds, val_ds = data
    c = cfg(num_workers=num_workers)
    full = train(c, train_ds, val_ds, tmp_path / "full")
    with pytest.raises(TrainingInterrupted):
        train(c, train_ds, val_ds, tmp_path / "cut", stop_after_epoch=2)
    assert pd.read_csv(tmp_path / "cut" / "history.tsv", sep="\t")["epoch"].tolist() == [1, 2]
    assert not (tmp_path / "cut" / "model.pt").exists()
    resumed = train(c, train_ds, val_ds, tmp_path / "cut")  # the rerun resumes automatically
    assert resumed["epochs_run"] == full["epochs_run"] == 4
    assert resumed["epoch"] == full["epoch"]
    _assert_same_weights(_weights(tmp_path / "full" / "model.pt"),
                         _weights(tmp_path / "cut" / "model.pt"))
    ck_full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    ck_cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    _assert_same_weights(ck_full["model"], ck_cut["model"])  # last epoch too, not just the best
    h_full = pd.read_csv(tmp_path / "full" / "history.tsv", sep="\t")
    h_cut = pd.read_csv(tmp_path / "cut" / "history.tsv", sep="\t")
    pd.testing.assert_series_equal(h_full["train_loss"], h_cut["train_loss"])
    pd.testing.assert_series_equal(h_full["val_loss"], h_cut["val_loss"])


def test_extending_epochs_equals_longer_run_and_resume_false_restarts(data, tmp_path):
    train_ds, _ = data
    c4 = cfg(epochs=4, augmentation="deepspace", optimiser="adam", lr=1e-3)
    c2 = cfg(epochs=2, augmentation="deepspace", optimiser="adam", lr=1e-3)
    r4 = train(c4, train_ds, None, tmp_path / "four")
    r2 = train(c2, train_ds, None, tmp_path / "ext")
    assert r2["epoch"] == 2 and r4["epoch"] == 4  # no validation: the last epoch is kept
    w_two = _weights(tmp_path / "ext" / "model.pt")
    r = train(c4, train_ds, None, tmp_path / "ext")
    assert r["epoch"] == 4
    _assert_same_weights(_weights(tmp_path / "four" / "model.pt"),
                         _weights(tmp_path / "ext" / "model.pt"))
    # the 2-epoch weights differ (the comparison above can fail)
    assert not torch.equal(w_two["head.weight"], _weights(tmp_path / "four" / "model.pt")["head.weight"])
    # resume=False starts afresh even with a finished checkpoint present
    r = train(c2, train_ds, None, tmp_path / "ext", resume=False)
    assert r["epochs_run"] == 2
    _assert_same_weights(w_two, _weights(tmp_path / "ext" / "model.pt"))
    # changing a setting that matters refuses to resume
    with pytest.raises(ConfigError, match="lr"):
        train(cfg(epochs=4, augmentation="deepspace", optimiser="adam", lr=1e-2),
              train_ds, None, tmp_path / "ext")


def test_outputs_and_learning(data, tmp_path):
    train_ds, val_ds = data
    c = cfg(epochs=6, optimiser="adam", lr=0.01, augmentation="none", patience=None)
    res = train(c, train_ds, val_ds, tmp_path, genes=["level", "red"], target_transform="log1p")
    hist = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    assert list(hist.columns) == HISTORY_COLUMNS
    assert hist["epoch"].tolist() == list(range(1, 7))
    assert (hist["images_per_s"] > 0).all()
    assert (tmp_path / "loss.png").stat().st_size > 1000
    meta = torch.load(tmp_path / "model.pt", weights_only=True)
    assert meta["backbone"] == "tiny" and meta["n_outputs"] == 2
    assert meta["genes"] == ["level", "red"] and meta["target_transform"] == "log1p"
    assert meta["epoch"] == res["epoch"] == int(hist.loc[hist["val_loss"].idxmin(), "epoch"])
    assert meta["selection"] == "best_val_loss"
    # the tiny CNN learns patch brightness (and redness) from 56 patches
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    assert hist["val_pearson_mean"].max() > 0.5


def test_early_stopping_uses_the_best_val_loss(data, tmp_path, monkeypatch):
    train_ds, val_ds = data
    # epoch 4 improves on epoch 3 but not on the best (epoch 2): a "previous epoch" rule would
    # reset the counter there and run on
    scripted = iter([1.0, 0.5, 0.6, 0.55, 0.7, 0.4, 0.3, 0.2])
    monkeypatch.setattr(training, "_evaluate", lambda *a, **k: (next(scripted), 0.0, math.nan))
    res = train(cfg(epochs=8, patience=2), train_ds, val_ds, tmp_path)
    assert res["epochs_run"] == 4 and res["stopped_early"]
    assert res["epoch"] == 2 and res["best_val_loss"] == 0.5
    # the rerun of a stopped run does not train more
    again = train(cfg(epochs=8, patience=2), train_ds, val_ds, tmp_path)
    assert again["epochs_run"] == 4


def test_head_init_zero_starts_at_training_mean(data, tmp_path):
    train_ds, _ = data
    torch.manual_seed(0)
    c = cfg(epochs=1, head_init="zero", lr=1e-12, momentum=0.0)
    train(c, train_ds, None, tmp_path)
    bias = _weights(tmp_path / "model.pt")["head.bias"]
    np.testing.assert_allclose(bias.numpy(), train_ds.targets.mean(0), rtol=1e-5)
