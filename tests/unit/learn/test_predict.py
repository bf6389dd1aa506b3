from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from stpredict.errors import InputError
from stpredict.learn.augment import (
    DIHEDRAL,
    DeepSpaceAugment,
    dihedral,
    random_dihedral,
    tta_predict,
)
from stpredict.learn.models import build_model
from stpredict.learn.predict import load_model, predict
from stpredict.learn.train import PatchDataset, encode_labels, train
from tests.conftest import train_config

S = 16


def random_model(n_outputs=4, seed=0):
    torch.manual_seed(seed)
    m = build_model("tiny", n_outputs, tiny_width=4)
    # non-trivial BatchNorm statistics, so eval mode is not an identity
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


# ------------------------------------------------------------------------------ augmentation


def test_dihedral_group_has_eight_distinct_elements():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    outs = [dihedral(x, k, f) for k, f in DIHEDRAL]
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 8
    assert torch.equal(dihedral(x, 0, False), x)
    assert torch.equal(dihedral(dihedral(x, 1), 3), x)
    assert torch.equal(dihedral(x, 1), torch.from_numpy(np.rot90(x.numpy(), 1, axes=(2, 3)).copy()))


def test_random_dihedral_is_per_sample_and_seeded():
    x = torch.rand(64, 3, 6, 6)
    out = random_dihedral(x, torch.Generator().manual_seed(0))
    again = random_dihedral(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    used = []
    for i in range(len(x)):
        match = [
            j for j, (k, f) in enumerate(DIHEDRAL) if torch.equal(out[i], dihedral(x[i], k, f))
        ]
        assert len(match) == 1
        used.append(match[0])
    assert len(set(used)) >= 6  # different images get different elements
    u8 = (x * 255).to(torch.uint8)
    assert random_dihedral(u8, torch.Generator().manual_seed(1)).dtype == torch.uint8


def test_deepspace_augment_keeps_shape_and_range():
    torch.manual_seed(0)
    x = torch.rand(12, 3, S, S)
    out = DeepSpaceAugment(p=1.0)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert not torch.allclose(out, x)


# ------------------------------------------------------------------------------ TTA / predict


def test_tta_is_invariant_to_dihedral_transforms():
    m = random_model()
    x = torch.randn(3, 3, S, S)
    with torch.inference_mode():
        ref = tta_predict(m, x, n=8)
        plain = m(x)
        torch.testing.assert_close(tta_predict(m, x, n=1), plain)
        for k, f in DIHEDRAL[1:]:
            y = dihedral(x, k, f)
            torch.testing.assert_close(tta_predict(m, y, n=8), ref, atol=1e-5, rtol=0)
            # without TTA the random model is not invariant: the check above can fail
            assert (m(y) - plain).abs().max() > 1e-3


def test_predict_through_stores(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(2, S, S, 3), dtype=np.uint8)
    variants = []
    for img in base:
        for k, f in DIHEDRAL:
            v = img[:, ::-1] if f else img  # flip the width axis, then rotate (H, W) like torch
            variants.append(np.rot90(v, k, axes=(0, 1)))
    np.save(tmp_path / "a.npy", np.ascontiguousarray(np.stack(variants[:8])))
    np.save(tmp_path / "b.npy", np.ascontiguousarray(np.stack(variants[8:])))
    m = random_model(3)
    stores = [tmp_path / "a.npy", tmp_path / "b.npy"]
    pred, emb = predict(m, stores, batch_size=5, tta=8)
    assert pred.shape == (16, 3) and emb.shape == (16, m.n_features)
    assert pred.dtype == np.float32
    for block in (pred[:8], pred[8:], emb[:8], emb[8:]):
        np.testing.assert_allclose(block, np.broadcast_to(block[0], block.shape), atol=1e-5)
    assert np.abs(pred[0] - pred[8]).max() > 1e-4  # different patches, different predictions
    p1, _ = predict(m, stores, batch_size=5, tta=1)
    assert np.abs(p1[:8] - p1[0]).max() > 1e-3
    # subsets of rows, any order
    sub, _ = predict(m, stores, rows=[np.array([3]), np.array([7, 0])], tta=8)
    np.testing.assert_allclose(sub, pred[[3, 15, 8]], atol=1e-6)
    with pytest.raises(ValueError, match="1 to 8"):
        predict(m, stores, tta=9)


def test_bf16_prediction_keeps_fp32_resolution(tmp_path):
    """ST-Net-scale outputs: head bias -7.3, features varying slightly, 2,000 patches."""
    n = 2000
    rng = np.random.default_rng(0)
    level = rng.uniform(30, 225, size=(n, 1, 1, 3))  # patches of varied colour
    imgs = np.clip(level + rng.normal(0, 20, size=(n, S, S, 3)), 0, 255).astype(np.uint8)
    np.save(tmp_path / "p.npy", imgs)
    m = random_model(2, seed=1)
    with torch.no_grad():
        m.head.weight.normal_(0.0, 0.5)  # outputs about -7.3 +- 0.06
        m.head.bias.fill_(-7.3)
    pred, emb = predict(
        m, [tmp_path / "p.npy"], batch_size=500, tta=1, device="cpu", precision="bf16"
    )
    assert pred.dtype == np.float32
    w = m.head.weight.detach().double().numpy()
    b = m.head.bias.detach().double().numpy()
    head = emb.astype(np.float64) @ w.T + b  # the head part, in float64
    np.testing.assert_allclose(pred, head, atol=1e-5, rtol=0)
    assert 0.02 < float(pred[:, 0].std()) < 0.2  # the outputs differ by little
    assert len(np.unique(pred[:, 0])) > 1900
    # a head inside bf16 autocast (the old behaviour) collapses them to a few values
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        old = m.head(torch.from_numpy(emb)).float().numpy()
    assert len(np.unique(old[:, 0])) < 20
    # fp32 prediction: the same up to the backbone's bf16 rounding
    p32, e32 = predict(m, [tmp_path / "p.npy"], batch_size=500, tta=1, precision="fp32")
    np.testing.assert_allclose(p32, e32.astype(np.float64) @ w.T + b, atol=1e-5, rtol=0)
    assert np.abs(p32 - pred).max() < 0.05
    # with TTA: outputs averaged in fp32 under autocast too
    x = m.normalize(
        torch.from_numpy(np.load(tmp_path / "p.npy")[:64]).permute(0, 3, 1, 2).float() / 255.0
    )
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, feat = tta_predict(m, x, n=8, return_features=True)
    assert out.dtype == feat.dtype == torch.float32
    np.testing.assert_allclose(out.double().numpy(), feat.double().numpy() @ w.T + b, atol=1e-5)


# ------------------------------------------------------------------------------ cluster mode


def test_encode_labels_handles_one_based_gappy_and_excluded():
    labels = np.array([1, 3, 3, 7, 1, 5, 7, 5, 3])
    codes, classes = encode_labels(labels, exclude=5)
    assert classes.tolist() == [1, 3, 7]
    assert codes.tolist() == [0, 1, 1, 2, 0, -1, 2, -1, 1]
    kept = codes >= 0
    assert (classes[codes[kept]] == labels[kept]).all()
    assert codes[kept].min() == 0 and codes[kept].max() == len(classes) - 1
    # strings, missing labels, several exclusions, exclusion given as text
    s = ["tumour", "", "stroma", None, "immune", "stroma", "fat"]
    codes, classes = encode_labels(s, exclude=["fat", "immune"])
    assert classes.tolist() == ["stroma", "tumour"]
    assert codes.tolist() == [1, -1, 0, -1, -1, 0, -1]
    codes, classes = encode_labels([2, 4, 6], exclude="4")
    assert classes.tolist() == [2, 6] and codes.tolist() == [0, -1, 1]


def test_cluster_mode_trains_on_remapped_labels(tmp_path):
    rng = np.random.default_rng(0)
    n = 30
    clusters = rng.choice([1, 2, 4, 6], size=n)  # 1-based with a gap; cluster 6 excluded
    level = np.array([40, 100, 160, 220])[np.searchsorted([1, 2, 4, 6], clusters)]
    imgs = np.clip(level[:, None, None, None] + rng.normal(0, 5, (n, S, S, 3)), 0, 255)
    np.save(tmp_path / "c.npy", imgs.astype(np.uint8))
    codes, classes = encode_labels(clusters, exclude=6)
    keep = np.flatnonzero(codes >= 0)
    with pytest.raises(InputError, match="negative"):
        PatchDataset([tmp_path / "c.npy"], [np.arange(n)], labels=codes)
    ds = PatchDataset([tmp_path / "c.npy"], [keep], labels=codes[keep])
    cfg = train_config(
        backbone="tiny",
        tiny_width=4,
        loss="cross_entropy",
        optimiser="adam",
        lr=0.02,
        batch_size=8,
        epochs=3,
        augmentation="dihedral",
        seed=0,
    )
    res = train(cfg, ds, ds, tmp_path / "run", classes=list(classes))
    hist = pd.read_csv(tmp_path / "run" / "history.tsv", sep="\t")
    assert np.isfinite(hist["val_loss"]).all() and hist["val_accuracy"].notna().all()
    model, meta = load_model(res["model"])
    assert meta["task"] == "classification" and meta["classes"] == ["1", "2", "4"]
    assert model.n_outputs == 3
    logits, _ = predict(model, [tmp_path / "c.npy"], [keep], tta=1)
    assert logits.shape == (len(keep), 3)
