"""Crop geometry of the patches: field of view, crop windows, padding and resizing.

Geometry
--------
A centre ``(x, y)`` in full-resolution pixels (``x`` = column, ``y`` = row) is first rounded to the
nearest integer pixel (halves round up: ``floor(v + 0.5)``). For a crop of ``c`` pixels and
``r = c // 2`` the crop is ``image[y - r : y - r + c, x - r : x - r + c]``: for even ``c`` the
centre pixel is the first of the lower half (the crop spans ``r`` pixels before the centre and
``r - 1`` after it), for odd ``c`` it is the middle pixel. Pixels outside the image are filled
with ``pad_value`` and the share of the crop that lies outside is recorded as ``pad_frac``.
When ``c`` differs from the stored size ``S`` the crops are resized in batches with bilinear
interpolation and antialiasing (``torch.nn.functional.interpolate``, on CPU).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stpredict.errors import ConfigError

__all__ = [
    "PatchSpec",
    "STNET",
    "DEEPSPACE",
    "deepspace_crop_px",
    "crop_windows",
    "resize_batch",
]


def deepspace_crop_px(mpp: float, spot_radius_um: float = 27.5, factor: float = 2.5) -> int:
    """Crop side of DeepSpaCE's paper rule: ``2 * ceil(r_px * factor)``.

    Parameters
    ----------
    mpp
        Microns per pixel of the full-resolution image.
    spot_radius_um
        Visium spot radius in µm (55 µm diameter).
    factor
        Multiple of the spot radius taken as the half-width (DeepSpaCE: 2.5).

    Returns
    -------
    int
        The crop side in pixels; the half-width is ``ceil(spot_radius_um / mpp * factor)``,
        i.e. a square of about ``2 * 2.5 * 27.5 = 137.5`` µm.
    """
    if not mpp or mpp <= 0:
        raise ConfigError(
            f"pixel size must be positive, got {mpp!r}", fix="check the section's mpp"
        )
    r_px = spot_radius_um / mpp
    return 2 * math.ceil(r_px * factor)


@dataclass(frozen=True)
class PatchSpec:
    """Field of view and stored size of the patches.

    Parameters
    ----------
    fov_um
        Side of the square field of view in µm (the crop side becomes ``round(fov_um / mpp)``).
    fov_px
        Side of the crop in full-resolution pixels (independent of the pixel size).
    size_px
        Side of the stored patch in pixels; crops of another size are resized to it.
    pad_value
        Fill value (0-255) for the part of a crop that lies outside the image.

    Notes
    -----
    Exactly one of ``fov_um`` and ``fov_px`` must be given. Presets: :data:`STNET`
    (224 px crops, no resizing) and :data:`DEEPSPACE` (137.5 µm resized to 224 px);
    :meth:`deepspace_paper` reproduces DeepSpaCE's rounding (``2 * ceil(27.5 / mpp * 2.5)``).
    """

    fov_um: float | None = None
    fov_px: int | None = None
    size_px: int = 224
    pad_value: int = 255

    def __post_init__(self) -> None:
        if (self.fov_um is None) == (self.fov_px is None):
            raise ConfigError(
                f"patch spec needs exactly one of fov_um and fov_px (got fov_um={self.fov_um}, "
                f"fov_px={self.fov_px})",
                fix="set either patches.fov_um (µm) or patches.fov_px (pixels) in the config",
            )
        if self.fov_um is not None and not self.fov_um > 0:
            raise ConfigError(f"fov_um must be > 0, got {self.fov_um}")
        if self.fov_px is not None and int(self.fov_px) < 1:
            raise ConfigError(f"fov_px must be >= 1, got {self.fov_px}")
        if int(self.size_px) < 1:
            raise ConfigError(f"size_px must be >= 1, got {self.size_px}")
        if not 0 <= int(self.pad_value) <= 255:
            raise ConfigError(f"pad_value must be in 0..255, got {self.pad_value}")

    def crop_px(self, mpp: float | None = None) -> int:
        """Side of the full-resolution crop in pixels for an image of ``mpp`` µm/px."""
        if self.fov_px is not None:
            return int(self.fov_px)
        if mpp is None or not mpp > 0:
            raise ConfigError(
                f"a field of view in µm ({self.fov_um}) needs the pixel size, got mpp={mpp!r}",
                fix="give the section's mpp (sample sheet column 'mpp' or the reader's estimate) "
                "or set patches.fov_px instead",
            )
        return max(1, int(round(self.fov_um / mpp)))

    @classmethod
    def stnet(cls) -> PatchSpec:
        """ST-Net: 224 x 224 px at full resolution, no resizing."""
        return cls(fov_px=224, size_px=224)

    @classmethod
    def deepspace(cls) -> PatchSpec:
        """DeepSpaCE field of view expressed in µm: 137.5 µm resized to 224 px."""
        return cls(fov_um=137.5, size_px=224)

    @classmethod
    def deepspace_paper(cls, mpp: float) -> PatchSpec:
        """DeepSpaCE's exact pixel rule for this ``mpp`` (see :func:`deepspace_crop_px`)."""
        return cls(fov_px=deepspace_crop_px(mpp), size_px=224)

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as a JSON-serialisable dict."""
        return asdict(self)


STNET = PatchSpec.stnet()


DEEPSPACE = PatchSpec.deepspace()


def crop_windows(xy: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners ``(x0, y0)`` of the crops centred on ``xy`` (see the module notes)."""
    xy = np.asarray(xy, dtype=np.float64)
    centre = np.floor(xy + 0.5).astype(np.int64)
    r = crop // 2
    return centre[:, 0] - r, centre[:, 1] - r


def _pad_fraction(x0: np.ndarray, y0: np.ndarray, crop: int, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    ix = np.clip(np.minimum(x0 + crop, w) - np.maximum(x0, 0), 0, None)
    iy = np.clip(np.minimum(y0 + crop, h) - np.maximum(y0, 0), 0, None)
    return 1.0 - (ix * iy) / float(crop * crop)


#: below this many input pixels in a section, crops are resized with PIL: importing torch
#: (≈ 3 s) would cost more than its faster kernel saves
TORCH_RESIZE_MIN_PIXELS = 50_000_000


def resize_batch(crops: np.ndarray, size: int, backend: str = "torch") -> np.ndarray:
    """Resize ``(k, c, c, 3)`` uint8 crops to ``(k, size, size, 3)`` (bilinear, antialiased).

    ``backend="torch"`` uses torch's uint8 channels-last kernel (``interpolate(mode="bilinear",
    antialias=True)``, the same filter as PIL's ``BILINEAR`` reduce); ``"pil"`` resizes crop by
    crop with PIL. Both agree with the float computation rounded to the nearest integer within
    1 grey level (and with each other within 1).
    """
    if crops.shape[1] == size and crops.shape[2] == size:
        return crops
    if backend == "pil":
        from PIL import Image

        out = np.empty((len(crops), size, size, 3), dtype=np.uint8)
        for i, c in enumerate(crops):
            out[i] = np.asarray(
                Image.fromarray(np.ascontiguousarray(c)).resize((size, size), Image.BILINEAR)
            )
        return out
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)  # channels-last view
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return np.ascontiguousarray(out.permute(0, 2, 3, 1).numpy())
