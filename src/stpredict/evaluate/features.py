"""Hand-crafted nuclear features per spot (ST-Net's "hand-crafted features" baseline).

ST-Net (He et al. 2020) described each nucleus by ten features — size (area, major- and
minor-axis length, their ratio), colour (mean red, green, blue) and distance to the adjacent
nuclei in the Delaunay triangulation (maximum, mean, minimum) — and each patch by the mean,
standard deviation, skewness, kurtosis and a ten-bin histogram of every feature, plus the
nuclei count. They used HistomicsTK; we use scikit-image:

1. haematoxylin optical density by colour deconvolution (:func:`skimage.color.rgb2hed`),
   lightly smoothed (Gaussian, σ = 1 µm);
2. one Otsu threshold per section, fitted on the pooled haematoxylin values of a sample of its
   spot crops (a per-patch threshold would "find" nuclei in nucleus-free patches);
3. connected components larger than ``min_area_um2`` after hole filling
   (no watershed split of touching nuclei);
4. vectorised image moments (as :func:`skimage.measure.regionprops`) for size and colour, a Delaunay triangulation
   (:class:`scipy.spatial.Delaunay`) of the centroids within the crop for the distances.

Sizes are in µm² / µm and distances in µm (from the section's µm/px), colours in 0–255, so
features are comparable across sections of different resolution. Histogram bins are fixed
(:data:`HIST_RANGES`, values outside are counted in the end bins) and given as shares of the
patch's nuclei. A patch without nuclei has zero counts, zero histograms and zero moments;
moments of fewer than 2 (std) or 4 (skewness, kurtosis) values are 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import Delaunay, QhullError
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu
from skimage.measure import label
from tqdm.auto import tqdm

from stpredict.errors import GeometryError
from stpredict.ingest.images import SlideImage
from stpredict.patches.geometry import crop_windows

__all__ = [
    "NUCLEUS_FEATURES",
    "HIST_RANGES",
    "hematoxylin",
    "hematoxylin_threshold",
    "segment_nuclei",
    "nucleus_table",
    "patch_features",
    "nuclear_features",
    "feature_names",
]

log = logging.getLogger(__name__)

#: per-nucleus features (ST-Net's ten), in µm², µm, 0-255 and µm
NUCLEUS_FEATURES: tuple[str, ...] = (
    "area_um2", "major_axis_um", "minor_axis_um", "axis_ratio", "mean_r", "mean_g", "mean_b",
    "delaunay_max_um", "delaunay_mean_um", "delaunay_min_um",
)  # fmt: skip
#: fixed histogram ranges per feature
HIST_RANGES: dict[str, tuple[float, float]] = {
    "area_um2": (0.0, 200.0),
    "major_axis_um": (0.0, 30.0),
    "minor_axis_um": (0.0, 20.0),
    "axis_ratio": (1.0, 5.0),
    "mean_r": (0.0, 255.0),
    "mean_g": (0.0, 255.0),
    "mean_b": (0.0, 255.0),
    "delaunay_max_um": (0.0, 60.0),
    "delaunay_mean_um": (0.0, 40.0),
    "delaunay_min_um": (0.0, 30.0),
}
N_BINS = 10
MOMENTS = ("mean", "std", "skew", "kurt")


def feature_names() -> list[str]:
    """Column names of :func:`patch_features` (fixed order)."""
    names = ["n_nuclei"]
    for f in NUCLEUS_FEATURES:
        names += [f"{f}_{m}" for m in MOMENTS]
        names += [f"{f}_hist{b}" for b in range(N_BINS)]
    return names


def hematoxylin(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """Haematoxylin optical density of an RGB uint8 crop, smoothed with σ = 1 µm."""
    h = rgb2hed(rgb)[..., 0]
    sigma = 1.0 / mpp
    return ndi.gaussian_filter(h, sigma) if sigma >= 0.3 else h


def hematoxylin_threshold(crops: Sequence[np.ndarray], mpp: float) -> float:
    """Otsu threshold of the pooled haematoxylin density of ``crops`` (one per section)."""
    values = np.concatenate([hematoxylin(c, mpp).ravel() for c in crops])
    if values.size == 0 or np.ptp(values) == 0:
        return float("inf")
    return float(threshold_otsu(values))


def segment_nuclei(
    rgb: np.ndarray, threshold: float, mpp: float, min_area_um2: float = 10.0
) -> np.ndarray:
    """Label image of the nuclei of one crop (0 = background)."""
    mask = hematoxylin(rgb, mpp) > threshold
    mask = ndi.binary_fill_holes(mask)
    lab = label(mask, connectivity=1)
    min_px = max(1, int(round(min_area_um2 / mpp**2)))
    small = np.bincount(lab.ravel()) < min_px
    small[0] = False
    if small.any():
        lab[small[lab]] = 0
        lab = label(lab > 0, connectivity=1)
    return lab


def _delaunay_distances(cent: np.ndarray) -> np.ndarray:
    """Per point: max, mean and min length (same units as ``cent``) of its Delaunay edges."""
    n = len(cent)
    out = np.full((n, 3), np.nan)
    if n < 3:
        if n == 2:
            d = float(np.hypot(*(cent[0] - cent[1])))
            out[:] = d
        return out
    try:
        tri = Delaunay(cent)
    except QhullError:  # collinear points
        return out
    s = tri.simplices
    edges = np.unique(
        np.sort(np.concatenate([s[:, [0, 1]], s[:, [1, 2]], s[:, [0, 2]]]), axis=1), axis=0
    )
    length = np.hypot(*(cent[edges[:, 0]] - cent[edges[:, 1]]).T)
    ends = np.concatenate([edges[:, 0], edges[:, 1]])
    lens = np.concatenate([length, length])
    cnt = np.bincount(ends, minlength=n)
    has = cnt > 0
    out[has, 1] = np.bincount(ends, weights=lens, minlength=n)[has] / cnt[has]
    mx = np.full(n, -np.inf)
    mn = np.full(n, np.inf)
    np.maximum.at(mx, ends, lens)
    np.minimum.at(mn, ends, lens)
    out[has, 0] = mx[has]
    out[has, 2] = mn[has]
    return out


def _region_stats(labels: np.ndarray, rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Area, centroid, axis lengths and mean colour of labels 1..n (vectorised moments).

    Axis lengths follow :func:`skimage.measure.regionprops`: ``4 * sqrt(eigenvalue)`` of the
    (biased) covariance of the pixel coordinates.
    """
    n = int(labels.max())
    lab = labels.ravel()
    rr, cc = np.indices(labels.shape)
    area = np.bincount(lab, minlength=n + 1)[1:].astype(float)

    def mean(v: np.ndarray) -> np.ndarray:
        return np.bincount(lab, weights=v.ravel().astype(float), minlength=n + 1)[1:] / area

    r, c = mean(rr), mean(cc)
    vrr = mean(rr.astype(float) ** 2) - r**2
    vcc = mean(cc.astype(float) ** 2) - c**2
    vrc = mean(rr.astype(float) * cc) - r * c
    half = np.sqrt(np.maximum(((vrr - vcc) / 2) ** 2 + vrc**2, 0.0))
    centre = (vrr + vcc) / 2
    l1, l2 = np.maximum(centre + half, 0.0), np.maximum(centre - half, 0.0)
    return {
        "area": area,
        "row": r,
        "col": c,
        "major": 4 * np.sqrt(l1),
        "minor": 4 * np.sqrt(l2),
        "mean_r": mean(rgb[..., 0]),
        "mean_g": mean(rgb[..., 1]),
        "mean_b": mean(rgb[..., 2]),
    }


def nucleus_table(rgb: np.ndarray, labels: np.ndarray, mpp: float) -> pd.DataFrame:
    """Compute the ten features of every nucleus of a labelled crop (µm², µm, 0–255)."""
    if labels.max() == 0:
        return pd.DataFrame(columns=list(NUCLEUS_FEATURES), dtype=float)
    t = _region_stats(labels, rgb)
    major, minor = t["major"] * mpp, t["minor"] * mpp
    dist = _delaunay_distances(np.column_stack([t["row"], t["col"]]) * mpp)
    return pd.DataFrame(
        {
            "area_um2": t["area"] * mpp**2,
            "major_axis_um": major,
            "minor_axis_um": minor,
            "axis_ratio": major / np.maximum(minor, mpp),
            "mean_r": t["mean_r"],
            "mean_g": t["mean_g"],
            "mean_b": t["mean_b"],
            "delaunay_max_um": dist[:, 0],
            "delaunay_mean_um": dist[:, 1],
            "delaunay_min_um": dist[:, 2],
        }
    )


def _moments(v: np.ndarray) -> tuple[float, float, float, float]:
    """Mean, s.d. (ddof 1), skewness and excess kurtosis (biased, as scipy.stats' defaults)."""
    n = len(v)
    if n == 0:
        return 0.0, 0.0, 0.0, 0.0
    mean = float(v.mean())
    if n < 2:
        return mean, 0.0, 0.0, 0.0
    d = v - mean
    m2 = float(np.mean(d**2))
    std = float(np.sqrt(m2 * n / (n - 1)))
    if n < 4 or m2 <= 1e-12 * max(1.0, mean**2):
        return mean, std, 0.0, 0.0
    return mean, std, float(np.mean(d**3) / m2**1.5), float(np.mean(d**4) / m2**2 - 3.0)


def patch_features(nuclei: pd.DataFrame) -> np.ndarray:
    """Patch-level features (order of :func:`feature_names`) from the patch's nucleus table.

    The nuclei count, then per nucleus feature its mean, s.d., skewness, kurtosis and the
    shares of the nuclei in each of ten fixed bins (141 values), as ST-Net.
    """
    out = [float(len(nuclei))]
    for f in NUCLEUS_FEATURES:
        v = nuclei[f].to_numpy(dtype=float) if len(nuclei) else np.empty(0)
        v = v[np.isfinite(v)]
        lo, hi = HIST_RANGES[f]
        if len(v):
            hist = np.histogram(np.clip(v, lo, hi), bins=N_BINS, range=(lo, hi))[0] / len(v)
        else:
            hist = np.zeros(N_BINS)
        out += [*_moments(v), *hist.tolist()]
    return np.asarray(out, dtype=np.float64)


def nuclear_features(
    image: SlideImage,
    xy: np.ndarray,
    crop_px: int,
    mpp: float,
    ids: Sequence[str],
    min_area_um2: float = 10.0,
    n_threshold_crops: int = 200,
    band_px: int = 1024,
    progress: bool = True,
) -> pd.DataFrame:
    """Patch-level nuclear features of every spot of a section.

    Parameters
    ----------
    image
        The section's full-resolution H&E.
    xy
        ``(n, 2)`` spot centres ``[x, y]`` in full-resolution pixels.
    crop_px
        Side of the square crop (full-resolution px) around each centre; the field of view.
    mpp
        µm per pixel of ``image``.
    ids
        Spot ids (the table's index).
    min_area_um2
        Smallest nucleus kept, µm².
    n_threshold_crops
        Number of crops (evenly spaced over the spots) pooled to fit the Otsu threshold.
    band_px
        Height of the image bands read at once.
    progress
        Show a tqdm bar.

    Returns
    -------
    pandas.DataFrame
        One row per spot (index ``ids``), columns :func:`feature_names`; ``attrs`` holds the
        threshold and the parameters.
    """
    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    if xy.ndim != 2 or xy.shape[1:] != (2,) or len(ids) != n:
        raise GeometryError(
            f"need (n, 2) centres and n ids, got {xy.shape} and {len(ids)}",
            file=image.path,
            sample=image.sample,
        )
    crop = int(crop_px)
    x0, y0 = crop_windows(xy, crop)

    def read(i: int) -> np.ndarray:
        return image.read_region(int(x0[i]), int(y0[i]), crop, crop, fill=255)

    sample = np.unique(np.linspace(0, n - 1, min(n, n_threshold_crops)).astype(int)) if n else []
    thr = hematoxylin_threshold([read(int(i)) for i in sample], mpp)
    log.info(
        "%s: haematoxylin Otsu threshold %.4f OD from %d crops", image.sample, thr, len(sample)
    )
    names = feature_names()
    feats = np.zeros((n, len(names)))
    order = np.argsort(y0, kind="stable")
    start = 0
    with tqdm(
        total=n, desc=f"nuclei {image.sample or ''}", unit="spot", disable=not progress, leave=False
    ) as bar:
        while start < n:
            top = int(y0[order[start]])
            stop = start
            while stop < n and int(y0[order[stop]]) + crop - top <= max(band_px, crop):
                stop += 1
            grp = order[start:stop]
            bx0, bx1 = int(x0[grp].min()), int(x0[grp].max()) + crop
            by1 = int(y0[grp].max()) + crop
            region = image.read_region(bx0, top, bx1 - bx0, by1 - top, fill=255)
            for i in grp:
                ox, oy = int(x0[i]) - bx0, int(y0[i]) - top
                rgb = region[oy : oy + crop, ox : ox + crop]
                lab = segment_nuclei(rgb, thr, mpp, min_area_um2)
                feats[i] = patch_features(nucleus_table(rgb, lab, mpp))
            bar.update(len(grp))
            start = stop
    table = pd.DataFrame(feats, index=pd.Index([str(i) for i in ids], name="id"), columns=names)
    table.attrs = {
        "hematoxylin_threshold": thr,
        "crop_px": crop,
        "mpp": mpp,
        "fov_um": crop * mpp,
        "min_area_um2": min_area_um2,
    }
    return table
