"""Opening H&E / IHC images and reading regions of them without decoding a whole slide.

TIFFs (tiled, pyramidal, OME or plain) are read by region through tifffile's zarr store, so a
25k x 25k slide is never decoded whole; JPEG and PNG files are decoded once and cached. Every
image is validated on opening: it must be 8-bit RGB. Grey, RGBA, palette and 16-bit images are
refused with a message that names the file, the sample and how to convert it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from stpredict.errors import InputError

__all__ = ["SlideImage", "open_image", "TIFF_SUFFIXES"]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".svs", ".ome.tif", ".ome.tiff")
_CONVERT_FIX = (
    "convert it to 8-bit RGB, e.g. `python -c \"from PIL import Image; "
    "Image.open('in').convert('RGB').save('out.tif')\"` or `vips colourspace in.tif out.tif srgb`, "
    "and point the sample sheet's image column at the result"
)


def _is_tiff(path: Path) -> bool:
    return path.name.lower().endswith(TIFF_SUFFIXES)


class SlideImage:
    """A read-only RGB image addressed in full-resolution pixels.

    Parameters
    ----------
    path
        TIFF (any layout), JPEG or PNG file.
    sample
        Sample id, used in error messages only.

    Attributes
    ----------
    shape
        ``(height, width)`` of the full-resolution level, in pixels.
    mpp_tags
        Microns per pixel read from the file's own metadata (TIFF resolution tags, OME
        ``PhysicalSizeX``, Aperio ``MPP``), or ``None`` when the file records none.
    """

    def __init__(self, path: str | os.PathLike[str], sample: str | None = None) -> None:
        self.path = Path(path)
        self.sample = sample
        if not self.path.is_file():
            raise InputError(
                "image file does not exist",
                file=self.path,
                sample=sample,
                fix="check the 'image' column of the sample sheet (paths are relative to the "
                "directory Snakemake runs in)",
            )
        self._array: np.ndarray | None = None
        self._store: Any = None
        self._zarr: Any = None
        self._levels: list[Any] = []
        self.mpp_tags: float | None = None
        if _is_tiff(self.path):
            self._open_tiff()
        else:
            self._open_pil()

    # ------------------------------------------------------------------ opening
    def _fail(self, problem: str, fix: str = _CONVERT_FIX) -> None:
        raise InputError(problem, file=self.path, sample=self.sample, fix=fix)

    def _check_dtype_channels(self, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        if len(shape) == 2 or (len(shape) == 3 and shape[-1] == 1):
            self._fail("image is greyscale (one channel); an RGB H&E image is required")
        if len(shape) != 3:
            self._fail(f"image has an unsupported shape {shape}; expected height x width x 3")
        if shape[-1] == 4:
            self._fail("image is RGBA (4 channels); an RGB image without alpha is required")
        if shape[-1] != 3:
            self._fail(f"image has {shape[-1]} channels; an RGB image (3 channels) is required")
        if np.dtype(dtype) != np.uint8:
            self._fail(f"image is {np.dtype(dtype)} ({np.dtype(dtype).itemsize * 8}-bit); 8-bit RGB is required")

    def _open_tiff(self) -> None:
        import tifffile
        import zarr

        try:
            with tifffile.TiffFile(self.path) as tif:
                series = tif.series[0]
                shape = tuple(int(s) for s in series.shape)
                dtype = series.dtype
                axes = series.axes
                self.mpp_tags = _tiff_mpp(tif)
                n_levels = len(series.levels)
        except (tifffile.TiffFileError, ValueError, OSError) as exc:
            raise InputError(
                f"cannot read TIFF ({exc})", file=self.path, sample=self.sample,
                fix="check that the file is a complete, uncorrupted TIFF",
            ) from exc
        if axes.startswith("S") and len(shape) == 3:  # planar RGB (S, Y, X)
            self._fail("image is stored planar (channels first); interleaved RGB is required")
        self._check_dtype_channels(dtype, shape)
        self.shape = (shape[0], shape[1])
        store = tifffile.imread(self.path, aszarr=True)
        self._store = store
        root = zarr.open(store, mode="r")
        if hasattr(root, "shape"):
            self._levels = [root]
        else:  # multiscale group: keys '0', '1', ...
            self._levels = [root[str(i)] for i in range(n_levels)]
        self._zarr = self._levels[0]

    def _open_pil(self) -> None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(self.path) as im:
                mode = im.mode
                size = im.size
                info = dict(im.info)
        except (OSError, SyntaxError) as exc:
            raise InputError(
                f"cannot read image ({exc})", file=self.path, sample=self.sample,
                fix="give a TIFF, JPEG or PNG file that opens in an image viewer",
            ) from exc
        if mode in ("L", "1", "LA"):
            self._fail("image is greyscale; an RGB H&E image is required")
        if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in info):
            self._fail("image is RGBA (has an alpha channel); an RGB image without alpha is required")
        if mode.startswith("I;16") or mode in ("I", "F"):
            self._fail(f"image is {mode} (16/32-bit); 8-bit RGB is required")
        if mode not in ("RGB", "P", "YCbCr"):
            self._fail(f"image mode {mode} is not supported; 8-bit RGB is required")
        self.shape = (size[1], size[0])
        dpi = info.get("dpi")
        if dpi and dpi[0] and dpi[0] > 1 and abs(dpi[0] - 72) > 1e-6 and abs(dpi[0] - 96) > 1e-6:
            self.mpp_tags = 25400.0 / float(dpi[0])

    # ------------------------------------------------------------------ access
    def to_array(self) -> np.ndarray:
        """Return the whole full-resolution image as ``(H, W, 3)`` uint8 (decoded once, cached)."""
        if self._array is None:
            if self._zarr is not None:
                self._array = np.asarray(self._zarr[...])
            else:
                from PIL import Image

                with Image.open(self.path) as im:
                    self._array = np.asarray(im.convert("RGB"))
        return self._array

    def read_region(self, x0: int, y0: int, width: int, height: int, fill: int = 255) -> np.ndarray:
        """Read ``image[y0:y0+height, x0:x0+width]``, padding outside the image with ``fill``.

        Coordinates are integer full-resolution pixels; ``x`` is the column, ``y`` the row.
        """
        out = np.full((height, width, 3), fill, dtype=np.uint8)
        h, w = self.shape
        xa, ya = max(x0, 0), max(y0, 0)
        xb, yb = min(x0 + width, w), min(y0 + height, h)
        if xa >= xb or ya >= yb:
            return out
        src = self._zarr if (self._zarr is not None and self._array is None) else self.to_array()
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = np.asarray(src[ya:yb, xa:xb])[..., :3]
        return out

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """Return a downscaled copy (longest side <= ``max_size``) and its scale factor.

        Uses the smallest pyramid level that is still large enough, so a pyramidal slide is never
        decoded at full resolution. The factor maps full-resolution pixels to thumbnail pixels.
        """
        from PIL import Image

        h, w = self.shape
        level = self._levels[0] if self._levels else None
        for lev in self._levels[1:]:
            if max(lev.shape[0], lev.shape[1]) >= max_size:
                level = lev
        if level is not None and self._array is None:
            arr = np.asarray(level[...])[..., :3]
        else:
            arr = self.to_array()
        scale = min(1.0, max_size / max(h, w))
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        if (arr.shape[1], arr.shape[0]) != new:
            arr = np.asarray(Image.fromarray(arr).resize(new, Image.Resampling.BOX))
        return arr, scale

    def close(self) -> None:
        """Release the open TIFF file handle (also done on garbage collection and ``with``)."""
        store, self._store = self._store, None
        if store is not None:
            self._zarr = None
            self._levels = []
            store.close()

    def __enter__(self) -> SlideImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass

    def __repr__(self) -> str:
        return f"SlideImage({str(self.path)!r}, shape={self.shape}, mpp_tags={self.mpp_tags})"


def _tiff_mpp(tif: Any) -> float | None:
    """Microns per pixel from a TIFF's metadata, or ``None``."""
    import tifffile

    page = tif.pages[0]
    # OME-XML
    if tif.is_ome and tif.ome_metadata:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        if m:
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
            value = float(m.group(1))
            if unit is None or unit.group(1) in ("µm", "um", "\u00b5m"):
                return value
            if unit.group(1) == "nm":
                return value / 1000.0
            if unit.group(1) == "mm":
                return value * 1000.0
    # Aperio SVS description "... |MPP = 0.2520|"
    desc = page.description or ""
    m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
    if m:
        return float(m.group(1))
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        if not num or not den:
            return None
        px_per_unit = num / den
        unit = tags["ResolutionUnit"].value
        if unit == tifffile.RESUNIT.CENTIMETER:
            return 1e4 / px_per_unit
        if unit == tifffile.RESUNIT.INCH and px_per_unit not in (72.0, 96.0, 300.0):
            return 25400.0 / px_per_unit
        if unit == getattr(tifffile.RESUNIT, "MICROMETER", -1):
            return 1.0 / px_per_unit
    return None


def open_image(path: str | os.PathLike[str], sample: str | None = None) -> SlideImage:
    """Open and validate an RGB image; see :class:`SlideImage`."""
    return SlideImage(path, sample=sample)
