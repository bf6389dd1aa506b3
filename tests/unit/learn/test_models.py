from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torchvision

from stpredict.errors import StpredictError
from stpredict.learn.models import PatchModel, build_model, imagenet_cache_path, load_weights


def test_tiny_model_shapes_and_split():
    torch.manual_seed(0)
    m = build_model("tiny", 7, tiny_width=4)
    assert isinstance(m, PatchModel)
    x = torch.randn(3, 3, 16, 16)
    f = m.features(x)
    assert f.shape == (3, m.n_features) == (3, 16)
    y = m(x)
    assert y.shape == (3, 7)
    torch.testing.assert_close(y, m.head(f))
    # normalisation buffers are not part of the state_dict
    assert not any(k in ("mean", "std") for k in m.state_dict())


def test_head_runs_in_fp32_under_autocast():
    torch.manual_seed(0)
    m = build_model("tiny", 3, tiny_width=4)
    with torch.no_grad():
        m.head.bias.fill_(-7.3)
    x = torch.randn(4, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = m.features(x)
        y = m(x)
        assert f.dtype == torch.bfloat16  # the backbone does run in bf16
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, f.float() @ m.head.weight.T + m.head.bias, atol=1e-6, rtol=0)
    y.sum().backward()
    assert m.head.weight.grad.dtype == torch.float32


@pytest.mark.parametrize(
    "name, n_features",
    [
        ("resnet18", 512),
        ("squeezenet1_1", 512),
        ("mobilenet_v3_small", 1024),
        ("googlenet", 1024),
        ("efficientnet_b0", 1280),
    ],
)
def test_torchvision_backbones_get_a_new_head(name, n_features):
    torch.manual_seed(0)
    m = build_model(name, 3)
    assert m.n_features == n_features
    assert m.head.in_features == n_features and m.head.out_features == 3
    m.train()  # auxiliary heads (googlenet) must not change the output type in training mode
    out = m(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


def test_zero_head_with_bias_predicts_the_training_mean():
    bias = np.array([1.5, -2.0, 0.25], dtype=np.float32)
    m = build_model("tiny", 3, head_init="zero", head_bias=bias).eval()
    out = m(torch.randn(4, 3, 16, 16))
    torch.testing.assert_close(out, torch.from_numpy(bias).expand(4, 3))
    assert torch.count_nonzero(m.head.weight) == 0
    with pytest.raises(StpredictError, match="head_bias has 2 values"):
        build_model("tiny", 3, head_bias=bias[:2])


def test_unknown_backbone():
    with pytest.raises(StpredictError, match="unknown backbone 'resnet0'"):
        build_model("resnet0", 3)


def test_imagenet_weights_absent_offline_fail_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    t0 = time.perf_counter()
    with pytest.raises(StpredictError) as info:
        build_model("densenet121", 5, weights="imagenet")
    assert time.perf_counter() - t0 < 5
    msg = str(info.value)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
    assert str(expected) in msg
    assert "weights: none" in msg and "\n" not in msg
    with pytest.raises(StpredictError, match="no ImageNet weights"):
        build_model("tiny", 5, weights="imagenet")


def test_imagenet_weights_are_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _, cache = imagenet_cache_path("squeezenet1_1")
    cache.parent.mkdir(parents=True)
    torch.manual_seed(1)
    ref = torchvision.models.squeezenet1_1()
    torch.save(ref.state_dict(), cache)
    torch.manual_seed(2)
    m = build_model("squeezenet1_1", 4, weights="imagenet")
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k


def test_local_weights_path(tmp_path, caplog):
    torch.manual_seed(0)
    src = build_model("tiny", 5)
    p = tmp_path / "w.pt"
    torch.save(src.state_dict(), p)
    torch.manual_seed(1)
    dst = build_model("tiny", 5, weights=str(p))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k

    # a dict with "state_dict" (e.g. our model.pt) and another head size: the head is skipped
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, wrapped)
    with caplog.at_level("INFO", logger="stpredict.learn.models"):
        other = build_model("tiny", 2, weights=wrapped)
    assert torch.equal(other.backbone.features[0].weight, src.backbone.features[0].weight)
    assert other.head.weight.shape == (2, 32)
    assert "missing key" in caplog.text and "head.weight" in caplog.text

    # {"model": ...} with DataParallel's "module." prefix, from the plain torchvision model
    torch.manual_seed(3)
    plain = torchvision.models.squeezenet1_1()
    p2 = tmp_path / "plain.pt"
    torch.save({"model": {f"module.{k}": v for k, v in plain.state_dict().items()}}, p2)
    sq = build_model("squeezenet1_1", 3, weights=p2)
    assert torch.equal(sq.backbone.features[0].weight, plain.features[0].weight)

    # wrong architecture / not a state_dict / absent file
    with pytest.raises(StpredictError, match="no tensor of the weights file fits"):
        load_weights(build_model("resnet18", 3), p)
    bad = tmp_path / "bad.pt"
    torch.save({"a": 1}, bad)
    with pytest.raises(StpredictError, match="holds no state_dict"):
        build_model("tiny", 3, weights=bad)
    with pytest.raises(StpredictError, match="not found"):
        build_model("tiny", 3, weights=tmp_path / "absent.pt")
