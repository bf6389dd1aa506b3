"""Patch-to-expression models: any torchvision classification backbone with a new linear head.

:func:`build_model` returns a :class:`PatchModel`, which wraps a backbone whose final classifier
layer is replaced by :class:`torch.nn.Identity` and adds ``head = Linear(n_features, n_outputs)``.
``model.features(x)`` gives the penultimate embeddings and ``model(x)`` the outputs. Inputs are
float images normalised with :meth:`PatchModel.normalize` (ImageNet mean and std); the loaders
ship uint8 and the conversion happens on the device (:func:`to_input`).

Precision: only the backbone may run in reduced precision (bf16/fp16 autocast). The head always
runs in fp32 with autocast disabled (:meth:`PatchModel.apply_head`), so outputs keep fp32
resolution: a bf16 value near ST-Net's log-proportion targets (≈ -5 … -10) has a step of 0.031,
larger than the differences between spots.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stpredict.errors import ConfigError, InputError

__all__ = [
    "PatchModel",
    "TinyCNN",
    "build_model",
    "imagenet_cache_path",
    "require_imagenet_weights",
    "load_weights",
    "to_input",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TinyCNN(nn.Module):
    """A small CNN for demos and tests: three conv blocks and global average pooling.

    Parameters
    ----------
    width
        Channels of the first block (then ``2 * width`` and ``4 * width``); embeddings have
        ``4 * width`` features.
    num_classes
        Size of the classifier layer (replaced by :func:`build_model`).
    """

    def __init__(self, width: int = 8, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch ``(B, 3, H, W)``."""
        return self.fc(self.features(x))


class PatchModel(nn.Module):
    """A backbone producing embeddings plus a linear head producing the outputs.

    Parameters
    ----------
    backbone
        Module mapping ``(B, 3, H, W)`` float images to ``(B, n_features)`` embeddings.
    n_features
        Embedding size.
    n_outputs
        Number of outputs (genes, or classes for a classifier).
    name
        Backbone name, kept as metadata.
    """

    def __init__(self, backbone: nn.Module, n_features: int, n_outputs: int, name: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(n_features, n_outputs)
        self.backbone_name = name
        self.n_features = int(n_features)
        self.n_outputs = int(n_outputs)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise float images in ``[0, 1]`` with the ImageNet mean and std."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embeddings ``(B, n_features)`` of normalised images."""
        return torch.flatten(self.backbone(x), 1)

    def apply_head(self, features: torch.Tensor) -> torch.Tensor:
        """Apply the linear head to embeddings in fp32, with autocast disabled.

        Whatever autocast context surrounds the call, the head's matmul and bias run in the head's
        own dtype (fp32 unless the whole model was cast), on fp32 features.
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.head(features.to(self.head.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the outputs ``(B, n_outputs)`` of normalised images (head in fp32)."""
        return self.apply_head(self.features(x))


def to_input(x: torch.Tensor, model: PatchModel, channels_last: bool = False) -> torch.Tensor:
    """Turn a uint8 ``(B, 3, H, W)`` batch already on the device into normalised floats."""
    out = model.normalize(x.float().div_(255.0))
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


# --------------------------------------------------------------------------------------------
# backbone surgery


def _final_layer(model: nn.Module) -> tuple[str, nn.Module, int]:
    """Find the classifier layer (the last registered Linear, or SqueezeNet's 1x1 conv)."""
    last: tuple[str, nn.Module, int] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = (name, mod, mod.in_features)
        elif isinstance(mod, nn.Conv2d) and mod.kernel_size == (1, 1) and mod.out_channels == 1000:
            last = (name, mod, mod.in_channels)
    if last is None:
        raise ConfigError(
            f"cannot find the classifier layer of {type(model).__name__}",
            fix="use a torchvision classification backbone",
        )
    return last


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _strip_aux(model: nn.Module) -> None:
    """Drop auxiliary classifiers (Inception v3, GoogLeNet) so forward returns one tensor."""
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
        for attr in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, attr):
                setattr(model, attr, None)


def _torchvision_backbone(name: str, weights: Any) -> nn.Module:
    import torchvision  # lazy: seconds to import, not needed for the tiny demo CNN

    try:
        return torchvision.models.get_model(name, weights=weights)
    except ValueError as exc:
        known = ", ".join(torchvision.models.list_models(module=torchvision.models))
        raise ConfigError(
            f"unknown backbone '{name}' ({exc})",
            fix=f"use 'tiny' or a torchvision classification model: {known}",
        ) from None


# --------------------------------------------------------------------------------------------
# weights


def imagenet_cache_path(backbone: str) -> tuple[Any, Path]:
    """Return the default ImageNet weight enum of ``backbone`` and its torch hub cache path."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(backbone).DEFAULT
    except (ValueError, KeyError):
        raise ConfigError(
            f"backbone '{backbone}' has no ImageNet weights in torchvision",
            fix="use weights: none or a path to a state_dict",
        ) from None
    filename = os.path.basename(enum.url)
    return enum, Path(torch.hub.get_dir()) / "checkpoints" / filename


def require_imagenet_weights(backbone: str) -> tuple[Any, Path]:
    """Return the ImageNet weight enum and cache file of ``backbone``; a clear error when absent.

    Nothing is ever downloaded: the file must already be in torch's hub cache
    (``$TORCH_HOME/hub/checkpoints``). Parse time calls this too, so a missing file is reported
    before any job runs.
    """
    if backbone == "tiny":
        raise ConfigError("the 'tiny' backbone has no ImageNet weights", fix="use weights: none")
    tv_weights, cache = imagenet_cache_path(backbone)
    if not cache.is_file():
        raise InputError(
            f"ImageNet weights for '{backbone}' are not in the torch cache (offline, "
            f"nothing is downloaded): expected {cache}",
            fix=f"put {tv_weights.url.rsplit('/', 1)[-1]} (from {tv_weights.url}) there, "
            f"set TORCH_HOME to a folder whose hub/checkpoints holds it, or use weights: "
            f"none or a path to a weights file",
        )
    return tv_weights, cache


_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _clean_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise InputError(
            "weights file holds no state_dict (a mapping of names to tensors, or a dict with "
            "a 'state_dict' or 'model' entry)",
            file=path,
            fix="save the weights with torch.save(model.state_dict(), path)",
        )
    out = {}
    for k, v in obj.items():
        k = k.removeprefix("module.")
        m = _DENSENET_KEY.match(k)  # torchvision's old DenseNet key format ('norm.1' -> 'norm1')
        if m:
            k = m.group(1) + m.group(2)
        out[k] = v
    return out


def load_weights(model: PatchModel, path: str | os.PathLike[str]) -> list[str]:
    """Load a local weights file into ``model``; return the missing keys.

    The file is read with ``torch.load(weights_only=True, map_location="cpu")`` and may hold a
    raw state_dict or a dict with a ``state_dict``/``model`` entry, saved either from a
    :class:`PatchModel` (keys ``backbone.*``, ``head.*``) or from the plain torchvision model.
    Tensors whose shape does not fit (e.g. a head with another number of outputs) are skipped;
    missing keys are logged. Raises :class:`StpredictError` when nothing matches.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            "weights file not found", file=path, fix="give an existing path, 'imagenet' or 'none'"
        )
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(
            f"cannot read weights ({type(exc).__name__}: {exc})",
            file=path,
            fix="save weights with torch.save(state_dict, path)",
        ) from None
    sd = _clean_state_dict(obj, path)
    if not any(k.startswith(("backbone.", "head.")) for k in sd):
        # saved from the plain torchvision model: its classifier keys do not fit our head
        sd = {f"backbone.{k}": v for k, v in sd.items()}
    own = model.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in sd if k not in usable)
    if not usable:
        raise InputError(
            f"no tensor of the weights file fits backbone '{model.backbone_name}' "
            f"(first keys: {list(sd)[:3]})",
            file=path,
            fix="use weights saved from the same backbone",
        )
    result = model.load_state_dict(usable, strict=False)
    missing = list(result.missing_keys)
    backbone_missing = [k for k in missing if not k.startswith("head.")]
    log.info("loaded %d tensors from %s", len(usable), path)
    if missing:
        (log.warning if backbone_missing else log.info)(
            "weights %s: %d missing key(s) keep their initial values: %s",
            path,
            len(missing),
            ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""),
        )
    if skipped:
        log.info(
            "weights %s: %d key(s) unused (absent here or another shape): %s",
            path,
            len(skipped),
            ", ".join(skipped[:20]),
        )
    return missing


# --------------------------------------------------------------------------------------------


def build_model(
    backbone: str,
    n_outputs: int,
    weights: str | os.PathLike[str] = "none",
    head_init: str | None = None,
    head_bias: np.ndarray | torch.Tensor | None = None,
    tiny_width: int = 8,
) -> PatchModel:
    """Build a :class:`PatchModel` from a torchvision classification backbone (or ``"tiny"``).

    Parameters
    ----------
    backbone
        ``"tiny"`` (:class:`TinyCNN`) or any name of ``torchvision.models.list_models()`` among
        the classification models, e.g. ``"densenet121"`` (ST-Net), ``"vgg16"`` (DeepSpaCE),
        ``"resnet50"``, ``"vit_b_16"``.
    n_outputs
        Size of the new linear head.
    weights
        ``"none"`` (random init), ``"imagenet"`` (torchvision's default weights, read from the
        torch hub cache; never downloaded) or a path to a local weights file (see
        :func:`load_weights`).
    head_init
        ``None`` (PyTorch's default init) or ``"zero"``: zero head weights (ST-Net).
    head_bias
        ``(n_outputs,)`` initial head bias, e.g. the training mean of each target (ST-Net).
    tiny_width
        Width of the ``"tiny"`` CNN.

    Returns
    -------
    PatchModel
        On the CPU, in training mode.

    Raises
    ------
    StpredictError
        Unknown backbone, ImageNet weights absent from the cache (one line naming the expected
        file and the fix), or an unreadable/unfitting weights file.
    """
    if n_outputs < 1:
        raise InputError(f"n_outputs must be at least 1, got {n_outputs}")
    w = str(weights)
    tv_weights = None
    if w.lower() == "imagenet":
        tv_weights, cache = require_imagenet_weights(backbone)
        log.info("loading ImageNet weights for %s from %s", backbone, cache)
    if backbone == "tiny":
        net: nn.Module = TinyCNN(width=tiny_width)
    else:
        net = _torchvision_backbone(backbone, tv_weights)
    _strip_aux(net)
    layer_name, _, n_features = _final_layer(net)
    _replace(net, layer_name, nn.Identity())
    model = PatchModel(net, n_features, n_outputs, backbone)
    if w.lower() not in ("none", "imagenet", ""):
        load_weights(model, w)
    if head_init not in (None, "default", "zero"):
        raise ConfigError(f"unknown head_init '{head_init}'", fix="use 'zero' or leave it empty")
    with torch.no_grad():
        if head_init == "zero":
            model.head.weight.zero_()
            model.head.bias.zero_()
        if head_bias is not None:
            bias = torch.as_tensor(np.asarray(head_bias, dtype=np.float32)).flatten()
            if bias.numel() != n_outputs:
                raise InputError(f"head_bias has {bias.numel()} values for {n_outputs} outputs")
            model.head.bias.copy_(bias)
    log.info(
        "built %s: %d features -> %d outputs (weights: %s)", backbone, n_features, n_outputs, w
    )
    return model
