"""Batched, device-agnostic augmentation of ``(B, C, H, W)`` image tensors and TTA.

* The dihedral group D4 (8 elements: ``rot90`` by ``k = 0..3`` quarter turns, each optionally
  preceded by a horizontal flip) — :func:`dihedral`, :func:`random_dihedral` (an independent
  element per image, drawn from an explicit generator), :func:`tta_predict`.
* DeepSpaCE's set (flips/rotations/transposition, random resized crop, HSV-like colour shift,
  Gaussian noise, blur, elastic "distortion") with :mod:`torchvision.transforms.v2` —
  :class:`DeepSpaceAugment`. v2 transforms draw one set of parameters per call, so the batch is
  split into a few groups that get independent parameters (no per-image Python loop).

Everything runs on the tensors' device; inputs are floats in ``[0, 1]`` (before normalisation)
unless said otherwise. Dihedral ops work on any dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = [
    "DIHEDRAL",
    "dihedral",
    "random_dihedral",
    "DeepSpaceAugment",
    "make_augment",
    "tta_predict",
    "tta_features",
]

#: The 8 elements ``(k, flip)`` of D4, identity first, then the pure rotations.
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, f) for f in (False, True) for k in range(4))


def dihedral(x: torch.Tensor, k: int, flip: bool = False) -> torch.Tensor:
    """Apply one D4 element to ``(..., H, W)``: optional horizontal flip, then ``k`` quarter turns.

    Parameters
    ----------
    x
        Images ``(..., H, W)``; rotations by an odd ``k`` need ``H == W`` to keep the shape.
    k
        Number of counter-clockwise quarter turns (any integer; taken modulo 4).
    flip
        Flip the last axis first.
    """
    if flip:
        x = x.flip(-1)
    k = int(k) % 4
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def random_dihedral(batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply an independent uniformly drawn D4 element to every image of ``(B, C, H, W)``.

    The elements are drawn on the CPU from ``generator`` (so the result does not depend on the
    device), and the batch is transformed in at most 8 vectorised groups.

    Parameters
    ----------
    batch
        Square images ``(B, C, H, W)`` on any device.
    generator
        CPU generator; the default generator when ``None``.
    """
    if batch.shape[-1] != batch.shape[-2]:
        raise ValueError(f"random_dihedral needs square images, got {tuple(batch.shape[-2:])}")
    codes = torch.randint(0, 8, (batch.shape[0],), generator=generator)
    out = torch.empty_like(batch)
    for code in torch.unique(codes).tolist():
        idx = torch.nonzero(codes == code).flatten().to(batch.device)
        k, flip = DIHEDRAL[code]
        out[idx] = dihedral(batch.index_select(0, idx), k, flip)
    return out


class DeepSpaceAugment(nn.Module):
    """DeepSpaCE-style augmentation of float ``[0, 1]`` batches, on the batch's device.

    Random dihedral element per image, then in ``groups`` independent groups: random resized
    crop (back to the input size), colour shift (hue/saturation/brightness jitter, the HSV shift),
    Gaussian noise, Gaussian blur and elastic distortion, each applied with probability ``p``.
    Randomness of the v2 transforms comes from torch's global generators (seed them).

    Parameters
    ----------
    size
        Output side (the input side when ``None``).
    p
        Probability of each photometric/geometric transform.
    groups
        Number of sub-batches with independent parameters.
    """

    def __init__(self, size: int | None = None, p: float = 0.5, groups: int = 4) -> None:
        super().__init__()
        self.size = size
        self.p = p
        self.groups = max(1, int(groups))
        self._pipelines: dict[int, Any] = {}

    def _pipeline(self, side: int) -> Any:
        from torchvision.transforms import v2  # lazy: torchvision costs seconds to import

        if side not in self._pipelines:
            p = self.p
            # elastic field smoothing must fit the image (reflect padding of 4 sigma)
            sigma = max(1.0, min(5.0, side / 10.0))
            self._pipelines[side] = v2.Compose([
                v2.RandomApply([v2.RandomResizedCrop(side, scale=(0.8, 1.0), ratio=(0.9, 1.1),
                                                     antialias=True)], p=p),
                v2.RandomApply([v2.ColorJitter(brightness=0.1, saturation=0.1, hue=0.05)], p=p),
                v2.RandomApply([v2.GaussianNoise(mean=0.0, sigma=0.02, clip=True)], p=p),
                v2.RandomApply([v2.GaussianBlur(kernel_size=3, sigma=(0.1, 1.0))], p=p),
                v2.RandomApply([v2.ElasticTransform(alpha=side / 10.0, sigma=sigma)], p=p / 2),
            ])
        return self._pipelines[side]

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment float images ``(B, 3, H, W)`` in ``[0, 1]``."""
        x = random_dihedral(x, generator)
        side = self.size or x.shape[-1]
        pipe = self._pipeline(side)
        parts = [pipe(chunk) for chunk in torch.chunk(x, min(self.groups, x.shape[0]))]
        return torch.cat(parts).clamp_(0.0, 1.0)


def make_augment(name: str, size: int | None = None) -> nn.Module | None:
    """Return the augmentation module for a config name: ``none``, ``dihedral`` or ``deepspace``."""
    name = (name or "none").lower()
    if name == "none":
        return None
    if name == "dihedral":
        return _Dihedral()
    if name == "deepspace":
        return DeepSpaceAugment(size=size)
    raise ValueError(f"unknown augmentation '{name}' (use none, dihedral or deepspace)")


class _Dihedral(nn.Module):
    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_dihedral(x, generator)


def _elements(n: int) -> tuple[tuple[int, bool], ...]:
    if not 1 <= int(n) <= 8:
        raise ValueError(f"TTA needs 1 to 8 transforms, got {n}")
    return DIHEDRAL[: int(n)]


def tta_features(model: nn.Module, x: torch.Tensor, n: int = 8) -> torch.Tensor:
    """Embeddings ``model.features`` averaged over the first ``n`` D4 elements.

    Each transform's embeddings are cast to fp32 before averaging, so the average keeps fp32
    resolution when the backbone runs under bf16/fp16 autocast.
    """
    elements = _elements(n)
    total = None
    for k, f in elements:
        feat = model.features(dihedral(x, k, f)).float()
        total = feat if total is None else total + feat
    return total / len(elements)


def _head_fp32(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """Apply the model's head to fp32 features with autocast disabled (fp32 outputs)."""
    apply = getattr(model, "apply_head", None)
    if callable(apply):
        return apply(feats).float()
    with torch.autocast(device_type=feats.device.type, enabled=False):
        return model.head(feats.to(model.head.weight.dtype)).float()


def tta_predict(
    model: nn.Module, x: torch.Tensor, n: int = 8, return_features: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Predict ``x`` averaged over the first ``n`` of the 8 dihedral transforms.

    With ``n = 8`` the result is invariant to any dihedral transform of ``x`` (the group is
    closed). For a :class:`~stpredict.models.PatchModel` the embeddings are averaged (in fp32) and
    the linear head applied once, in fp32 with autocast disabled (equal to averaging the outputs);
    other models average their outputs in fp32. Only the backbone runs in the precision of a
    surrounding autocast context.

    Parameters
    ----------
    model
        Model in eval mode; ``x`` is its (normalised) input ``(B, C, H, W)``.
    n
        Number of transforms: 1 (none), 4 (rotations) or 8 (all).
    return_features
        Also return the averaged embeddings (PatchModel only).

    Returns
    -------
    torch.Tensor or tuple
        fp32 outputs ``(B, n_outputs)`` (and fp32 embeddings ``(B, n_features)``).
    """
    if hasattr(model, "features") and hasattr(model, "head") and callable(model.features):
        feats = tta_features(model, x, n)
        out = _head_fp32(model, feats)
        return (out, feats) if return_features else out
    if return_features:
        raise ValueError("return_features needs a model with .features and .head")
    elements = _elements(n)
    total = None
    for k, f in elements:
        o = model(dihedral(x, k, f)).float()
        total = o if total is None else total + o
    return total / len(elements)
