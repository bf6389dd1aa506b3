"""Per-spot protein measures on a registered IHC image.

Each spot centre of the section (H&E full-resolution px) is carried into the IHC image by the
fitted transform, and two measures are taken there:

* **the paper's** (DeepSpaCE, Methods): the mean RGB of a 14 x 14 px square centred on the spot
  ("high mean RGB values indicate low protein levels"). The paper does not say in which image
  those pixels are counted. A 55 µm Visium spot is about 14 px wide in Space Ranger's
  ``tissue_hires_image.png`` (``spot_diameter_fullres x tissue_hires_scalef``, ~3.5-4 µm/px for a
  capture area), so we read the 14 px at that scale: ``square_scale: hires`` (the default) uses
  ``square_px / tissue_hires_scalef`` H&E full-resolution px, carried to IHC px by the
  transform's scale; ``square_scale: fullres`` uses ``square_px`` native IHC pixels.
  ``darkness = 255 - mean RGB`` turns it into a measure that grows with the protein.
* **DAB optical density** from colour deconvolution (``skimage.color.rgb2hed``, Ruifrok &
  Johnston's vectors), averaged over the spot's disk (the spot diameter of the section, in IHC
  px). ``rgb2hed`` returns ``-ln(I / 255) / ln(1e6)`` per stain; we report the decadic optical
  density ``-log10(I / I0)`` with ``I0 = 255`` (the skimage convention), i.e. the channel times
  ``ln(1e6) / ln(10) = 6``.

A spot whose square or disk is not wholly inside the IHC image gets NaN measures and
``inside = False``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from stpredict.errors import ConfigError, GeometryError, InputError
from stpredict.ihc.register import apply_affine, open_ihc

__all__ = [
    "OD_PER_HED",
    "SpotGeometry",
    "spot_geometry",
    "dab_od",
    "measure_spots",
    "spot_table",
    "target_column",
    "quantify_section",
]

#: factor from a ``skimage.color.rgb2hed`` channel to a decadic optical density (I0 = 255)
OD_PER_HED = math.log(1e6) / math.log(10)

#: rows of the IHC image read at once (spots are measured band by band)
_BAND_PX = 1024


def dab_od(rgb: np.ndarray) -> np.ndarray:
    """Decadic DAB optical density of each pixel of an RGB uint8 image (colour deconvolution)."""
    from skimage.color import rgb2hed

    return (rgb2hed(rgb)[..., 2] * OD_PER_HED).astype(np.float32)


class SpotGeometry:
    """Where and over what the spots are measured in the IHC image.

    Attributes
    ----------
    he_xy, ihc_xy
        ``(n, 2)`` spot centres in H&E and in IHC full-resolution px.
    square_px
        Side of the paper's square in IHC px (integer).
    disk_radius_px
        Radius of the spot disk in IHC px.
    """

    def __init__(
        self, he_xy: np.ndarray, ihc_xy: np.ndarray, square_px: int, disk_radius_px: float
    ):
        self.he_xy = np.asarray(he_xy, dtype=float)
        self.ihc_xy = np.asarray(ihc_xy, dtype=float)
        self.square_px = int(square_px)
        self.disk_radius_px = float(disk_radius_px)


def _hires_scalef(section: Any, sample: str) -> float:
    spatial = section.uns.get("spatial", {})
    entry = spatial.get(sample) if isinstance(spatial, Mapping) else None
    if entry is None and isinstance(spatial, Mapping) and len(spatial) == 1:
        entry = next(iter(spatial.values()))
    scalef = (entry or {}).get("scalefactors", {}).get("tissue_hires_scalef")
    if scalef is None or not float(scalef) > 0:
        raise GeometryError(
            "the section has no tissue_hires_scalef, so the paper's 14 px square (counted in "
            "the hires image) has no size",
            sample=sample,
            fix="set ihc.square_scale: fullres to count square_px in native IHC pixels",
        )
    return float(scalef)


def spot_geometry(
    section: Any, matrix: np.ndarray, square_px: int, square_scale: str, sample: str
) -> SpotGeometry:
    """Spot centres in both images, the square side and the disk radius in IHC px.

    Parameters
    ----------
    section
        The section AnnData (``obsm["spatial"]`` in H&E full-res px, ``uns["stpredict"]``
        with ``spot_diameter_px``, ``uns["spatial"]`` with the scale factors).
    matrix
        3 x 3 H&E full-res px -> IHC px transform.
    square_px, square_scale
        The paper's square: its side and the image its pixels are counted in (``hires`` or
        ``fullres``, see the module docstring).
    sample
        Sample id, for messages.
    """
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
    if square_scale == "hires":
        side = square_px / _hires_scalef(section, sample) * scale
    elif square_scale == "fullres":
        side = float(square_px)
    else:
        raise ConfigError(
            f"unknown ihc.square_scale {square_scale!r}", sample=sample, fix="use hires or fullres"
        )
    diameter = float(section.uns.get("stpredict", {}).get("spot_diameter_px", float("nan")))
    if not diameter > 0:
        raise GeometryError(
            "the section records no spot diameter in px (uns['stpredict']['spot_diameter_px'])",
            sample=sample,
            fix="rerun the read_section rule of this sample (its file predates the field)",
        )
    he_xy = np.asarray(section.obsm["spatial"], dtype=float)[:, :2]
    return SpotGeometry(
        he_xy, apply_affine(matrix, he_xy), max(1, round(side)), diameter * scale / 2
    )


def _square_bounds(c: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """First pixel index and end of the ``side``-px square centred on each centre ``c``."""
    start = np.floor(c - side / 2 + 0.5).astype(np.int64)
    return start, start + side


def _disk(radius: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer offsets (dy, dx) of the pixels whose centres lie within ``radius``."""
    r = int(math.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dy**2 + dx**2 <= radius**2
    return dy[inside], dx[inside], r


def measure_spots(ihc: Any, geom: SpotGeometry) -> pd.DataFrame:
    """Mean RGB of the paper's square and mean DAB OD over the spot disk, per spot.

    Parameters
    ----------
    ihc
        Open :class:`~stpredict.ingest.images.SlideImage` of the IHC.
    geom
        :func:`spot_geometry`.

    Returns
    -------
    pandas.DataFrame
        One row per spot, in the order of ``geom``: ``inside``, ``mean_r, mean_g, mean_b``,
        ``mean_rgb`` (the mean of the three), ``darkness`` (255 - ``mean_rgb``), ``dab_od``.
    """
    h, w = ihc.shape
    n = len(geom.ihc_xy)
    out = np.full((n, 5), np.nan)
    sq0, sq1 = _square_bounds(geom.ihc_xy, geom.square_px)
    dy, dx, r = _disk(geom.disk_radius_px)
    centre = np.rint(geom.ihc_xy).astype(np.int64)
    lo = np.minimum(sq0, centre - r)
    hi = np.maximum(sq1, centre + r + 1)
    inside = np.all(np.isfinite(geom.ihc_xy), axis=1)
    inside &= (lo[:, 0] >= 0) & (lo[:, 1] >= 0) & (hi[:, 0] <= w) & (hi[:, 1] <= h)
    idx = np.flatnonzero(inside)
    idx = idx[np.argsort(lo[idx, 1], kind="stable")]
    while len(idx):
        y0 = int(lo[idx[0], 1])
        band = idx[lo[idx, 1] < y0 + _BAND_PX]
        idx = idx[len(band) :]
        x0, x1 = int(lo[band, 0].min()), int(hi[band, 0].max())
        y1 = int(hi[band, 1].max())
        region = ihc.read_region(x0, y0, x1 - x0, y1 - y0)
        od = dab_od(region)
        for i in band:
            (a, b), (c, d) = sq0[i] - (x0, y0), sq1[i] - (x0, y0)
            out[i, :3] = region[b:d, a:c].reshape(-1, 3).mean(axis=0)
            out[i, 3] = od[centre[i, 1] - y0 + dy, centre[i, 0] - x0 + dx].mean()
    mean_rgb = out[:, :3].mean(axis=1)
    return pd.DataFrame(
        {
            "inside": inside,
            "mean_r": out[:, 0],
            "mean_g": out[:, 1],
            "mean_b": out[:, 2],
            "mean_rgb": mean_rgb,
            "darkness": 255.0 - mean_rgb,
            "dab_od": out[:, 3],
        }
    )


def target_column(predictions: Any, gene: str, sample: str, file: str, experiment: str):
    """Measured (``X``) and predicted (``layers["predicted"]``) values of ``gene``, by spot id.

    Raises
    ------
    InputError
        The experiment's predictions lack the gene (its folds did not select it).
    """
    if gene not in predictions.var_names:
        raise InputError(
            f"experiment '{experiment}' did not predict {gene}, the gene the IHC stains (its "
            f"folds selected {predictions.n_vars} other genes)",
            file=file,
            sample=sample,
            fix=f"use a gene panel that holds {gene} in that experiment (targets.genes.mode: "
            "panel), raise targets.genes.n, or set ihc.experiment to one that predicts it",
        )
    j = int(predictions.var_names.get_loc(gene))

    def dense(m: Any) -> np.ndarray:
        col = m[:, j]
        col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
        return np.asarray(col, dtype=float).ravel()

    ids = predictions.obs["spot_id"].astype(str).to_numpy()
    return (
        pd.Series(dense(predictions.X), index=ids),
        pd.Series(dense(predictions.layers["predicted"]), index=ids),
    )


def spot_table(
    section: Any,
    geom: SpotGeometry,
    measures: pd.DataFrame,
    measured: pd.Series,
    predicted: pd.Series,
) -> pd.DataFrame:
    """Build the per-spot IHC table (``results/ihc/{sample}.tsv``).

    Columns: ``spot_id``, ``x, y`` (H&E full-res px), ``ihc_x, ihc_y`` (IHC px), ``keep`` (passes
    spot QC), the measures of :func:`measure_spots`, ``measured`` and ``predicted`` (the
    experiment's target values of the gene; NaN for spots it did not predict).
    """
    ids = section.obs_names.astype(str)
    keep = (
        section.obs["keep"].to_numpy(bool)
        if "keep" in section.obs
        else np.ones(section.n_obs, dtype=bool)
    )
    table = pd.DataFrame(
        {
            "spot_id": ids,
            "x": geom.he_xy[:, 0],
            "y": geom.he_xy[:, 1],
            "ihc_x": geom.ihc_xy[:, 0],
            "ihc_y": geom.ihc_xy[:, 1],
            "keep": keep,
        }
    )
    table = pd.concat([table, measures.reset_index(drop=True)], axis=1)
    table["measured"] = measured.reindex(ids).to_numpy(float)
    table["predicted"] = predicted.reindex(ids).to_numpy(float)
    return table


def quantify_section(
    qc_path: str | Any,
    ihc_path: str | Any,
    registration_path: str | Any,
    predictions_path: str | Any,
    *,
    gene: str,
    experiment: str,
    square_px: int,
    square_scale: str,
    sample: str,
) -> pd.DataFrame:
    """Measure every spot of a section on its IHC image (the ``quantify_ihc`` job).

    Parameters
    ----------
    qc_path
        The QC'd section AnnData (spots, ``keep``, scale factors).
    ihc_path
        The IHC image.
    registration_path
        The ``register_ihc`` JSON (``matrix``: H&E px -> IHC px).
    predictions_path
        The experiment's predictions of the section (``X`` measured, ``layers["predicted"]``).
    gene, experiment
        The stained gene and the experiment (for messages).
    square_px, square_scale
        The paper's square (see the module docstring).
    sample
        Sample id.
    """
    from stpredict.io import read_h5ad, read_json

    section = read_h5ad(qc_path, sample=sample)
    reg = read_json(registration_path, sample=sample)
    predictions = read_h5ad(predictions_path, sample=sample, images=False)
    measured, predicted = target_column(
        predictions, gene, sample, str(predictions_path), experiment
    )
    geom = spot_geometry(
        section, np.asarray(reg["matrix"], dtype=float), square_px, square_scale, sample
    )
    with open_ihc(ihc_path, sample) as ihc:
        measures = measure_spots(ihc, geom)
    return spot_table(section, geom, measures, measured, predicted)
