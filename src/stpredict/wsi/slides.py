"""Slides: the slide table, a slide's pixel size, and the pyramid level the models read.

Slide table (``wsi.slides``; ``workflow/schemas/slides.schema.yaml``)
--------------------------------------------------------------------
A TSV with columns ``slide_id``, ``image``, ``mpp`` (optional: empty = the image's resolution
tags), ``patient_id`` and ``subtype`` (optional: the pseudo-bulk analyses' patient and label,
:mod:`stpredict.wsi.subtype`), validated row by row like the sample sheet; an error names
the table, the row, the slide and the column.

Pixel size
----------
:func:`resolve_mpp`: the table's (or caller's) µm/px, cross-checked against the TIFF tags when
both exist (refused when they disagree by more than ``reading.mpp_tolerance``); the tags alone
when the table gives none; refused when neither does (JPEG / PNG carry no trustworthy size).

Level (:func:`choose_level`)
----------------------------
A model sees its field of view (``fov_um``) resized to ``size_px``: ``fov_um / size_px`` µm per
stored pixel. Tiles are read from the coarsest pyramid level at or finer than that (a level
whose µm/px exceeds it by at most the tolerance still counts: level sizes are rounded), so
every tile is *down*-sampled to the model's input and the slide is never decoded at a finer
level than needed (a level at most 1 % coarser counts: rounded level sizes). When even full
resolution is coarser by more than ``reading.mpp_tolerance``, the image cannot match the model
(its patches would be up-sampled, blurrier than anything the model saw) and it is refused.
:class:`LevelImage` presents one level to :func:`stpredict.patches.store.extract_patches` with
the interface of :class:`~stpredict.ingest.images.SlideImage`, read by region (TIFF tiles
decoded on demand through zarr): a slide never has to fit in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stpredict.errors import ConfigError, GeometryError, InputError
from stpredict.ingest.images import SlideImage

__all__ = [
    "SLIDE_COLUMNS",
    "SLIDES_SCHEMA",
    "Level",
    "LevelImage",
    "read_slides",
    "validate_slides",
    "resolve_mpp",
    "slide_levels",
    "choose_level",
]

#: a pyramid level up to this share coarser than the model's µm/px still counts as "at or finer"
#: (level sizes are rounded: 40,001 px halved is 20,000 px)
LEVEL_RTOL = 0.01
#: columns of a slide table (required: slide_id, image)
SLIDE_COLUMNS = ("slide_id", "image", "mpp", "patient_id", "subtype")
#: the JSON schema of one row
SLIDES_SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "slides.schema.yaml"


# ------------------------------------------------------------------------------ slide table
def _read_cells(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError(
            "the slide table does not exist",
            file=path,
            fix="set wsi.slides to a TSV with columns slide_id, image, mpp (config/README.md)",
        )
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ConfigError(
            f"the slide table cannot be parsed ({' '.join(str(exc).split())})",
            file=path,
            fix="save it as tab-separated UTF-8 text with a header slide_id, image, mpp",
        ) from None
    df.columns = [str(c).strip() for c in df.columns]
    unknown = [c for c in df.columns if c not in SLIDE_COLUMNS]
    if unknown:
        raise ConfigError(
            f"the slide table has unknown column(s) {', '.join(unknown)}",
            file=path,
            fix=f"use only {', '.join(SLIDE_COLUMNS)} (config/README.md)",
        )
    df = df.map(lambda v: v.strip() if isinstance(v, str) else v)
    df = df[~(df == "").all(axis=1)]
    if df.empty:
        raise ConfigError("the slide table has no rows", file=path, fix="add one row per slide")
    for col in SLIDE_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    return df[list(SLIDE_COLUMNS)].reset_index(drop=True)


def _validate_rows(df: pd.DataFrame, path: Path) -> None:
    from jsonschema import Draft202012Validator

    from stpredict.config import load_schema

    schema = load_schema(SLIDES_SCHEMA)
    validator = Draft202012Validator(schema)
    for i, record in enumerate(df.to_dict(orient="records")):
        errors = sorted(validator.iter_errors(record), key=lambda e: list(e.path))
        if not errors:
            continue
        err = errors[0]
        column = err.path[0] if err.path else str(err.message).split("'")[1]
        value = record.get(column, "")
        raise ConfigError(
            f"row {i + 2}, column '{column}': {err.message}"
            + (f" (got {value!r})" if value else ""),
            file=path,
            sample=record.get("slide_id") or f"<row {i + 2}>",
            fix=schema["properties"].get(column, {}).get("description", "see config/README.md"),
        )


def read_slides(path: str | os.PathLike[str], produced: Iterable[str] = ()) -> pd.DataFrame:
    """Read and validate a slide table; return it indexed by ``slide_id`` (all text).

    Parameters
    ----------
    path
        The TSV (columns :data:`SLIDE_COLUMNS`).
    produced
        Files a rule of the workflow writes (the demo's images): accepted before they exist.

    Raises
    ------
    ConfigError
        Naming the table, the row, the slide and the column of the first problem.
    """
    return validate_slides(_read_cells(Path(path)), path, produced)


def validate_slides(
    df: pd.DataFrame, path: str | os.PathLike[str], produced: Iterable[str] = ()
) -> pd.DataFrame:
    """Validate the rows of a slide table (:func:`read_slides`; ``path`` names it in errors).

    ``df`` holds the columns :data:`SLIDE_COLUMNS` (missing optional ones are added empty).
    """
    path = Path(path)
    df = df.astype(str).copy()
    for col in SLIDE_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    df = df[list(SLIDE_COLUMNS)].reset_index(drop=True)
    _validate_rows(df, path)
    for col in ("slide_id", "image"):
        norm = df[col] if col == "slide_id" else df[col].map(os.path.normpath)
        twice = df[norm.duplicated(keep=False)]
        if not twice.empty:
            raise ConfigError(
                f"slides {', '.join(twice['slide_id'])} share the {col} {twice[col].iloc[0]!r}",
                file=path,
                sample=str(twice["slide_id"].iloc[0]),
                fix=f"give every slide its own {col}",
            )
    made = {os.path.normpath(p) for p in produced}
    for i, row in df.iterrows():
        if row["mpp"] and not float(row["mpp"]) > 0:
            raise ConfigError(
                f"row {i + 2}, column 'mpp': the pixel size must be positive",
                file=path,
                sample=row["slide_id"],
                fix="give the image's microns per pixel, or leave the cell empty to use its tags",
            )
        if os.path.normpath(row["image"]) not in made and not os.path.exists(row["image"]):
            raise ConfigError(
                f"row {i + 2}, column 'image': the image does not exist: {row['image']}",
                file=path,
                sample=row["slide_id"],
                fix="correct the path (relative to the directory Snakemake runs in)",
            )
    return df.set_index("slide_id", drop=False)


# ------------------------------------------------------------------------------ pixel size
def resolve_mpp(
    image: SlideImage, given: float | str | None, tolerance: float, slide: str | None = None
) -> tuple[float, str]:
    """Return the image's full-resolution µm/px and where it came from (module notes).

    Returns
    -------
    mpp : float
    source : str
        ``"given"`` (the slide table or the caller), ``"image tags"``, or ``"given (agrees with
        the image tags)"``.
    """
    try:
        value = float(given) if given not in (None, "") else None
    except (TypeError, ValueError):
        value = float("nan")
    if value is not None and not value > 0:
        raise GeometryError(
            f"the pixel size must be positive, got {given!r}",
            file=image.path,
            sample=slide,
            fix="give the image's microns per pixel (e.g. 0.5 at 20x)",
        )
    tag = image.mpp_tags
    if value is None and tag is None:
        raise InputError(
            "the pixel size (µm/px) is not given and the image records none in its tags",
            file=image.path,
            sample=slide,
            fix="give it: the slide table's mpp column, `stpredict predict --mpp X` or "
            "predict_image(..., mpp=X)",
        )
    if value is None:
        return float(tag), "image tags"
    if tag is None:
        return value, "given"
    if abs(value - tag) / min(value, tag) > tolerance:
        raise GeometryError(
            f"the given pixel size {value:g} µm/px disagrees with the image's resolution tags "
            f"({tag:.4g} µm/px) by more than {tolerance:.0%}",
            file=image.path,
            sample=slide,
            fix="check which is right: correct the slide table's mpp (or --mpp), or the tags",
        )
    return value, "given (agrees with the image tags)"


# ------------------------------------------------------------------------------ levels
@dataclass(frozen=True)
class Level:
    """One pyramid level of a slide.

    Attributes
    ----------
    index
        0 = full resolution.
    shape
        ``(height, width)`` in this level's pixels.
    downsample
        Full-resolution pixels per pixel of this level (width ratio).
    mpp
        µm per pixel of this level.
    """

    index: int
    shape: tuple[int, int]
    downsample: float
    mpp: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record."""
        return {
            "index": self.index,
            "shape": list(self.shape),
            "downsample": self.downsample,
            "mpp": self.mpp,
        }


def slide_levels(image: SlideImage, mpp: float) -> list[Level]:
    """Every pyramid level of ``image`` with its µm/px (``mpp`` = full resolution's)."""
    shapes = image.level_shapes
    w0 = float(shapes[0][1])
    return [
        Level(k, (int(h), int(w)), w0 / float(w), float(mpp) * w0 / float(w))
        for k, (h, w) in enumerate(shapes)
    ]


def choose_level(
    levels: Sequence[Level],
    target_mpp: float,
    tolerance: float,
    file: str | os.PathLike[str] | None = None,
    slide: str | None = None,
) -> Level:
    """Choose the coarsest level at or finer than ``target_mpp`` (module notes).

    Parameters
    ----------
    levels
        :func:`slide_levels`.
    target_mpp
        µm per pixel of the model's stored patches (``fov_um / size_px``).
    tolerance
        Full resolution may be up to this share coarser than the target (``reading.
        mpp_tolerance``); a reduced level counts when at most :data:`LEVEL_RTOL` coarser
        (rounded level sizes).
    file, slide
        For the error message.

    Raises
    ------
    GeometryError
        When full resolution is coarser than the target beyond the tolerance.
    """
    ok = [lev for lev in levels if lev.mpp <= target_mpp * (1.0 + LEVEL_RTOL)]
    if not ok:  # full resolution slightly coarser than the model: accepted within the tolerance
        ok = [lev for lev in levels if lev.index == 0 and lev.mpp <= target_mpp * (1 + tolerance)]
    if not ok:
        finest = min(levels, key=lambda lev: lev.mpp)
        raise GeometryError(
            f"the image is at {finest.mpp:.4g} µm/px, coarser than the {target_mpp:.4g} µm/px "
            "of the model's patches: its tiles would be up-sampled, blurrier than anything "
            "the model was trained on",
            file=file,
            sample=slide,
            fix="use a scan at a higher magnification, check the image's mpp, or use a model "
            "trained with a coarser field of view per pixel (patches.fov_um / patches.size_px)",
        )
    return max(ok, key=lambda lev: (lev.mpp, -lev.index))


class LevelImage:
    """One level of a :class:`SlideImage`, with the interface the patch extractor reads.

    ``path``, ``sample``, ``shape`` (this level's) and :meth:`read_region` in this level's
    pixels; regions are decoded on demand (never the whole level).
    """

    def __init__(self, image: SlideImage, level: Level) -> None:
        self.image = image
        self.level = level
        self.path = image.path
        self.sample = image.sample
        self.shape = level.shape

    def read_region(self, x0: int, y0: int, width: int, height: int, fill: int = 255) -> np.ndarray:
        """``level[y0:y0+height, x0:x0+width]``, padded with ``fill`` outside it."""
        return self.image.read_region(x0, y0, width, height, fill=fill, level=self.level.index)
