"""Batched, device-agnostic augmentation of ``(B, C, H, W)`` image tensors and TTA.

* The dihedral group D4 (8 elements: ``rot90`` by ``k = 0..3`` quarter turns, each optionally
  preceded by a horizontal flip) — :func:`dihedral`, :func:`random_dihedral` (an independent
  element per image, drawn from an explicit generator), :func:`tta_predict`.
* DeepSpaCE's training augmentation (Albumentations 0.4.5 groups flip, crop, color, contrast,
  noise, blur, dist, random with the original ranges) — :class:`DeepSpaceAugment`: parameters
  drawn per image from an explicit CPU generator, applied vectorised on the batch's device.

Everything runs on the tensors' device; inputs are floats in ``[0, 1]`` (before normalisation)
unless said otherwise. Dihedral ops work on any dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stpredict.errors import ConfigError

__all__ = [
    "DIHEDRAL",
    "dihedral",
    "random_dihedral",
    "AUGMENT_GROUPS",
    "DEEPSPACE_GROUPS",
    "AugmentStep",
    "DeepSpaceAugment",
    "parse_augmentation",
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


# ------------------------------------------------------------------------------ DeepSpaCE
#
# DeepSpaCE (Monjo et al. 2022) augments with Albumentations 0.4.5 (BasicLib.ImageTransform): a
# Resize to 224 px, then each group of ``--augmentation`` in the given order. The groups, their
# transforms and every default range are reproduced below with per-image parameters. A "slot" is
# an op name or ``("oneof", members)``; ops in ``_HALF`` fire with probability ``p`` (0.5), the
# others always (OneOf members are force-applied by Albumentations).

#: Group names of DeepSpaCE's ``--augmentation`` comma list.
AUGMENT_GROUPS: tuple[str, ...] = (
    "flip",
    "crop",
    "color",
    "contrast",
    "noise",
    "blur",
    "dist",
    "random",
)
#: ``deepspace``: every group the paper lists (noise, blur and distortion through ``random``).
DEEPSPACE_GROUPS: tuple[str, ...] = ("flip", "crop", "color", "contrast", "random")

_NOISE = ("oneof", ("iaa_noise", "gauss_noise"))
_BLUR = ("oneof", ("motion_blur", "median_blur", "blur"))
_DIST = ("oneof", ("optical", "grid", "piecewise", "shift_scale_rotate"))
_GROUP_SLOTS: dict[str, tuple[Any, ...]] = {
    "flip": ("flip",),  # RandomRotate90, Flip, Transpose (each with p) fused into one D4 element
    "crop": ("crop",),
    "color": ("hsv", "channel_shuffle", "rgb_shift"),
    "contrast": ("contrast", "gamma", "brightness"),
    "noise": (_NOISE,),
    "blur": (_BLUR,),
    "dist": (_DIST,),
    "random": (("oneof", (_NOISE, _BLUR, _DIST)),),
}
_HALF = frozenset(
    {"crop", "hsv", "channel_shuffle", "rgb_shift", "contrast", "gamma", "brightness"}
)
_MEDIAN_ELEMENTS = 1 << 25  # bound of the unfolded windows of one median chunk (128 MiB float32)

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AugmentStep:
    """One transform of an augmentation plan: which images of the batch, with which parameters.

    Attributes
    ----------
    op
        Transform name (``flip``, ``crop``, ``hsv``, ``channel_shuffle``, ``rgb_shift``,
        ``contrast``, ``gamma``, ``brightness``, ``iaa_noise``, ``gauss_noise``, ``motion_blur``,
        ``median_blur``, ``blur``, ``optical``, ``grid``, ``piecewise``, ``shift_scale_rotate``).
    idx
        Sorted int64 CPU indices of the images it applies to (possibly empty).
    params
        CPU tensors whose first dimension runs over ``idx``.
    """

    op: str
    idx: torch.Tensor
    params: Params


def parse_augmentation(name: str | None) -> tuple[str, tuple[str, ...]]:
    """Split a ``train.augmentation`` value into its kind and, for ``deepspace``, its groups.

    ``none``, ``dihedral``, ``deepspace`` (:data:`DEEPSPACE_GROUPS`) or ``deepspace:<list>``, a
    comma list of :data:`AUGMENT_GROUPS` applied in the given order (DeepSpaCE's
    ``--augmentation``, e.g. its README's ``deepspace:flip,crop,color,random``), or
    ``deepspace:none`` (no transform).

    Returns
    -------
    kind, groups
        ``kind`` is ``none``, ``dihedral`` or ``deepspace``; ``groups`` is empty unless
        ``kind == "deepspace"``.

    Raises
    ------
    ConfigError
        Unknown name or group.
    """
    if name is not None and not isinstance(name, str):
        raise ConfigError(
            f"augmentation must be a string, got {name!r}",
            fix="use none, dihedral, deepspace or deepspace:<groups>",
        )
    text = (name or "none").strip().lower()
    fix = (
        "use none, dihedral, deepspace or deepspace:<comma list of "
        + ", ".join(AUGMENT_GROUPS)
        + "> (or deepspace:none)"
    )
    if text in ("none", "dihedral"):
        return text, ()
    if text == "deepspace":
        return text, DEEPSPACE_GROUPS
    kind, sep, rest = text.partition(":")
    if kind != "deepspace" or not sep:
        raise ConfigError(f"unknown augmentation '{name}'", fix=fix)
    groups = tuple(g.strip() for g in rest.split(","))
    if groups == ("none",):
        return kind, ()
    if "none" in groups:
        raise ConfigError(f"augmentation '{name}' combines 'none' with other groups", fix=fix)
    unknown = [g for g in groups if g not in AUGMENT_GROUPS]
    if unknown:
        raise ConfigError(
            f"augmentation '{name}' has unknown group(s) " + ", ".join(f"'{g}'" for g in unknown),
            fix=fix,
        )
    return kind, groups


# ---------------------------------------------------------------- parameter draws (CPU)


def _uniform(g: torch.Generator | None, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)


def _randint(g: torch.Generator | None, high: torch.Tensor | int, n: int) -> torch.Tensor:
    """Integers uniform in ``[0, high)`` (``high`` may be per image)."""
    u = torch.rand(n, generator=g, dtype=torch.float64)
    return torch.floor(u * torch.as_tensor(high, dtype=torch.float64)).long()


def _d4_table() -> torch.Tensor:
    """``table[k, f, t]``: the :data:`DIHEDRAL` code of rot90 ``k``, cv2 flip ``f``, transpose ``t``.

    ``f``: 0 none, 1 both axes (cv2 code -1), 2 vertical (0), 3 horizontal (1).
    """
    tile = torch.arange(4).reshape(2, 2)
    code_of = {
        tuple(dihedral(tile, k, f).flatten().tolist()): c for c, (k, f) in enumerate(DIHEDRAL)
    }
    flips = (lambda t: t, lambda t: t.flip(-2, -1), lambda t: t.flip(-2), lambda t: t.flip(-1))
    table = torch.empty(4, 4, 2, dtype=torch.long)
    for k in range(4):
        for f, flip in enumerate(flips):
            for t in range(2):
                y = flip(torch.rot90(tile, k, dims=(-2, -1)))
                y = y.transpose(-2, -1) if t else y
                table[k, f, t] = code_of[tuple(y.flatten().tolist())]
    return table


_D4 = _d4_table()


def _draw_flip(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """RandomRotate90 (``k`` uniform in 0..3), Flip (both / vertical / horizontal), Transpose."""
    rot90 = torch.rand(n, generator=g) < p
    k = _randint(g, 4, n) * rot90
    flip = torch.rand(n, generator=g) < p
    d = torch.where(flip, _randint(g, 3, n) + 1, 0)
    transpose = torch.rand(n, generator=g) < p
    return {
        "rot90": rot90,
        "k": k,
        "flip": flip,
        "d": d,
        "transpose": transpose,
        "code": _D4[k, d, transpose.long()],
    }


def _draw_crop(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """RandomResizedCrop(scale=(0.5, 1), ratio=(3/4, 4/3)): 10 tries, else the whole image."""
    area = float(side * side)
    scale = _uniform(g, 0.5, 1.0, n, 10)
    ratio = torch.exp(_uniform(g, math.log(3 / 4), math.log(4 / 3), n, 10))
    w = torch.round(torch.sqrt(scale * area * ratio)).long()
    h = torch.round(torch.sqrt(scale * area / ratio)).long()
    ok = (w > 0) & (w <= side) & (h > 0) & (h <= side)
    first = ok.long().argmax(1, keepdim=True)
    found = ok.any(1)

    def pick(t: torch.Tensor, default: float) -> torch.Tensor:
        return torch.where(found, t.gather(1, first)[:, 0], torch.as_tensor(default, dtype=t.dtype))

    w, h = pick(w, side), pick(h, side)
    return {
        "top": _randint(g, side - h + 1, n),
        "left": _randint(g, side - w + 1, n),
        "h": h,
        "w": w,
        "scale": pick(scale, 1.0),
        "ratio": pick(ratio, 1.0),
    }


def _draw_hsv(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """HueSaturationValue: hue ±20 of OpenCV's 180 (±40°), saturation ±30/255, value ±20/255."""
    return {
        "hue": _uniform(g, -20, 20, n),
        "sat": _uniform(g, -30, 30, n),
        "val": _uniform(g, -20, 20, n),
    }


def _draw_channel_shuffle(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """ChannelShuffle: a uniform permutation of the 3 channels (identity included)."""
    return {"perm": torch.argsort(torch.rand(n, 3, generator=g), dim=1)}


def _draw_rgb_shift(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """RGBShift: each channel shifted by U(-20, 20)/255."""
    return {"shift": _uniform(g, -20 / 255, 20 / 255, n, 3)}


def _draw_contrast(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """RandomContrast(limit=0.2): pixel × alpha, alpha in 1 ± 0.2."""
    return {"alpha": 1.0 + _uniform(g, -0.2, 0.2, n)}


def _draw_gamma(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """RandomGamma(gamma_limit=(80, 120)): x ** gamma, gamma in [0.8, 1.2]."""
    return {"gamma": _uniform(g, 80, 120, n) / 100}


def _draw_brightness(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """RandomBrightness(limit=0.2): x + beta, beta in ±0.2 of the maximum (1)."""
    return {"beta": _uniform(g, -0.2, 0.2, n)}


def _draw_iaa_noise(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """IAAAdditiveGaussianNoise(scale=(0.01, 0.05) × 255): one field shared by the channels."""
    return {
        "sigma": _uniform(g, 0.01, 0.05, n),
        "noise": torch.randn(n, 1, side, side, generator=g),
    }


def _draw_gauss_noise(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """GaussNoise(var_limit=(10, 50)) on 0..255: sigma = sqrt(var)/255, per channel."""
    return {
        "sigma": torch.sqrt(_uniform(g, 10, 50, n)) / 255,
        "noise": torch.randn(n, 3, side, side, generator=g),
    }


def _draw_ksize(n: int, g: torch.Generator | None) -> torch.Tensor:
    return 3 + 2 * _randint(g, 3, n)  # blur_limit=7: 3, 5 or 7


def _draw_motion_blur(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """MotionBlur: a line between two random points of a k×k box (k in 3, 5, 7), normalised.

    The line is rasterised by DDA with the points rounded to pixels; cv2.line (Bresenham) can
    differ by a pixel where the line passes exactly between two.
    """
    k = _draw_ksize(n, g)
    xs, xe = _randint(g, k, n), _randint(g, k, n)
    ys = _randint(g, k, n)
    ye_any = _randint(g, k, n)
    ye_other = (ys + 1 + _randint(g, k - 1, n)) % k  # distinct from ys (random.sample)
    ye = torch.where(xs == xe, ye_other, ye_any)
    steps = torch.maximum((xe - xs).abs(), (ye - ys).abs()).clamp_min(1)
    t = torch.minimum(torch.arange(7)[None], steps[:, None]).double() / steps[:, None]
    px = torch.floor(xs[:, None] + t * (xe - xs)[:, None] + 0.5).long()
    py = torch.floor(ys[:, None] + t * (ye - ys)[:, None] + 0.5).long()
    off = ((7 - k) // 2)[:, None]
    kernel = torch.zeros(n, 49)
    kernel.scatter_(1, (py + off) * 7 + px + off, 1.0)
    kernel = kernel.reshape(n, 7, 7)
    return {"ksize": k, "kernel": kernel / kernel.sum((1, 2), keepdim=True)}


def _draw_median_blur(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """MedianBlur: k in 3, 5, 7."""
    return {"ksize": _draw_ksize(n, g)}


def _draw_blur(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """Blur: box filter, k in 3, 5, 7."""
    return {"ksize": _draw_ksize(n, g)}


def _draw_optical(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """OpticalDistortion(distort_limit=0.05, shift_limit=0.05).

    Albumentations 0.4.5 rounds the shift to whole pixels (``round(uniform(-0.05, 0.05))``), so
    it is always 0; kept for the record.
    """
    return {
        "k": _uniform(g, -0.05, 0.05, n),
        "dx": torch.round(_uniform(g, -0.05, 0.05, n)),
        "dy": torch.round(_uniform(g, -0.05, 0.05, n)),
    }


def _draw_grid(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """GridDistortion(num_steps=5, distort_limit=0.3): 6 step factors per axis in 1 ± 0.3."""
    return {
        "xsteps": 1.0 + _uniform(g, -0.3, 0.3, n, 6),
        "ysteps": 1.0 + _uniform(g, -0.3, 0.3, n, 6),
    }


def _draw_piecewise(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """IAAPiecewiseAffine(scale=(0.03, 0.05), 4×4 points): N(0, scale × side) jitter, clipped."""
    sigma = _uniform(g, 0.03, 0.05, n)
    jitter = torch.randn(n, 4, 4, 2, generator=g, dtype=torch.float64) * sigma[:, None, None, None]
    src = _piecewise_points(side)
    dest = (src[None] + jitter * side).clamp(0, side - 1)
    return {"sigma": sigma, "dest": dest}


def _draw_shift_scale_rotate(n: int, side: int, g: torch.Generator | None, p: float) -> Params:
    """ShiftScaleRotate(shift_limit=0.0625, scale_limit=0.1, rotate_limit=45)."""
    return {
        "angle": _uniform(g, -45, 45, n),
        "scale": _uniform(g, 0.9, 1.1, n),
        "dx": _uniform(g, -0.0625, 0.0625, n),
        "dy": _uniform(g, -0.0625, 0.0625, n),
    }


def _piecewise_points(side: int) -> torch.Tensor:
    """Return imgaug's 4×4 PiecewiseAffine source points ``(x, y)``: ``linspace(0, side, 4)``."""
    c = torch.linspace(0, side, 4, dtype=torch.float64)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack((xx, yy), -1)


# ---------------------------------------------------------------- application (batch device)


def _on(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Float parameter ``t`` on ``x``'s device and dtype, broadcastable against ``(n, C, H, W)``."""
    t = t.to(device=x.device, dtype=x.dtype, non_blocking=True)
    return t.reshape(t.shape + (1,) * (4 - t.dim())) if t.dim() < 4 else t


def _remap(x: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, padding: str) -> torch.Tensor:
    """``out[..., v, u] = x[..., sy[v, u], sx[v, u]]``, bilinear, pixel coordinates (cv2.remap).

    ``padding="reflection"`` reflects about the edge pixels' centres (cv2 BORDER_REFLECT_101),
    ``"border"`` replicates them.
    """
    h, w = x.shape[-2:]
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
    grid = torch.stack((sx * (2.0 / (w - 1)) - 1.0, sy * (2.0 / (h - 1)) - 1.0), -1)
    out = F.grid_sample(
        xf, grid.to(xf.dtype), mode="bilinear", padding_mode=padding, align_corners=True
    )
    return out.to(x.dtype)


def _pixels(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and row coordinates ``(1, 1, W)`` and ``(1, H, 1)`` of ``x``'s pixels (float32)."""
    h, w = x.shape[-2:]
    u = torch.arange(w, device=x.device, dtype=torch.float32).reshape(1, 1, w)
    v = torch.arange(h, device=x.device, dtype=torch.float32).reshape(1, h, 1)
    return u, v


def _col(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image parameter ``(n,)`` as float32 ``(n, 1, 1)`` on ``x``'s device."""
    return t.to(x.device, torch.float32)[:, None, None]


def _apply_flip(x: torch.Tensor, prm: Params) -> torch.Tensor:
    out = x.clone()
    code = prm["code"]
    for c in torch.unique(code).tolist():
        if c == 0:
            continue
        idx = torch.nonzero(code == c).flatten().to(x.device)
        out.index_copy_(0, idx, dihedral(x.index_select(0, idx), *DIHEDRAL[c]))
    return out


def _apply_crop(x: torch.Tensor, prm: Params) -> torch.Tensor:
    """Crop ``(top, left, h, w)`` resized back to ``x``'s size like cv2.resize INTER_LINEAR."""
    n, _, side, _ = x.shape
    o = torch.arange(side, device=x.device, dtype=torch.float64)[None] + 0.5

    def axis(start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        length = length.to(x.device, torch.float64)[:, None]
        s = torch.minimum((o * length / side - 0.5).clamp_min(0), length - 1)
        return s + start.to(x.device, torch.float64)[:, None]

    sx = axis(prm["left"], prm["w"])[:, None, :].expand(n, side, side)
    sy = axis(prm["top"], prm["h"])[:, :, None].expand(n, side, side)
    return _remap(x, sx, sy, "border")


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue (turns, ``[0, 1)``), saturation and value of ``(n, 3, H, W)`` RGB in ``[0, 1]``."""
    r, g, b = x.unbind(1)
    maxc = x.amax(1)
    delta = maxc - x.amin(1)
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), 0.0)
    dc = delta.clamp_min(1e-12)
    h = torch.where(
        maxc == r, (g - b) / dc, torch.where(maxc == g, 2.0 + (b - r) / dc, 4.0 + (r - g) / dc)
    )
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), 0.0)
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    h6 = h.unsqueeze(1) * 6.0
    n = torch.tensor([5.0, 3.0, 1.0], device=h.device, dtype=h.dtype).reshape(1, 3, 1, 1)
    k = torch.remainder(n + h6, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return v.unsqueeze(1) * (1.0 - s.unsqueeze(1) * ramp)


def _apply_hsv(x: torch.Tensor, prm: Params) -> torch.Tensor:
    h, s, v = _rgb_to_hsv(x)
    h = torch.remainder(h + _on(prm["hue"], x)[:, 0] / 180.0, 1.0)
    s = (s + _on(prm["sat"], x)[:, 0] / 255.0).clamp(0.0, 1.0)
    v = (v + _on(prm["val"], x)[:, 0] / 255.0).clamp(0.0, 1.0)
    return _hsv_to_rgb(h, s, v).clamp(0.0, 1.0)


def _apply_channel_shuffle(x: torch.Tensor, prm: Params) -> torch.Tensor:
    perm = prm["perm"].to(x.device)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
    return torch.gather(x, 1, perm)


def _apply_rgb_shift(x: torch.Tensor, prm: Params) -> torch.Tensor:
    return (x + _on(prm["shift"], x)).clamp(0.0, 1.0)


def _apply_contrast(x: torch.Tensor, prm: Params) -> torch.Tensor:
    return (x * _on(prm["alpha"], x)).clamp(0.0, 1.0)


def _apply_gamma(x: torch.Tensor, prm: Params) -> torch.Tensor:
    return x.clamp(0.0, 1.0).pow(_on(prm["gamma"], x))


def _apply_brightness(x: torch.Tensor, prm: Params) -> torch.Tensor:
    return (x + _on(prm["beta"], x)).clamp(0.0, 1.0)


def _apply_noise(x: torch.Tensor, prm: Params) -> torch.Tensor:
    return (x + _on(prm["sigma"], x) * _on(prm["noise"], x)).clamp(0.0, 1.0)


def _by_ksize(x: torch.Tensor, prm: Params, fn: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Apply ``fn(sub, k, sel)`` to the images of each kernel size ``k``."""
    out = torch.empty_like(x)
    ksize = prm["ksize"]
    for k in torch.unique(ksize).tolist():
        sel = torch.nonzero(ksize == k).flatten()
        idx = sel.to(x.device)
        out.index_copy_(0, idx, fn(x.index_select(0, idx), int(k), sel))
    return out


def _apply_motion_blur(x: torch.Tensor, prm: Params) -> torch.Tensor:
    """cv2.filter2D (correlation, BORDER_REFLECT_101) with one kernel per image, grouped conv."""

    def conv(sub: torch.Tensor, k: int, sel: torch.Tensor) -> torch.Tensor:
        m, c, h, w = sub.shape
        off, r = (7 - k) // 2, k // 2
        kern = prm["kernel"][sel][:, off : off + k, off : off + k]
        weight = kern.to(sub.device, sub.dtype).repeat_interleave(c, 0).unsqueeze(1)  # (m*c,1,k,k)
        xp = F.pad(sub, (r, r, r, r), mode="reflect").reshape(1, m * c, h + 2 * r, w + 2 * r)
        return F.conv2d(xp, weight, groups=m * c).reshape(m, c, h, w)

    return _by_ksize(x, prm, conv)


def _apply_blur(x: torch.Tensor, prm: Params) -> torch.Tensor:
    """cv2.blur: k×k box mean, BORDER_REFLECT_101."""

    def box(sub: torch.Tensor, k: int, sel: torch.Tensor) -> torch.Tensor:
        r = k // 2
        return F.avg_pool2d(F.pad(sub, (r, r, r, r), mode="reflect"), k, stride=1)

    return _by_ksize(x, prm, box)


def _median(x: torch.Tensor, k: int) -> torch.Tensor:
    """Exact k×k median (cv2.medianBlur, replicated border), in chunks of bounded memory."""
    n, c, h, w = x.shape
    r = k // 2
    out = torch.empty_like(x)
    chunk = max(1, _MEDIAN_ELEMENTS // (c * h * w * k * k))
    for s in range(0, n, chunk):
        xp = F.pad(x[s : s + chunk], (r, r, r, r), mode="replicate")
        win = xp.unfold(2, k, 1).unfold(3, k, 1).reshape(xp.shape[0], c, h, w, k * k)
        out[s : s + chunk] = win.median(-1).values
    return out


def _apply_median_blur(x: torch.Tensor, prm: Params) -> torch.Tensor:
    return _by_ksize(x, prm, lambda sub, k, sel: _median(sub, k))


def _apply_optical(x: torch.Tensor, prm: Params) -> torch.Tensor:
    """cv2.initUndistortRectifyMap with k1 = k2 = k, fx = W, fy = H, then cv2.remap.

    The new camera matrix OpenCV defaults to centres the destination on ``(W-1)/2``, the source
    on ``W/2 + dx``: exactly as Albumentations' ``optical_distortion``.
    """
    n, _, h, w = x.shape
    u, v = _pixels(x)
    k = _col(prm["k"], x)
    xd = (u - (w - 1) / 2) / w
    yd = (v - (h - 1) / 2) / h
    r2 = xd * xd + yd * yd
    f = 1 + k * r2 + k * r2 * r2
    sx = w * xd * f + w / 2 + _col(prm["dx"], x)
    sy = h * yd * f + h / 2 + _col(prm["dy"], x)
    return _remap(x, sx, sy, "reflection")


def _grid_axis(steps: torch.Tensor, size: int, num_steps: int = 5) -> torch.Tensor:
    """Albumentations' ``grid_distortion`` map along one axis: ``(n, num_steps + 1)`` → ``(n, size)``."""
    n = steps.shape[0]
    step = size // num_steps
    out = torch.zeros(n, size, dtype=torch.float64, device=steps.device)
    prev = torch.zeros(n, dtype=torch.float64, device=steps.device)
    for i in range(num_steps + 1):
        start, end = i * step, i * step + step
        if end > size:
            end = size
            cur = torch.full_like(prev, float(size))
        else:
            cur = prev + step * steps[:, i]
        m = end - start
        if m > 0:  # np.linspace(prev, cur, m)
            t = torch.arange(m, dtype=torch.float64, device=steps.device) / max(m - 1, 1)
            out[:, start:end] = prev[:, None] + (cur - prev)[:, None] * t[None]
        prev = cur
    return out


def _apply_grid(x: torch.Tensor, prm: Params) -> torch.Tensor:
    n, _, h, w = x.shape
    xx = _grid_axis(prm["xsteps"].to(x.device), w)
    yy = _grid_axis(prm["ysteps"].to(x.device), h)
    return _remap(x, xx[:, None, :].expand(n, h, w), yy[:, :, None].expand(n, h, w), "reflection")


def _apply_piecewise(x: torch.Tensor, prm: Params) -> torch.Tensor:
    """Piecewise-affine warp of the 4×4 point grid: each cell split into two triangles.

    imgaug triangulates the grid with scipy's Delaunay, whose diagonal in each (square) cell is
    arbitrary; here it is always the anti-diagonal. Output pixel ``p`` samples the input at the
    affine image of ``p`` (skimage.transform.warp with the estimated transform).
    """
    n, _, h, w = x.shape
    dest = prm["dest"].to(x.device, torch.float32)  # (n, 4, 4, 2): (x, y) of the jittered points
    u, v = _pixels(x)
    cu, cv = u.flatten() / (w / 3), v.flatten() / (h / 3)
    j, i = cu.floor().clamp(0, 2).long(), cv.floor().clamp(0, 2).long()
    fu, fv = (cu - j)[None, None, :, None], (cv - i)[None, :, None, None]
    ii, jj = i[:, None], j[None, :]
    d00, d01 = dest[:, ii, jj], dest[:, ii, jj + 1]
    d10, d11 = dest[:, ii + 1, jj], dest[:, ii + 1, jj + 1]
    lower = d00 + fu * (d01 - d00) + fv * (d10 - d00)
    upper = d11 + (1 - fu) * (d10 - d11) + (1 - fv) * (d01 - d11)
    p = torch.where(fu + fv <= 1, lower, upper)
    return _remap(x, p[..., 0], p[..., 1], "reflection")


def _apply_shift_scale_rotate(x: torch.Tensor, prm: Params) -> torch.Tensor:
    """cv2.warpAffine of cv2.getRotationMatrix2D((W/2, H/2), angle, scale) + (dx W, dy H)."""
    n, _, h, w = x.shape
    u, v = _pixels(x)
    theta, s = torch.deg2rad(prm["angle"]), prm["scale"]
    a, b = s * torch.cos(theta), s * torch.sin(theta)
    cx, cy = w / 2, h / 2
    tx = (1 - a) * cx - b * cy + prm["dx"] * w
    ty = b * cx + (1 - a) * cy + prm["dy"] * h
    s2 = s * s  # inverse of [[a, b], [-b, a]] is [[a, -b], [b, a]] / s2
    ia, ib = _col(a / s2, x), _col(b / s2, x)
    du, dv = u - _col(tx, x), v - _col(ty, x)
    return _remap(x, ia * du - ib * dv, ib * du + ia * dv, "reflection")


_OPS: dict[str, tuple[Callable[..., Params], Callable[[torch.Tensor, Params], torch.Tensor]]] = {
    "flip": (_draw_flip, _apply_flip),
    "crop": (_draw_crop, _apply_crop),
    "hsv": (_draw_hsv, _apply_hsv),
    "channel_shuffle": (_draw_channel_shuffle, _apply_channel_shuffle),
    "rgb_shift": (_draw_rgb_shift, _apply_rgb_shift),
    "contrast": (_draw_contrast, _apply_contrast),
    "gamma": (_draw_gamma, _apply_gamma),
    "brightness": (_draw_brightness, _apply_brightness),
    "iaa_noise": (_draw_iaa_noise, _apply_noise),
    "gauss_noise": (_draw_gauss_noise, _apply_noise),
    "motion_blur": (_draw_motion_blur, _apply_motion_blur),
    "median_blur": (_draw_median_blur, _apply_median_blur),
    "blur": (_draw_blur, _apply_blur),
    "optical": (_draw_optical, _apply_optical),
    "grid": (_draw_grid, _apply_grid),
    "piecewise": (_draw_piecewise, _apply_piecewise),
    "shift_scale_rotate": (_draw_shift_scale_rotate, _apply_shift_scale_rotate),
}


class DeepSpaceAugment(nn.Module):
    """DeepSpaCE's training augmentation (Albumentations 0.4.5) with per-image parameters.

    The groups of DeepSpaCE's ``--augmentation`` are applied in the given order, each transform
    with its own parameters and its own ``p = 0.5`` draw for every image:

    * ``flip``: RandomRotate90, Flip (horizontal, vertical or both), Transpose — composed into one
      of the 8 dihedral elements per image;
    * ``crop``: RandomResizedCrop (area 0.5–1, aspect 3/4–4/3, integer box as Albumentations,
      resized back with cv2's half-pixel bilinear);
    * ``color``: HueSaturationValue (hue ±40°, saturation ±30/255, value ±20/255),
      ChannelShuffle, RGBShift (±20/255 per channel);
    * ``contrast``: RandomContrast (× 1 ± 0.2), RandomGamma (0.8–1.2), RandomBrightness (± 0.2);
    * ``noise``: one of IAAAdditiveGaussianNoise (sigma 0.01–0.05, shared by the channels) and
      GaussNoise (variance 10–50 on 0–255, per channel);
    * ``blur``: one of MotionBlur, MedianBlur (exact) and Blur, kernel 3, 5 or 7;
    * ``dist``: one of OpticalDistortion, GridDistortion, IAAPiecewiseAffine and
      ShiftScaleRotate, reflected border;
    * ``random``: one of noise, blur and dist, always applied.

    Every parameter (noise fields included) is drawn on the CPU from the generator passed to
    :meth:`forward` (:meth:`plan`), so results do not depend on the device; the transforms run
    vectorised on the batch's device (loops only over transforms, kernel sizes, dihedral
    elements and chunks of the median). Each transform clips to ``[0, 1]`` like the uint8 LUTs.

    Departures from the original (Albumentations works on uint8 images with OpenCV): no 8-bit
    rounding between transforms, and HSV in float (OpenCV's 8-bit HSV quantises hue to 2°); the
    motion-blur line is rasterised by DDA (cv2.line's Bresenham can differ by a pixel at ties);
    the piecewise-affine grid always uses the same diagonal per cell (scipy's Delaunay choice on
    a regular grid is arbitrary); the crop's top-left corner is used as drawn (0.4.5's
    ``h_start`` arithmetic can move it by a pixel); the optional resize (``size``) is
    antialiased (cv2 INTER_LINEAR is not). Kept as in the original: OpticalDistortion's shift
    rounds to 0 px and OpenCV's default new camera matrix shifts the image by half a pixel;
    GridDistortion's uneven last cell; the dihedral elements are not uniform (each of the three
    flips has p = 0.5).

    Parameters
    ----------
    groups
        Group names (:data:`AUGMENT_GROUPS`) in order; :data:`DEEPSPACE_GROUPS` by default; empty
        for none.
    size
        Resize square inputs to this side first (DeepSpaCE's ``Resize(224)``); ``None`` keeps it.
    p
        Probability of each optional transform (0.5 in DeepSpaCE).
    """

    def __init__(
        self, groups: Sequence[str] = DEEPSPACE_GROUPS, size: int | None = None, p: float = 0.5
    ) -> None:
        super().__init__()
        if isinstance(groups, str):
            raise TypeError("groups must be a sequence of group names, not a string")
        unknown = [g for g in groups if g not in AUGMENT_GROUPS]
        if unknown:
            raise ConfigError(
                f"unknown augmentation group(s) {unknown}", fix="use " + ", ".join(AUGMENT_GROUPS)
            )
        self.groups = tuple(groups)
        self.size = size
        self.p = float(p)

    def extra_repr(self) -> str:
        """Describe the groups, size and p."""
        return f"groups={','.join(self.groups) or 'none'}, size={self.size}, p={self.p}"

    def plan(
        self, batch: int, side: int, generator: torch.Generator | None = None
    ) -> list[AugmentStep]:
        """Draw every transform and parameter for ``batch`` images of side ``side`` (on the CPU).

        Returns the steps in the order they are applied; :meth:`apply` runs them.
        """
        steps: list[AugmentStep] = []
        everyone = torch.arange(batch)
        for group in self.groups:
            for slot in _GROUP_SLOTS[group]:
                self._plan_slot(slot, everyone, side, generator, steps)
        return steps

    def _plan_slot(
        self,
        slot: Any,
        idx: torch.Tensor,
        side: int,
        g: torch.Generator | None,
        steps: list[AugmentStep],
    ) -> None:
        if isinstance(slot, tuple):  # ("oneof", members): one member per image, uniformly
            members = slot[1]
            choice = _randint(g, len(members), len(idx))
            for j, member in enumerate(members):
                self._plan_slot(member, idx[choice == j], side, g, steps)
            return
        if slot in _HALF:
            idx = idx[torch.rand(len(idx), generator=g) < self.p]
        steps.append(AugmentStep(slot, idx, _OPS[slot][0](len(idx), side, g, self.p)))

    @staticmethod
    def apply(x: torch.Tensor, steps: Sequence[AugmentStep]) -> torch.Tensor:
        """Run the steps of a :meth:`plan` on ``x`` ``(B, 3, H, W)`` (not modified in place)."""
        out, owned = x, False
        for step in steps:
            n = step.idx.numel()
            if n == 0:
                continue
            fn = _OPS[step.op][1]
            if n == x.shape[0]:  # the sorted indices are the whole batch
                new = fn(out, step.params)
                owned = owned or new is not out
                out = new
                continue
            idx = step.idx.to(x.device)
            new = fn(out.index_select(0, idx), step.params)
            if not owned:
                out, owned = out.clone(), True
            out.index_copy_(0, idx, new)
        return out.clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment float images ``(B, 3, H, W)`` in ``[0, 1]`` (square, at least 8 px).

        Parameters
        ----------
        x
            Batch on any device.
        generator
            CPU generator of every random draw (the default generator when ``None``).
        """
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-1] != x.shape[-2] or x.shape[-1] < 8:
            raise ValueError(
                f"DeepSpaceAugment needs square RGB images (B, 3, S, S) with S >= 8, "
                f"got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"DeepSpaceAugment needs float images in [0, 1], got {x.dtype}")
        if self.size and self.size != x.shape[-1]:
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        return self.apply(x, self.plan(x.shape[0], x.shape[-1], generator))


def make_augment(name: str, size: int | None = None) -> nn.Module | None:
    """Return the augmentation module for a ``train.augmentation`` value (:func:`parse_augmentation`).

    ``none`` gives ``None``; ``dihedral`` a random D4 element per image; ``deepspace`` and
    ``deepspace:<groups>`` a :class:`DeepSpaceAugment` (``size``: its optional first resize).
    Modules are called as ``module(x, generator)``.

    Raises
    ------
    ConfigError
        Unknown name or group.
    """
    kind, groups = parse_augmentation(name)
    if kind == "none":
        return None
    if kind == "dihedral":
        return _Dihedral()
    return DeepSpaceAugment(groups, size=size)


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
    closed). For a :class:`~stpredict.learn.models.PatchModel` the embeddings are averaged (in fp32) and
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
