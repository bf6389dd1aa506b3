"""Non-tissue textures: the demo's irrelevant images (DeepSpaCE's ImageNet negative control).

DeepSpaCE pseudo-labelled pictures of dogs and cats as a control: images that carry none of the
morphology that links H&E to expression. The demo draws deterministic textures instead (stripes,
checks, bricks, dots, marbled noise, in colours far from haematoxylin and eosin), from the demo
seed and the image's name only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from stpredict.demo.tissue import rng_for

__all__ = ["KINDS", "render_texture"]

#: texture kinds, cycled over the irrelevant images
KINDS = ("stripes", "checks", "bricks", "dots", "marble")


def _palette(rng: np.random.Generator) -> np.ndarray:
    """Two saturated colours, greens / oranges / blues (not H&E's purple and pink)."""
    hues = rng.choice(
        np.array([[40, 150, 60], [230, 140, 30], [40, 90, 200], [200, 200, 40]]), 2, replace=False
    )
    return np.clip(hues + rng.integers(-25, 26, size=(2, 3)), 0, 255).astype(np.float64)


def _coords(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    return xx * np.cos(angle) + yy * np.sin(angle), -xx * np.sin(angle) + yy * np.cos(angle)


def _mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw a pattern in [0, 1] of shape ``(size, size)``."""
    u, v = _coords(size, rng)
    period = rng.uniform(18.0, 60.0)
    if kind == "stripes":
        return 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
    if kind == "checks":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float64)
    if kind == "bricks":
        row = np.floor(v / period)
        shifted = u + (row % 2) * period
        mortar = (np.mod(v, period) < period * 0.15) | (np.mod(shifted, 2 * period) < period * 0.15)
        return (~mortar).astype(np.float64)
    if kind == "dots":
        cu, cv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        return (np.hypot(cu, cv) < period * 0.3).astype(np.float64)
    noise = ndi.gaussian_filter(rng.standard_normal((size, size)), sigma=period / 3)
    noise = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-9)
    return 0.5 + 0.5 * np.sin(2 * np.pi * (u / (4 * period) + 3 * noise))


def render_texture(seed: int, name: str, size: int, index: int) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 texture, deterministic in ``(seed, name)``.

    ``index`` chooses the kind (cycling through :data:`KINDS`), so a set of images shows several.
    """
    rng = rng_for(seed, f"irrelevant/{name}")
    kind = KINDS[index % len(KINDS)]
    m = _mask(kind, size, rng)[..., None]
    a, b = _palette(rng)
    rgb = a * m + b * (1 - m) + rng.normal(0, 6, size=(size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)
