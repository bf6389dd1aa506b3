from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

import stpredict.learn.train as training
from stpredict.errors import ConfigError, InputError, TrainingInterrupted
from stpredict.learn.augment import tta_predict
from stpredict.learn.models import build_model
from stpredict.learn.predict import load_model, predict
from stpredict.learn.train import (
    HISTORY_COLUMNS,
    PatchDataset,
    TrainConfig,
    file_digest,
    per_spot_loss,
    resolve_precision,
    seed_everything,
    train,
)
from tests.conftest import train_config

S = 16


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster than two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    train_ds = PatchDataset(
        [tmp_path / "a.npy", tmp_path / "b.npy"],
        [np.arange(40), np.arange(16)],
        targets=np.concatenate([ta, tb[:16]]),
    )
    val_ds = PatchDataset([tmp_path / "b.npy"], [np.arange(16, 24)], targets=tb[16:])
    return train_ds, val_ds


def cfg(**kw):
    base = dict(
        backbone="tiny",
        tiny_width=4,
        batch_size=8,
        epochs=4,
        lr=0.01,
        optimiser="sgd",
        augmentation="dihedral",
        seed=3,
    )
    return train_config(**{**base, **kw})


# ------------------------------------------------------------------------------- dataset


def test_patch_dataset_reads_uint8_chw_lazily(tmp_path):
    a, ta = make_store(tmp_path / "a.npy", 10)
    b, tb = make_store(tmp_path / "b.npy", 6, seed=1)
    ds = PatchDataset(
        [tmp_path / "a.npy", tmp_path / "b.npy"],
        [np.array([7, 2]), np.array([5])],
        targets=np.concatenate([ta[[7, 2]], tb[[5]]]),
    )
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
        train_config(loss="l1")
    with pytest.raises(ConfigError, match="unknown training setting"):
        TrainConfig.from_dict({"backbone": "tiny", "epoch": 3})
    assert TrainConfig.from_dict(cfg().to_dict()) == cfg()
    with pytest.raises(ConfigError, match="precision 'bf8'"):
        train_config(precision="bf8")
    with pytest.raises(ConfigError, match="loss_reduction 'sum'"):
        train_config(loss_reduction="sum")
    with pytest.raises(ConfigError, match="val_tta 9"):
        train_config(val_tta=9)
    c = train_config()
    assert (c.precision, c.loss_reduction, c.val_tta) == ("auto", "mean", 1)
    # configs saved before `precision` existed (old model.pt / checkpoints) still load
    old = {k: v for k, v in cfg().to_dict().items() if k != "precision"}
    assert TrainConfig.from_dict({**old, "amp": True}).precision == "auto"
    assert TrainConfig.from_dict({**old, "amp": False}).precision == "fp32"


def test_resolve_precision():
    assert resolve_precision("auto", "cpu") == "fp32"
    for p in ("bf16", "fp16", "fp32"):
        assert resolve_precision(p, "cpu") == p
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision("half", "cpu")


def test_file_digest_streams_in_chunks(tmp_path):
    import hashlib

    p = tmp_path / "blob.bin"
    data = np.random.default_rng(0).integers(0, 256, 10_001, dtype=np.uint8).tobytes()
    p.write_bytes(data)
    whole = hashlib.blake2b(data, digest_size=16).hexdigest()
    assert file_digest(p, chunk_bytes=1024) == file_digest(p) == whole
    p.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert file_digest(p, chunk_bytes=1024) != whole


# ------------------------------------------------------------------------------- training


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _differ(a, b):
    return any(not torch.equal(a[k], b[k]) for k in a)


def _hist(path):
    return pd.read_csv(path / "history.tsv", sep="\t")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_interrupted_run_resumes_to_identical_weights(data, tmp_path, num_workers):
    train_ds, val_ds = data
    c = cfg(num_workers=num_workers)
    full = train(c, train_ds, val_ds, tmp_path / "full")
    assert full["resumed_from"] == 0
    with pytest.raises(TrainingInterrupted):
        train(c, train_ds, val_ds, tmp_path / "cut", stop_after_epoch=2)
    assert _hist(tmp_path / "cut")["epoch"].tolist() == [1, 2]
    assert not (tmp_path / "cut" / "model.pt").exists()
    assert (tmp_path / "cut" / "checkpoint.pt").exists() and (tmp_path / "cut" / "best.pt").exists()
    before = _hist(tmp_path / "cut")
    resumed = train(c, train_ds, val_ds, tmp_path / "cut")  # the rerun resumes automatically
    assert resumed["resumed_from"] == 2
    assert resumed["epochs_run"] == full["epochs_run"] == 4
    assert resumed["epoch"] == full["epoch"]
    _assert_same_weights(
        _weights(tmp_path / "full" / "model.pt"), _weights(tmp_path / "cut" / "model.pt")
    )
    h_full, h_cut = _hist(tmp_path / "full"), _hist(tmp_path / "cut")
    for col in ("train_loss", "val_loss", "val_sse"):
        pd.testing.assert_series_equal(h_full[col], h_cut[col])
    pd.testing.assert_series_equal(before["seconds"], h_cut["seconds"].iloc[:2])  # not rerun
    # one rolling checkpoint and best.pt only while training: model.pt holds the result
    for d in ("full", "cut"):
        assert sorted(p.name for p in (tmp_path / d).iterdir()) == [
            "history.tsv",
            "model.pt",
        ]  # no figure: plot_loss_curves draws it


def test_epoch_count_changes_and_resume_false(data, tmp_path, caplog):
    train_ds, _ = data
    c = lambda e, **kw: cfg(epochs=e, augmentation="deepspace", optimiser="adam", lr=1e-3, **kw)  # noqa: E731
    six, two = tmp_path / "six", tmp_path / "two"
    r6 = train(c(6), train_ds, None, six)
    r2 = train(c(2), train_ds, None, two)
    assert r6["epoch"] == 6 and r2["epoch"] == 2  # no validation: the last epoch is kept
    w_six, w_two = _weights(six / "model.pt"), _weights(two / "model.pt")
    assert _differ(w_six, w_two)  # the comparisons below can fail

    # a larger epoch count resumes an interrupted run and equals the longer run
    ext = tmp_path / "ext"
    with pytest.raises(TrainingInterrupted):
        train(c(4), train_ds, None, ext, stop_after_epoch=2)
    r = train(c(6), train_ds, None, ext)
    assert r["resumed_from"] == 2 and r["epoch"] == 6
    _assert_same_weights(w_six, _weights(ext / "model.pt"))  # the last epoch's weights

    # a checkpoint past a shrunken epoch count starts afresh
    cut = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted):
        train(c(6), train_ds, None, cut, stop_after_epoch=3)
    with caplog.at_level("WARNING", logger="stpredict.learn.train"):
        r = train(c(2), train_ds, None, cut)
    assert "past the 2 epochs" in caplog.text and "starting afresh" in caplog.text
    assert r["resumed_from"] == 0 and _hist(cut)["epoch"].tolist() == [1, 2]
    _assert_same_weights(w_two, _weights(cut / "model.pt"))

    # resume=False starts afresh even with a checkpoint present
    with pytest.raises(TrainingInterrupted):
        train(c(6), train_ds, None, cut, stop_after_epoch=3)
    r = train(c(2), train_ds, None, cut, resume=False)
    assert r["resumed_from"] == 0 and r["epochs_run"] == 2
    _assert_same_weights(w_two, _weights(cut / "model.pt"))

    # a setting that matters changed: a fresh start that names it (never an error)
    caplog.clear()
    with pytest.raises(TrainingInterrupted):
        train(c(2), train_ds, None, cut, stop_after_epoch=1)
    with caplog.at_level("WARNING", logger="stpredict.learn.train"):
        r = train(c(2, weight_decay=0.5), train_ds, None, cut)
    assert "config.weight_decay 0.0 -> 0.5" in caplog.text
    assert r["resumed_from"] == 0
    fresh = train(c(2, weight_decay=0.5), train_ds, None, tmp_path / "wd")
    _assert_same_weights(_weights(tmp_path / "wd" / "model.pt"), _weights(cut / "model.pt"))
    assert fresh["resumed_from"] == 0
    # num_workers is harmless: it resumes
    with pytest.raises(TrainingInterrupted):
        train(c(2), train_ds, None, cut, stop_after_epoch=1)
    assert train(c(2, num_workers=1), train_ds, None, cut)["resumed_from"] == 1
    _assert_same_weights(w_two, _weights(cut / "model.pt"))


@pytest.mark.parametrize("complete", [False, True])
def test_changed_targets_retrain(data, tmp_path, caplog, complete):
    train_ds, val_ds = data
    c = cfg(epochs=3)
    out = tmp_path / "run"
    if complete:
        train(c, train_ds, val_ds, out)
    else:
        with pytest.raises(TrainingInterrupted):
            train(c, train_ds, val_ds, out, stop_after_epoch=2)
    old = _weights(tmp_path / "run" / "model.pt") if complete else None
    # e.g. another targets.transform: same stores and rows, other targets
    new_train = PatchDataset(
        train_ds.stores, [np.arange(40), np.arange(16)], targets=np.log1p(np.abs(train_ds.targets))
    )
    new_val = PatchDataset(
        val_ds.stores, [np.arange(16, 24)], targets=np.log1p(np.abs(val_ds.targets))
    )
    with caplog.at_level("WARNING", logger="stpredict.learn.train"):
        r = train(c, new_train, new_val, out, target_transform="other")
    assert r["resumed_from"] == 0
    assert _hist(out)["epoch"].tolist() == [1, 2, 3]
    ref = train(c, new_train, new_val, tmp_path / "ref", target_transform="other")
    assert ref["epoch"] == r["epoch"]
    _assert_same_weights(_weights(tmp_path / "ref" / "model.pt"), _weights(out / "model.pt"))
    first = train(c, train_ds, val_ds, tmp_path / "old")
    assert _differ(_weights(tmp_path / "old" / "model.pt"), _weights(out / "model.pt"))
    if complete:
        _assert_same_weights(old, _weights(tmp_path / "old" / "model.pt"))
        assert first["resumed_from"] == 0
    else:
        assert "train.targets changed" in caplog.text and "target_transform" in caplog.text


def test_changed_data_signature_store_content_or_geometry_retrain(data, tmp_path, caplog):
    train_ds, val_ds = data
    c = cfg(epochs=2)
    out = tmp_path / "run"
    sig = {"val_spots": ["A:1", "A:2"], "transform": {"name": "log1p", "scale": 1e4}}

    def interrupted(**kw):
        with pytest.raises(TrainingInterrupted):
            train(c, train_ds, val_ds, out, stop_after_epoch=1, **kw)

    interrupted(data_signature=sig)
    with caplog.at_level("WARNING", logger="stpredict.learn.train"):
        r = train(c, train_ds, val_ds, out, data_signature={**sig, "val_spots": ["A:1", "A:3"]})
    assert r["resumed_from"] == 0 and "extra.val_spots changed" in caplog.text
    # the same signature resumes
    interrupted(data_signature=sig)
    assert train(c, train_ds, val_ds, out, data_signature=sig)["resumed_from"] == 1

    # patch-store content: one pixel of a.npy changes (same shape, same rows)
    store = tmp_path / "a.npy"
    interrupted()
    arr = np.load(store)
    arr[0, 0, 0, 0] ^= 1
    np.save(store, arr)
    caplog.clear()
    with caplog.at_level("WARNING", logger="stpredict.learn.train"):
        r = train(c, train_ds, val_ds, out)
    assert r["resumed_from"] == 0
    assert f"stores.[{store}].content changed" in caplog.text

    # patch-store geometry (the .json sidecar)
    store.with_suffix(".json").write_text(json.dumps({"fov_um": 110, "fov_px": 160, "size_px": S}))
    interrupted()
    store.with_suffix(".json").write_text(json.dumps({"fov_um": 150, "fov_px": 218, "size_px": S}))
    caplog.clear()
    with caplog.at_level("WARNING", logger="stpredict.learn.train"):
        r = train(c, train_ds, val_ds, out)
    assert r["resumed_from"] == 0
    assert "geometry.fov_um 110 -> 150" in caplog.text


def test_unreadable_checkpoint_starts_afresh(data, tmp_path, caplog):
    train_ds, val_ds = data
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (out / "model.pt").write_bytes(b"stale weights of another run")
    with caplog.at_level("WARNING", logger="stpredict.learn.train"):
        r = train(cfg(epochs=2), train_ds, val_ds, out)
    assert "cannot read the checkpoint" in caplog.text and r["resumed_from"] == 0
    train(cfg(epochs=2), train_ds, val_ds, tmp_path / "ref")
    _assert_same_weights(_weights(tmp_path / "ref" / "model.pt"), _weights(out / "model.pt"))
    # killed between checkpoint.pt and best.pt of an improving epoch: the checkpoint's weights
    # are the best ones, the resume rewrites best.pt and ends as the uninterrupted run
    with pytest.raises(TrainingInterrupted):
        train(cfg(epochs=2), train_ds, val_ds, out, stop_after_epoch=1)
    (out / "best.pt").unlink()
    assert train(cfg(epochs=2), train_ds, val_ds, out)["resumed_from"] == 1
    _assert_same_weights(_weights(tmp_path / "ref" / "model.pt"), _weights(out / "model.pt"))


def test_missing_best_weights_start_afresh(data, tmp_path, caplog, monkeypatch):
    train_ds, val_ds = data
    losses = iter([0.5, 0.9, 0.5, 0.9, 0.4])  # epoch 1 is the best of the first two
    monkeypatch.setattr(
        training,
        "_evaluate",
        lambda *a, **k: {
            "val_loss": next(losses),
            "val_sse": 1.0,
            "val_n": 8,
            "val_pearson_mean": 0.0,
            "val_accuracy": math.nan,
        },
    )
    with pytest.raises(TrainingInterrupted):
        train(cfg(epochs=3), train_ds, val_ds, tmp_path, stop_after_epoch=2)
    (tmp_path / "best.pt").write_bytes(b"broken")
    with caplog.at_level("WARNING", logger="stpredict.learn.train"):
        r = train(cfg(epochs=3), train_ds, val_ds, tmp_path)
    assert "best weights" in caplog.text and r["resumed_from"] == 0
    assert _hist(tmp_path)["epoch"].tolist() == [1, 2, 3] and r["epoch"] == 3


def test_outputs_and_learning(data, tmp_path):
    train_ds, val_ds = data
    c = cfg(epochs=6, optimiser="adam", lr=0.01, augmentation="none", patience=None)
    res = train(c, train_ds, val_ds, tmp_path, genes=["level", "red"], target_transform="log1p")
    hist = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    assert list(hist.columns) == HISTORY_COLUMNS
    assert hist["epoch"].tolist() == list(range(1, 7))
    assert (hist["images_per_s"] > 0).all()
    assert (hist["precision"] == "fp32").all() and res["precision"] == "fp32"
    # val_sse: squared errors summed over spots and outputs; val_loss: the per-spot mean
    assert (hist["val_n"] == len(val_ds)).all()
    np.testing.assert_allclose(hist["val_sse"], hist["val_loss"] * len(val_ds) * 2, rtol=1e-6)
    meta = torch.load(tmp_path / "model.pt", weights_only=True)
    assert meta["backbone"] == "tiny" and meta["n_outputs"] == 2
    assert meta["genes"] == ["level", "red"] and meta["target_transform"] == "log1p"
    assert meta["epoch"] == res["epoch"] == int(hist.loc[hist["val_loss"].idxmin(), "epoch"])
    assert meta["selection"] == "best_val_loss" and meta["precision"] == "fp32"
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "best.pt").exists()
    # the tiny CNN learns patch brightness (and redness) from 56 patches
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    assert hist["val_pearson_mean"].max() > 0.5


def test_val_tta_predictions_behind_val_sse(data, tmp_path):
    train_ds, val_ds = data
    x = torch.stack([val_ds[i][0] for i in range(len(val_ds))])
    y = val_ds.targets.astype(np.float64)
    sse = {}
    for n in (1, 8):
        out = tmp_path / f"tta{n}"
        res = train(cfg(epochs=2, val_tta=n), train_ds, val_ds, out)
        model, _ = load_model(out / "model.pt")
        with torch.inference_mode():
            pred = tta_predict(model, model.normalize(x.float() / 255.0), n=n).double().numpy()
        row = _hist(out).set_index("epoch").loc[res["epoch"]]
        np.testing.assert_allclose(row["val_sse"], ((pred - y) ** 2).sum(), rtol=1e-5)
        sse[n] = row["val_sse"]
    assert abs(sse[1] - sse[8]) > 1e-4 * sse[1]  # TTA changes the validation predictions


def test_early_stopping_uses_the_best_val_loss(data, tmp_path, monkeypatch):
    train_ds, val_ds = data
    # epoch 4 improves on epoch 3 but not on the best (epoch 2): a "previous epoch" rule would
    # reset the counter there and run on
    losses = [1.0, 0.5, 0.6, 0.55, 0.7, 0.4, 0.3, 0.2]

    def scripted():
        it = iter(losses)
        return lambda *a, **k: {
            "val_loss": next(it),
            "val_sse": math.nan,
            "val_n": 8,
            "val_pearson_mean": 0.0,
            "val_accuracy": math.nan,
        }

    monkeypatch.setattr(training, "_evaluate", scripted())
    res = train(cfg(epochs=8, patience=2), train_ds, val_ds, tmp_path / "a")
    assert res["epochs_run"] == 4 and res["stopped_early"]
    assert res["epoch"] == 2 and res["best_val_loss"] == 0.5
    # a run killed right after it stopped does not train more when rerun
    monkeypatch.setattr(training, "_evaluate", scripted())
    with pytest.raises(TrainingInterrupted):
        train(cfg(epochs=8, patience=2), train_ds, val_ds, tmp_path / "b", stop_after_epoch=4)
    again = train(cfg(epochs=8, patience=2), train_ds, val_ds, tmp_path / "b")
    assert again["epochs_run"] == 4 and again["resumed_from"] == 4 and again["epoch"] == 2
    _assert_same_weights(
        _weights(tmp_path / "a" / "model.pt"), _weights(tmp_path / "b" / "model.pt")
    )


def test_head_init_zero_starts_at_training_mean(data, tmp_path):
    train_ds, _ = data
    torch.manual_seed(0)
    c = cfg(epochs=1, head_init="zero", lr=1e-12, momentum=0.0)
    train(c, train_ds, None, tmp_path)
    bias = _weights(tmp_path / "model.pt")["head.bias"]
    np.testing.assert_allclose(bias.numpy(), train_ds.targets.mean(0), rtol=1e-5)


# ------------------------------------------------------------------------------- loss reduction


def _stnet_batch(tmp_path, n=32, n_genes=5, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, S, S, 3), dtype=np.uint8)
    np.save(tmp_path / "s.npy", imgs)
    y = (-7.3 + rng.normal(0, 0.5, size=(n, n_genes))).astype(np.float32)  # log proportions
    return imgs, y


def test_stnet_loss_reduction_is_stnets_own_sgd_step(tmp_path):
    """One SGD step of the ST-Net preset = ST-Net's loss sum((pred - y)**2) / n_genes, by hand."""
    imgs, y = _stnet_batch(tmp_path)
    n, n_genes = y.shape
    ds = PatchDataset([tmp_path / "s.npy"], [np.arange(n)], targets=y)
    stnet = dict(
        backbone="tiny",
        tiny_width=4,
        optimiser="sgd",
        lr=1e-6,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=n,
        epochs=1,
        augmentation="none",
        head_init="zero",
        seed=11,
        precision="fp32",
    )
    train(train_config(**stnet, loss_reduction="stnet"), ds, None, tmp_path / "stnet")
    train(train_config(**stnet, loss_reduction="mean"), ds, None, tmp_path / "mean")
    after = {k: _weights(tmp_path / k / "model.pt") for k in ("stnet", "mean")}

    # by hand: the same initial model, ST-Net's loss on the batch, one SGD step
    seed_everything(11)
    model = build_model("tiny", n_genes, head_init="zero", head_bias=y.mean(0), tiny_width=4)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9, weight_decay=0.0)
    model.train()
    x = model.normalize(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0)
    pred = model(x)
    loss = ((pred - torch.from_numpy(y)) ** 2).sum() / n_genes
    opt.zero_grad()
    loss.backward()
    opt.step()
    hand = model.state_dict()

    params = [k for k, _ in model.named_parameters()]
    d_hand = {k: hand[k] - before[k] for k in params}
    d_stnet = {k: after["stnet"][k] - before[k] for k in params}
    d_mean = {k: after["mean"][k] - before[k] for k in params}
    assert d_hand["head.weight"].abs().max() > 0  # the step moves the head
    for k in params:
        torch.testing.assert_close(d_stnet[k], d_hand[k], rtol=1e-4, atol=1e-12)
        torch.testing.assert_close(d_stnet[k], n * d_mean[k], rtol=1e-4, atol=1e-12)
    assert not torch.allclose(d_stnet["head.weight"], d_mean["head.weight"])
    # the reported losses are per-spot means whatever the reduction
    h_s, h_m = _hist(tmp_path / "stnet"), _hist(tmp_path / "mean")
    np.testing.assert_allclose(h_s["train_loss"], h_m["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(h_s["train_loss"].iloc[0], loss.item() / n, rtol=1e-5)


def test_per_spot_loss_of_each_kind():
    pred = torch.tensor([[0.0, 1.0, 4.0], [2.0, 2.0, 2.0]])
    y = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 2.5]])
    torch.testing.assert_close(per_spot_loss(pred, y, "mse"), torch.tensor([17 / 3, 4.25 / 3]))
    torch.testing.assert_close(
        per_spot_loss(pred, y, "smoothl1"), torch.tensor([(0.5 + 3.5) / 3, (1.5 + 0.125) / 3])
    )
    ce = per_spot_loss(pred, torch.tensor([2, 0]), "cross_entropy")
    torch.testing.assert_close(
        ce, torch.nn.functional.cross_entropy(pred, torch.tensor([2, 0]), reduction="none")
    )
    assert per_spot_loss(pred.bfloat16(), y, "mse").dtype == torch.float32


# ------------------------------------------------------------------------------- precision


def test_bf16_autocast_keeps_the_head_and_loss_in_fp32(tmp_path):
    """ST-Net-like targets: -7.3 +- 0.05. A bf16 head would be off by up to 0.016 (step 0.031)."""
    rng = np.random.default_rng(0)
    n = 64
    np.save(tmp_path / "t.npy", rng.integers(0, 256, size=(n, S, S, 3), dtype=np.uint8))
    y = (-7.3 + 0.05 * rng.standard_normal((n, 3))).astype(np.float32)
    ds = PatchDataset([tmp_path / "t.npy"], [np.arange(n)], targets=y)
    c = train_config(
        backbone="tiny",
        tiny_width=4,
        optimiser="sgd",
        lr=1e-12,
        momentum=0.0,
        batch_size=16,
        epochs=1,
        augmentation="none",
        head_init="zero",
        seed=0,
        precision="bf16",
    )
    res = train(c, ds, ds, tmp_path / "run")
    assert res["precision"] == "bf16"
    h = _hist(tmp_path / "run")
    assert h["precision"].tolist() == ["bf16"]
    # zero head weights: every prediction is the fp32 training mean, the loss is the variance
    var = float(((y.astype(np.float64) - y.mean(0)) ** 2).mean())
    np.testing.assert_allclose(h["train_loss"].iloc[0], var, rtol=1e-4)
    np.testing.assert_allclose(h["val_loss"].iloc[0], var, rtol=1e-4)
    # what a bf16 head would have given instead (so the check above can fail)
    m16 = torch.tensor(y.mean(0)).bfloat16().float().numpy()
    assert abs(float(((y - m16) ** 2).mean()) - var) > 1e-3 * var
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["precision"] == "bf16"


def test_fp16_with_grad_scaler_trains_on_the_cpu(data, tmp_path):
    train_ds, val_ds = data
    res = train(cfg(epochs=2, precision="fp16"), train_ds, val_ds, tmp_path)
    h = _hist(tmp_path)
    assert res["precision"] == "fp16" and np.isfinite(h["train_loss"]).all()
    assert np.isfinite(h["val_sse"]).all()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16"])
def test_cuda_precisions_keep_fp32_outputs(tmp_path, precision):
    rng = np.random.default_rng(0)
    n = 256
    np.save(tmp_path / "g.npy", rng.integers(0, 256, size=(n, S, S, 3), dtype=np.uint8))
    y = (-7.3 + 0.05 * rng.standard_normal((n, 4))).astype(np.float32)
    ds = PatchDataset([tmp_path / "g.npy"], [np.arange(n)], targets=y)
    c = train_config(
        backbone="tiny",
        tiny_width=8,
        optimiser="adam",
        lr=1e-3,
        batch_size=32,
        epochs=2,
        augmentation="dihedral",
        head_init="zero",
        seed=0,
        precision=precision,
    )
    res = train(c, ds, ds, tmp_path / "run", device="cuda")
    expect = (
        ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16")
        if precision == "auto"
        else precision
    )
    assert res["precision"] == expect
    assert np.isfinite(_hist(tmp_path / "run")["train_loss"]).all()
    model, _ = load_model(tmp_path / "run" / "model.pt", device="cuda")
    pred, emb = predict(model, [tmp_path / "g.npy"], tta=8, device="cuda", precision=precision)
    w = model.head.weight.detach().double().cpu().numpy()
    b = model.head.bias.detach().double().cpu().numpy()
    np.testing.assert_allclose(pred, emb.astype(np.float64) @ w.T + b, atol=1e-5)
    assert len(np.unique(pred[:, 0])) > 0.9 * n


def test_loader_workers_come_from_the_job_threads():
    from stpredict.learn.train import loader_workers

    assert loader_workers(8, "cpu") == 0  # the CPU's threads compute; patches come from a memmap
    if torch.cuda.is_available():
        assert loader_workers(8, "cuda") == 7
    # not a setting of the config: the schema refuses it (resources live in rules and profiles)
    from stpredict.config import CONFIG_SCHEMA, check_config_schema, load_schema
    from stpredict.errors import ConfigError

    cfg = {"samples": "s.tsv", "experiments": {"e": {"train": {"num_workers": 4}}}}
    with pytest.raises(ConfigError, match="num_workers"):
        check_config_schema(cfg, load_schema(CONFIG_SCHEMA))
