"""Integrated gradients: completeness against the model's own outputs, and the choice of patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stpredict.errors import StpredictError
from stpredict.evaluate.attributions import integrated_gradients, pick_ig_patches
from stpredict.learn.models import build_model


# ----------------------------------------------------------------------------- attributions
def test_integrated_gradients_completeness():
    torch.manual_seed(0)
    model = build_model("tiny", 3, weights="none")
    model.train()
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    attr, delta = integrated_gradients(
        model, patches, target=1, n_steps=64, device="cpu", batch_size=1, return_delta=True
    )
    assert model.training  # mode restored
    assert attr.shape == (2, 32, 32) and attr.dtype == np.float32
    assert np.isfinite(attr).all()
    model.eval()
    with torch.no_grad():
        x = model.normalize(torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0)
        fx = model(x)[:, 1].numpy()
        fb = model(model.normalize(torch.ones(1, 3, 32, 32)))[0, 1].item()
    gap = fx - fb
    assert np.all(np.abs(gap) > 1e-4)
    np.testing.assert_allclose(attr.sum(axis=(1, 2)), gap, rtol=0.05, atol=1e-6)
    np.testing.assert_allclose(delta, attr.sum(axis=(1, 2)) - gap, atol=1e-4)
    assert np.all(np.abs(delta) < 0.05 * np.abs(gap))

    black = integrated_gradients(
        model, patches[:1], target=0, n_steps=8, baseline="black", device="cpu"
    )
    assert black.shape == (1, 32, 32)
    with pytest.raises(StpredictError):
        integrated_gradients(model, patches, target=3)
    with pytest.raises(StpredictError):
        integrated_gradients(model, patches, target=0, baseline="grey")


def test_pick_ig_patches():
    v = np.arange(1000, dtype=float)[::-1]  # value 999 at index 0 ... 0 at index 999
    idx = pick_ig_patches(v, n=3)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, [10, 50, 100])  # values nearest 989.01, 949.05, 899.1
    v2 = v.copy()
    v2[10] = np.nan
    assert 10 not in pick_ig_patches(v2, 3)
    assert len(set(pick_ig_patches(np.ones(5), 3))) == 3
    assert pick_ig_patches(np.array([np.nan, 2.0]), 3).tolist() == [1]
