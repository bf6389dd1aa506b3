"""Opening H&E / IHC images and reading regions of them without decoding a whole slide.

TIFFs (tiled, pyramidal, OME or plain) are read by region through tifffile's zarr store, so a
25k x 25k slide is never decoded whole; in a file of several series / pages (a thumbnail, label
or macro image beside the slide) the largest by pixel count is the full-resolution image, in
whatever position (:func:`_full_resolution_series`); JPEG and PNG files are decoded once and cached. Every
image is validated on opening: it must be 8-bit RGB. Grey, RGBA, palette and 16-bit images are
refused with a message that names the file, the sample and how to convert it. Decoding is lazy
(:meth:`SlideImage.to_array`, :meth:`~SlideImage.read_region`, :meth:`~SlideImage.thumbnail`);
a truncated or corrupt file fails there with an :class:`~stpredict.errors.InputError` naming the
image, the sample and the fix, never with a decoder traceback.

Resolution tags are trusted only when plausible for a microscope image
(:data:`PLAUSIBLE_TAG_MPP`, µm/px): 72/96/300 dpi and the other inch-dpi values image software
writes by default (all > 5 µm/px), unit-less or anisotropic resolutions are treated as absent,
with a log line saying why (:func:`plausible_tag_mpp`).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from stpredict.errors import InputError

__all__ = ["SlideImage", "open_image", "TIFF_SUFFIXES", "PLAUSIBLE_TAG_MPP", "plausible_tag_mpp"]

log = logging.getLogger(__name__)

#: Range of µm/px a resolution tag may state and still be believed: 0.05 (beyond a 100x oil
#: objective) to 5 (a 2x objective; 5080 dpi). Every inch-dpi default of image software
#: (72, 96, 150, 300, 600, 1200, 2400, 4800 dpi) lies above it.
PLAUSIBLE_TAG_MPP: tuple[float, float] = (0.05, 5.0)
_DECODE_FIX = (
    "re-export the image from the scanner / viewer software or copy it again (the file is "
    "truncated or corrupt), and point the sample sheet's {column} column at the complete file"
)


def plausible_tag_mpp(
    mpp: float | None,
    source: str,
    path: str | os.PathLike[str] | None = None,
    sample: str | None = None,
    *,
    mpp_y: float | None = None,
    dpi: float | None = None,
) -> float | None:
    """Return a µm/px read from an image tag, or ``None`` (with a log line) when implausible.

    One rule for every tag (TIFF X/YResolution, OME ``PhysicalSizeX``, Aperio ``MPP``, the JPEG /
    PNG dpi that PIL reports): a tag is believed only when it lies in
    :data:`PLAUSIBLE_TAG_MPP` and, given both axes, they agree within 1 %. Inch-dpi software
    defaults (72, 96, 300, ... dpi) give 5-350 µm/px and are ignored; ignoring a tag only drops an
    estimate (the spot pitch and the sheet's ``mpp`` remain), it never corrupts µm sizes.

    Parameters
    ----------
    mpp
        The value the tag states, µm per pixel (``None``: no tag).
    source
        Which tag, for the log line (e.g. ``"TIFF XResolution"``).
    path, sample
        Image and sample, for the log line.
    mpp_y
        The vertical µm/px where the tag has one.
    dpi
        The dots per inch the tag stated, for the log line.

    Returns
    -------
    float or None
        ``mpp`` when plausible, else ``None``.
    """
    if mpp is None:
        return None
    value = float(mpp)
    lo, hi = PLAUSIBLE_TAG_MPP
    stated = f"{value:.4g} µm/px" + (f" ({dpi:g} dpi)" if dpi else "")
    why = None
    if not np.isfinite(value) or value <= 0:
        why = "it is not a positive number"
    elif (
        mpp_y is not None
        and np.isfinite(mpp_y)
        and mpp_y > 0
        and (abs(value - mpp_y) / min(value, mpp_y) > 0.01)
    ):
        why = f"its horizontal and vertical resolutions differ ({value:.4g} vs {mpp_y:.4g} µm/px)"
    elif value > hi:
        why = (
            f"it is coarser than {hi:g} µm/px, so it is a software default (72/96/300 dpi and "
            "the like), not a scan resolution"
        )
    elif value < lo:
        why = f"it is finer than {lo:g} µm/px, beyond any light microscope"
    if why is None:
        return value
    log.warning(
        "sample %s: image '%s': %s tag %s ignored: %s; the pixel size comes from the other "
        "estimates (sheet mpp, spot pitch)",
        sample,
        path,
        source,
        stated,
        why,
    )
    return None


TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".svs", ".ome.tif", ".ome.tiff")
_CONVERT_FIX = (
    'convert it to 8-bit RGB, e.g. `python -c "from PIL import Image; '
    "Image.open('in').convert('RGB').save('out.tif')\"` or `vips colourspace in.tif out.tif srgb`, "
    "and point the sample sheet's {column} column at the result"
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

    def __init__(
        self, path: str | os.PathLike[str], sample: str | None = None, column: str = "image"
    ) -> None:
        self.path = Path(path)
        self.sample = sample
        #: the sample-sheet column the image comes from (named by the errors' fixes)
        self.column = column
        #: what the image is, for the errors: an H&E or an IHC image
        self.kind = "IHC" if column.startswith("ihc") else "H&E"
        if not self.path.is_file():
            raise InputError(
                f"{self.kind} image file does not exist",
                file=self.path,
                sample=sample,
                fix=f"check the '{column}' column of the sample sheet (paths are relative to the "
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
        raise InputError(problem, file=self.path, sample=self.sample, fix=self._fix(fix))

    def _fix(self, fix: str) -> str:
        """Return ``fix`` naming this image's sheet column."""
        return fix.replace("{column}", self.column)

    def _check_dtype_channels(self, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        if len(shape) == 2 or (len(shape) == 3 and shape[-1] == 1):
            self._fail(f"image is greyscale (one channel); an RGB {self.kind} image is required")
        if len(shape) != 3:
            self._fail(f"image has an unsupported shape {shape}; expected height x width x 3")
        if shape[-1] == 4:
            self._fail("image is RGBA (4 channels); an RGB image without alpha is required")
        if shape[-1] != 3:
            self._fail(f"image has {shape[-1]} channels; an RGB image (3 channels) is required")
        if np.dtype(dtype) != np.uint8:
            self._fail(
                f"image is {np.dtype(dtype)} ({np.dtype(dtype).itemsize * 8}-bit); 8-bit RGB is required"
            )

    def _open_tiff(self) -> None:
        import tifffile
        import zarr

        try:
            with tifffile.TiffFile(self.path) as tif:
                index = _full_resolution_series(tif, self.path, self.sample)
                series = tif.series[index]
                shape = tuple(int(s) for s in series.shape)
                dtype = series.dtype
                axes = series.axes
                self.mpp_tags = _tiff_mpp(tif, self.path, self.sample, series.keyframe)
                n_levels = len(series.levels)
        except Exception as exc:  # noqa: BLE001 - any tifffile failure on opening is a bad file
            raise InputError(
                f"cannot read the TIFF ({type(exc).__name__}: {exc})",
                file=self.path,
                sample=self.sample,
                fix=self._fix(_DECODE_FIX),
            ) from exc
        if axes.startswith("S") and len(shape) == 3:  # planar RGB (S, Y, X)
            self._fail("image is stored planar (channels first); interleaved RGB is required")
        self._check_dtype_channels(dtype, shape)
        self.shape = (shape[0], shape[1])
        with self._decoding("open"):
            store = tifffile.imread(self.path, aszarr=True, series=index)
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
        except Exception as exc:  # noqa: BLE001 - PIL raises many types on a bad header
            raise InputError(
                f"cannot read the image ({type(exc).__name__}: {exc})",
                file=self.path,
                sample=self.sample,
                fix="give a TIFF, JPEG or PNG file that opens in an image viewer; "
                + self._fix(_DECODE_FIX),
            ) from exc
        if mode in ("L", "1", "LA"):
            self._fail(f"image is greyscale; an RGB {self.kind} image is required")
        if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in info):
            self._fail(
                "image is RGBA (has an alpha channel); an RGB image without alpha is required"
            )
        if mode.startswith("I;16") or mode in ("I", "F"):
            self._fail(f"image is {mode} (16/32-bit); 8-bit RGB is required")
        if mode not in ("RGB", "P", "YCbCr"):
            self._fail(f"image mode {mode} is not supported; 8-bit RGB is required")
        self.shape = (size[1], size[0])
        dpi = info.get("dpi")
        if dpi and len(dpi) >= 1 and dpi[0]:
            try:
                dx = float(dpi[0])
                dy = float(dpi[1]) if len(dpi) > 1 and dpi[1] else None
            except (TypeError, ValueError):
                dx, dy = 0.0, None
            if dx > 0:
                self.mpp_tags = plausible_tag_mpp(
                    25400.0 / dx,
                    f"{Path(self.path).suffix.lstrip('.').upper() or 'image'} dpi",
                    self.path,
                    self.sample,
                    mpp_y=None if not dy or dy <= 0 else 25400.0 / dy,
                    dpi=dx,
                )

    # ------------------------------------------------------------------ decoding
    def _decoding(self, what: str) -> Any:
        """Context manager turning any decoder failure into an InputError naming the image."""
        return _Decoding(self, what)

    # ------------------------------------------------------------------ access
    def to_array(self) -> np.ndarray:
        """Return the whole full-resolution image as ``(H, W, 3)`` uint8 (decoded once, cached)."""
        if self._array is None:
            with self._decoding("decode"):
                if self._zarr is not None:
                    arr = np.asarray(self._zarr[...])
                else:
                    from PIL import Image

                    with Image.open(self.path) as im:
                        arr = np.asarray(im.convert("RGB"))
            if arr.shape[:2] != tuple(self.shape):
                self._fail(
                    f"image decodes to {arr.shape[1]}x{arr.shape[0]} px but its header says "
                    f"{self.shape[1]}x{self.shape[0]}",
                    fix=_DECODE_FIX,
                )
            self._array = arr
        return self._array

    @property
    def level_shapes(self) -> list[tuple[int, int]]:
        """``(height, width)`` of every pyramid level, full resolution first.

        A TIFF's reduced-resolution levels (SubIFDs or a multi-scale series) as tifffile lists
        them; one level for JPEG / PNG and for a TIFF without a pyramid.
        """
        if not self._levels:
            return [tuple(self.shape)]
        return [(int(lev.shape[0]), int(lev.shape[1])) for lev in self._levels]

    def read_region(
        self, x0: int, y0: int, width: int, height: int, fill: int = 255, level: int = 0
    ) -> np.ndarray:
        """Read ``image[y0:y0+height, x0:x0+width]``, padding outside the image with ``fill``.

        Coordinates are integer pixels of pyramid level ``level`` (0 = full resolution, see
        :attr:`level_shapes`); ``x`` is the column, ``y`` the row. Only the TIFF tiles the region
        touches are decoded.
        """
        out = np.full((height, width, 3), fill, dtype=np.uint8)
        h, w = self.level_shapes[level]
        xa, ya = max(x0, 0), max(y0, 0)
        xb, yb = min(x0 + width, w), min(y0 + height, h)
        if xa >= xb or ya >= yb:
            return out
        if level:
            src = self._levels[level]
        else:
            lazy = self._zarr is not None and self._array is None
            src = self._zarr if lazy else self.to_array()
        with self._decoding("read a region of"):
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
            with self._decoding("decode"):
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


class _Decoding:
    """``with img._decoding(what):`` re-raises decoder failures as one-line InputErrors."""

    def __init__(self, image: SlideImage, what: str) -> None:
        self.image, self.what = image, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, InputError) or not isinstance(exc, Exception):
            return False
        raise InputError(
            f"cannot {self.what} the image: it is truncated or corrupt "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            file=self.image.path,
            sample=self.image.sample,
            fix=self.image._fix(_DECODE_FIX),
        ) from exc


_OME_UNITS_UM = {
    "\u00b5m": 1.0,  # micro sign
    "\u03bcm": 1.0,  # Greek mu
    "um": 1.0,
    "micron": 1.0,
    "nm": 1e-3,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


def _series_pixels(series: Any) -> int:
    """Pixel count (height x width) of a tifffile series' full-resolution level."""
    shape = tuple(int(v) for v in series.shape)
    axes = str(getattr(series, "axes", ""))
    if "Y" in axes and "X" in axes and len(axes) == len(shape):
        return shape[axes.index("Y")] * shape[axes.index("X")]
    return int(np.prod(shape[:2])) if len(shape) >= 2 else int(np.prod(shape))


def _full_resolution_series(tif: Any, path: Any = None, sample: str | None = None) -> int:
    """Index of the series holding the full-resolution image: the one with the most pixels.

    Some scanners and converters write a thumbnail (or a label / macro image) as the first page
    or series and the slide after it; reading series 0 would read the thumbnail. Logs which
    series was chosen when it is not the first.
    """
    series = list(tif.series)
    if len(series) <= 1:
        return 0
    pixels = [_series_pixels(s) for s in series]
    best = int(np.argmax(pixels))  # the first of equal-sized ones
    if best != 0:
        listing = ", ".join(
            f"{i}: {'x'.join(str(v) for v in s.shape)} ({s.axes})" for i, s in enumerate(series)
        )
        log.info(
            "sample %s: image '%s' holds %d series/pages (%s); series %d, the largest, is read "
            "as the full-resolution image (series 0 is smaller: a thumbnail or label)",
            sample,
            path,
            len(series),
            listing,
            best,
        )
    return best


def _tiff_mpp(
    tif: Any, path: Any = None, sample: str | None = None, page: Any = None
) -> float | None:
    """Microns per pixel from a TIFF's metadata (checked by :func:`plausible_tag_mpp`), or None.

    ``page`` is the first page of the full-resolution series (default: the file's first page).
    """
    import tifffile

    page = tif.pages[0] if page is None else page
    # OME-XML
    if tif.is_ome and tif.ome_metadata:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        if m:
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
            my = re.search(r'PhysicalSizeY="([0-9.eE+-]+)"', tif.ome_metadata)
            factor = _OME_UNITS_UM.get("um" if unit is None else unit.group(1))
            if factor is None:
                log.warning(
                    "sample %s: image '%s': OME PhysicalSizeX unit %r not understood; tag ignored",
                    sample,
                    path,
                    unit.group(1) if unit else None,
                )
                return None
            return plausible_tag_mpp(
                float(m.group(1)) * factor,
                "OME PhysicalSizeX",
                path,
                sample,
                mpp_y=None if my is None else float(my.group(1)) * factor,
            )
    # Aperio SVS description "... |MPP = 0.2520|"
    desc = page.description or ""
    m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
    if m:
        return plausible_tag_mpp(float(m.group(1)), "Aperio MPP", path, sample)
    tags = page.tags
    if "XResolution" in tags:
        unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else tifffile.RESUNIT.INCH
        per_um = {
            tifffile.RESUNIT.CENTIMETER: 1e-4,
            tifffile.RESUNIT.INCH: 1 / 25400.0,
            getattr(tifffile.RESUNIT, "MILLIMETER", -2): 1e-3,
            getattr(tifffile.RESUNIT, "MICROMETER", -3): 1.0,
        }.get(unit)

        def px_per_unit(tag: str) -> float | None:
            if tag not in tags:
                return None
            num, den = tags[tag].value
            return float(num) / float(den) if num and den else None

        px_x, px_y = px_per_unit("XResolution"), px_per_unit("YResolution")
        if per_um is None or not px_x:
            return None  # ResolutionUnit NONE: an aspect ratio, not a size
        dpi = px_x if unit == tifffile.RESUNIT.INCH else None
        return plausible_tag_mpp(
            1.0 / (px_x * per_um),
            "TIFF XResolution",
            path,
            sample,
            mpp_y=None if not px_y else 1.0 / (px_y * per_um),
            dpi=dpi,
        )
    return None


def open_image(
    path: str | os.PathLike[str], sample: str | None = None, column: str = "image"
) -> SlideImage:
    """Open and validate an RGB image of the sheet's ``column``; see :class:`SlideImage`."""
    return SlideImage(path, sample=sample, column=column)
