"""The look shared by every figure: rc style and resolution, colours, method labels, saving.

:func:`save_figure` writes a figure atomically (format from the suffix); figures written as PNG
and PDF go through :func:`_save_both` inside the :func:`_styled` rc context (fonts >= 8 pt,
editable PDF text). Method labels and colours (:data:`_METHODS`), annotation colours keyed by
the vocabulary of :mod:`stpredict.vocab` (:data:`_ANNOTATION`) and the background image of a
section (:func:`section_background`) are defined once here; target units on the axes come from
:func:`stpredict.vocab.units_label`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import (
    FuncFormatter,
    LogLocator,
    NullFormatter,
)

from stpredict.ingest.section import sample_id_of
from stpredict.io import atomic_path
from stpredict.vocab import NORMAL, TUMOR, UNANNOTATED

__all__ = [
    "DPI",
    "REPORT_MAX_PIXELS",
    "REPORT_MAX_PIXELS_PER_SECTION",
    "save_figure",
    "report_copy",
    "section_background",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


F = TypeVar("F", bound=Callable[..., Any])


#: Resolution of the PNG copies (the PDFs are vector, rasterised layers at this resolution).
DPI = 150

#: Largest size (width x height, px) of the copy of a figure embedded in the Snakemake report
#: (:func:`report_copy`); the full-size PNG and the PDF stay in results/.
REPORT_MAX_PIXELS = 400_000

#: The same for the figures the report shows once per section (the QC figures): a cohort has
#: many, so each is smaller.
REPORT_MAX_PIXELS_PER_SECTION = 250_000


_STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,  # embed TrueType: text stays editable and searchable
    "ps.fonttype": 42,
    "image.interpolation": "nearest",
}


_METHODS: dict[str, tuple[str, str]] = {  # name -> (display label, colour)
    "cnn": ("CNN", "#1f4e99"),
    "mean": ("training mean", "#7f7f7f"),
    "labels": ("tumour/normal labels", "#d62728"),
    "nuclear_rf": ("nuclear features (RF)", "#2ca02c"),
    "nmf_rf": ("NMF composition (RF)", "#9467bd"),
    "neighbours": ("4-neighbour oracle", "#ff7f0e"),
}


_ANNOTATION = {  # obs["annotation"] value -> (legend label, colour)
    TUMOR: ("tumour", "#d62728"),
    NORMAL: ("normal", "#1f77b4"),
    UNANNOTATED: ("unannotated", "#bdbdbd"),
}


# --------------------------------------------------------------------------- helpers
def _styled(func: F) -> F:
    """Run a plot function inside the module's rc style (fonts >= 8 pt)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with plt.rc_context(_STYLE):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _save_both(fig: Any, out_png: PathLike, png_text: Mapping[str, str] | None = None) -> None:
    """Write ``fig`` to ``out_png`` and to the same path with suffix ``.pdf``; close it.

    ``png_text``: text chunks of the PNG (machine-readable facts about the figure, e.g. its
    colour scales; ``PIL.Image.open(png).text``).
    """
    try:
        out = Path(out_png)
        save_figure(fig, out, dpi=DPI, metadata=png_text)
        save_figure(fig, out.with_suffix(".pdf"), dpi=DPI)
    finally:
        plt.close(fig)


def _method_label(method: str) -> str:
    return _METHODS.get(method, (method, ""))[0]


def _method_colour(method: str, i: int) -> str:
    colour = _METHODS.get(method, ("", ""))[1]
    return colour or plt.get_cmap("tab10")(i % 10)


def _empty_note(ax: Any, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontsize=9,
        color="#555555",
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _log_axis(axis: Any) -> None:
    """Log-scale ticks with plain-number labels, denser when the axis spans few decades."""
    lo, hi = sorted(axis.get_view_interval())
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs: tuple[float, ...] = (
        tuple(range(1, 10)) if decades < 1.2 else (1.0, 2.0, 5.0) if decades < 4 else (1.0,)
    )
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
    axis.set_minor_formatter(NullFormatter())


def _natural_key(s: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(s)))


def _finite(v: Any) -> np.ndarray:
    a = np.asarray(v, dtype=float).ravel()
    return a[np.isfinite(a)]


def _cmap(name: str, bad: str = "#d9d9d9") -> Any:
    return plt.get_cmap(name).with_extremes(bad=bad)


def _category_colours(categories: Sequence[str]) -> dict[str, Any]:
    n = len(categories)
    if n <= 10:
        cols = [plt.get_cmap("tab10")(i) for i in range(n)]
    elif n <= 20:
        cols = [plt.get_cmap("tab20")(i) for i in range(n)]
    else:
        cols = [plt.get_cmap("turbo")(x) for x in np.linspace(0.05, 0.95, n)]
    return dict(zip(categories, cols, strict=True))


def save_figure(
    fig: Any,
    out: str | os.PathLike[str],
    dpi: int = 110,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save ``fig`` to ``out`` (format from the suffix) via a temporary file and a rename.

    ``metadata``: matplotlib's ``savefig`` metadata (for a PNG, any text keys).
    """
    fmt = Path(out).suffix.lstrip(".").lower() or "png"
    extra = {"metadata": dict(metadata)} if metadata else {}
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", **extra)


def section_background(adata: Any, max_size: int = 1024) -> tuple[np.ndarray | None, float]:
    """Background image of a section and the factor from full-resolution px to its px.

    Uses ``uns["spatial"][sample]["images"]["lowres"]`` (or ``hires``) with its scale factor,
    else a thumbnail of ``uns["stpredict"]["image"]``, else ``(None, 1.0)``.
    """
    sid = sample_id_of(adata)
    spatial = adata.uns.get("spatial", {})
    entry = spatial.get(sid) if isinstance(spatial, Mapping) else None
    if entry is None and isinstance(spatial, Mapping) and len(spatial) == 1:
        entry = next(iter(spatial.values()))
    if isinstance(entry, Mapping):
        images = entry.get("images", {})
        scalefs = entry.get("scalefactors", {})
        for key in ("lowres", "hires"):
            if key in images and f"tissue_{key}_scalef" in scalefs:
                return np.asarray(images[key]), float(scalefs[f"tissue_{key}_scalef"])
    meta = adata.uns.get("stpredict", {})
    path = meta.get("image") if isinstance(meta, Mapping) else None
    if path and Path(str(path)).is_file():
        from stpredict.ingest.images import SlideImage

        try:
            with SlideImage(str(path), sample=sid) as image:
                return image.thumbnail(max_size)
        except Exception as exc:  # noqa: BLE001 - a missing background must not fail the figure
            log.warning("%s: no background image for the QC figure (%s)", sid, exc)
    return None, 1.0


def report_copy(
    src: PathLike, dst: PathLike, max_pixels: int = REPORT_MAX_PIXELS, colours: int = 256
) -> tuple[int, int]:
    """Write the small copy of a PNG figure that the Snakemake report embeds.

    The figure is scaled down (Lanczos) to at most ``max_pixels`` pixels, keeping its aspect
    ratio, flattened onto white and stored with a palette of ``colours`` colours (octree,
    no dithering; line plots lose nothing, H&E backgrounds a little), atomically. A figure
    already small enough is only re-encoded.

    Parameters
    ----------
    src
        The full-size PNG (stays where it is).
    dst
        The report copy (conventionally ``report/<name>.png`` beside ``src``).
    max_pixels, colours
        Size and palette of the copy.

    Returns
    -------
    tuple of int
        Width and height of the copy.
    """
    from PIL import Image

    with Image.open(src) as im:
        im.load()
        rgba = im.convert("RGBA")
    rgb = Image.new("RGB", rgba.size, (255, 255, 255))
    rgb.paste(rgba, mask=rgba.getchannel("A"))
    scale = min(1.0, math.sqrt(max_pixels / float(rgb.width * rgb.height)))
    if scale < 1.0:
        size = (max(1, math.floor(rgb.width * scale)), max(1, math.floor(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    small = rgb.quantize(colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    with atomic_path(dst) as tmp:
        small.save(tmp, format="PNG")
    return small.width, small.height
