"""Registration of an IHC image of an adjacent section to the section's H&E image.

Two steps, both on the haematoxylin channel (``skimage.color.rgb2hed``), the stain that H&E and
a haematoxylin-counterstained IHC share (eosin and DAB differ):

1. **Feature matching** on coarse levels of both images (``match_um_px`` µm per pixel, default
   8): ORB keypoints and binary descriptors, cross-checked matches with Lowe's ratio test, and a
   RANSAC affine transform (``skimage.measure.ransac``, seeded) restricted to plausible
   transforms (no mirroring, scale 0.5-2, little shear). Its inlier residual, in H&E
   full-resolution px, is reported as ``ransac_residual_px``; the same inlier matches under the
   refined transform (the one used) give ``refined_residual_px``, the summary's
   ``registration_residual_px``. The RANSAC fit minimises the match residual, so it is the lower
   of the two even where the refined transform is closer to the truth (keypoint localisation
   noise: see step 2).
2. **Refinement** on a finer level (``refine_um_px``, default 4) by maximising the enhanced
   correlation coefficient (ECC, Evangelidis & Psarakis 2008) of the two smoothed haematoxylin
   images with Gauss-Newton steps over the six affine parameters, started from the RANSAC fit.
   Keypoints sit on corners of tissue regions and are located to about one coarse pixel; ECC
   uses every pixel of the overlap, so it reaches a fraction of a pixel, and it is invariant to
   a linear change of intensity between the stains. The refinement is kept only when it raises
   the correlation and stays within ``max_refine_um`` of the RANSAC fit; otherwise the RANSAC
   transform is used and the JSON says why.

Transforms are 3 x 3 matrices mapping H&E full-resolution px ``[x, y, 1]`` to IHC
full-resolution px (the convention of the demo's ``*_affine.json``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from stpredict.errors import GeometryError, InputError

__all__ = [
    "Level",
    "feature_level",
    "match_features",
    "fit_affine",
    "refine_ecc",
    "register_images",
    "apply_affine",
    "affine_error",
    "read_known_affine",
    "register_section",
    "open_ihc",
]

log = logging.getLogger(__name__)

#: plausible registration transforms: isotropic scale range, largest anisotropy / shear
_SCALE_RANGE = (0.5, 2.0)
_MAX_ANISOTROPY = 1.25


@dataclass(frozen=True)
class Level:
    """One downscaled feature image of a slide.

    Attributes
    ----------
    image
        ``(h, w)`` float32 haematoxylin optical density, smoothed and scaled to [0, 1].
    to_full
        3 x 3 matrix mapping level px ``[x, y, 1]`` to full-resolution px.
    um_px
        µm per level pixel.
    """

    image: np.ndarray
    to_full: np.ndarray
    um_px: float


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density of an RGB uint8 image (``rgb2hed`` channel 0), float32."""
    from skimage.color import rgb2hed

    return rgb2hed(rgb)[..., 0].astype(np.float32)


def feature_level(slide: Any, mpp: float, um_px: float, smooth_um: float) -> Level:
    """Return the smoothed haematoxylin image of ``slide`` at about ``um_px`` µm per pixel.

    Parameters
    ----------
    slide
        An open :class:`stpredict.ingest.images.SlideImage`.
    mpp
        µm per full-resolution pixel of the slide.
    um_px
        Target µm per pixel of the level (never finer than the slide itself).
    smooth_um
        Standard deviation of the Gaussian smoothing, µm (nuclei differ between adjacent
        sections; tissue regions do not).
    """
    h, w = slide.shape
    size = int(min(max(h, w), max(16, round(max(h, w) * mpp / um_px))))
    thumb, _ = slide.thumbnail(size)
    sx, sy = thumb.shape[1] / w, thumb.shape[0] / h
    # a pixel of a box-downscaled image covers full-res [i / s, (i + 1) / s): centre (i + .5)/s - .5
    to_full = np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1]])
    level_um = mpp / sx
    img = ndi.gaussian_filter(haematoxylin(thumb), smooth_um / level_um)
    lo, hi = np.percentile(img, [1.0, 99.5])
    img = np.clip((img - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)
    return Level(img, to_full, float(level_um))


def apply_affine(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map ``(n, 2)`` points ``[x, y]`` through a 3 x 3 affine matrix."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    return xy @ m[:2, :2].T + m[:2, 2]


def _plausible(m: np.ndarray) -> bool:
    a = m[:2, :2]
    det = float(np.linalg.det(a))
    if not np.all(np.isfinite(m)) or det <= 0:
        return False  # singular or mirrored
    s = np.linalg.svd(a, compute_uv=False)
    scale = float(np.sqrt(det))
    return _SCALE_RANGE[0] <= scale <= _SCALE_RANGE[1] and s[0] / s[1] <= _MAX_ANISOTROPY


def match_features(
    fixed: Level, moving: Level, n_keypoints: int, max_ratio: float = 0.9
) -> tuple[np.ndarray, np.ndarray]:
    """ORB keypoints matched between two levels, returned in full-resolution px ``[x, y]``.

    Returns
    -------
    src, dst
        ``(n, 2)`` matched positions in the fixed (H&E) and the moving (IHC) image; empty
        when either level has no keypoints.
    """
    from skimage.feature import ORB, match_descriptors

    found = []
    for level in (fixed, moving):
        orb = ORB(n_keypoints=n_keypoints, fast_threshold=0.05)
        try:
            orb.detect_and_extract(level.image)
        except RuntimeError:  # no keypoints at all (a blank image)
            return np.zeros((0, 2)), np.zeros((0, 2))
        found.append((orb.keypoints[:, ::-1].copy(), orb.descriptors.copy()))
    (ka, da), (kb, db) = found
    if not len(ka) or not len(kb):
        return np.zeros((0, 2)), np.zeros((0, 2))
    pairs = match_descriptors(da, db, cross_check=True, max_ratio=max_ratio)
    src = apply_affine(fixed.to_full, ka[pairs[:, 0]])
    dst = apply_affine(moving.to_full, kb[pairs[:, 1]])
    return src, dst


def fit_affine(
    src: np.ndarray, dst: np.ndarray, threshold_px: float, seed: int, max_trials: int = 2000
) -> tuple[np.ndarray | None, np.ndarray]:
    """RANSAC affine from matched points (plausible transforms only).

    Returns
    -------
    matrix, inliers
        The 3 x 3 transform fitted on the inliers (``None`` when no model was found) and the
        boolean inlier mask.
    """
    from skimage.measure import ransac
    from skimage.transform import AffineTransform

    if len(src) < 3:
        return None, np.zeros(len(src), dtype=bool)
    model, inliers = ransac(
        (src, dst),
        AffineTransform,
        min_samples=3,
        residual_threshold=threshold_px,
        max_trials=max_trials,
        is_model_valid=lambda model, *_: _plausible(model.params),
        rng=seed,
    )
    if model is None or inliers is None:
        return None, np.zeros(len(src), dtype=bool)
    return np.asarray(model.params, dtype=float), np.asarray(inliers, dtype=bool)


class _EccGrid:
    """The template pixels ECC uses: the fixed level cropped to its tissue (plus a margin)."""

    def __init__(self, fixed: Level, margin_px: int = 8) -> None:
        img = fixed.image
        rows = np.flatnonzero((img > 0.1).any(axis=1))
        cols = np.flatnonzero((img > 0.1).any(axis=0))
        if len(rows) and len(cols):
            r0, r1 = max(rows[0] - margin_px, 0), min(rows[-1] + margin_px + 1, img.shape[0])
            c0, c1 = max(cols[0] - margin_px, 0), min(cols[-1] + margin_px + 1, img.shape[1])
        else:
            r0, r1, c0, c1 = 0, img.shape[0], 0, img.shape[1]
        self.shape = (r1 - r0, c1 - c0)
        yy, xx = np.mgrid[r0:r1, c0:c1]
        self.x = xx.ravel().astype(np.float64)
        self.y = yy.ravel().astype(np.float64)
        self.t = img[r0:r1, c0:c1].ravel().astype(np.float64)


def _ecc_step(grid: _EccGrid, moving: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float] | None:
    """One Gauss-Newton ECC step: the parameter update and the current correlation."""
    x, y = grid.x, grid.y
    u = w[0, 0] * x + w[0, 1] * y + w[0, 2]
    v = w[1, 0] * x + w[1, 1] * y + w[1, 2]
    warped = ndi.map_coordinates(moving, [v, u], order=1, mode="nearest")
    gy, gx = np.gradient(warped.reshape(grid.shape))
    # gradient of the moving image at the warped points: grad(warped) @ inv(A)
    ainv = np.linalg.inv(w[:2, :2])
    gx, gy = gx.ravel(), gy.ravel()
    gxi = gx * ainv[0, 0] + gy * ainv[1, 0]
    gyi = gx * ainv[0, 1] + gy * ainv[1, 1]
    h, wd = moving.shape
    use = (u >= 2) & (u <= wd - 3) & (v >= 2) & (v <= h - 3)  # inside, gradients unpadded
    n = int(use.sum())
    if n < 100:
        return None
    xu, yu, gxu, gyu = x[use], y[use], gxi[use], gyi[use]
    jt = np.empty((6, n))  # the Jacobian, transposed: one contiguous row per parameter
    np.multiply(gxu, xu, out=jt[0])
    np.multiply(gxu, yu, out=jt[1])
    jt[2] = gxu
    np.multiply(gyu, xu, out=jt[3])
    np.multiply(gyu, yu, out=jt[4])
    jt[5] = gyu
    iw = warped[use]
    iw -= iw.mean()
    tt = grid.t[use]
    tt -= tt.mean()
    try:
        hinv = np.linalg.inv(jt @ jt.T)
    except np.linalg.LinAlgError:
        return None
    ig, tg = jt @ iw, jt @ tt
    num = iw @ iw - ig @ hinv @ ig
    den = tt @ iw - tg @ hinv @ ig
    lam = num / den if den > 0 else 1.0
    rho = float(tt @ iw / np.sqrt(max(float((tt @ tt) * (iw @ iw)), 1e-30)))
    return hinv @ (lam * tg - ig), rho


def _level_warp(fixed: Level, moving: Level, m: np.ndarray) -> np.ndarray:
    """Express a full-resolution affine as a map from fixed-level px to moving-level px."""
    return np.linalg.inv(moving.to_full) @ m @ fixed.to_full


def ecc_correlation(fixed: Level, moving: Level, m: np.ndarray) -> float:
    """Correlation of the fixed level and the moving level warped by ``m`` (full-res affine)."""
    out = _ecc_step(_EccGrid(fixed), moving.image, _level_warp(fixed, moving, m))
    return float("nan") if out is None else out[1]


def refine_ecc(
    fixed: Level, moving: Level, m0: np.ndarray, max_iter: int = 40
) -> tuple[np.ndarray, float, float, int]:
    """Refine a full-resolution affine by maximising the ECC of two levels.

    Returns
    -------
    matrix, rho_start, rho_end, iterations
        The refined 3 x 3 transform and the correlation before and after.
    """
    grid = _EccGrid(fixed)
    w = _level_warp(fixed, moving, m0)
    rho0 = float("nan")
    it = 0
    for it in range(1, max_iter + 1):
        out = _ecc_step(grid, moving.image, w)
        if out is None:
            break
        dp, rho = out
        if it == 1:
            rho0 = rho
        w = w.copy()
        w[0] += dp[:3]
        w[1] += dp[3:]
        if np.abs(dp[[2, 5]]).max() < 1e-2 and np.abs(dp[[0, 1, 3, 4]]).max() < 1e-5:
            break  # below a hundredth of a level pixel across a thousand pixels
    m = moving.to_full @ w @ np.linalg.inv(fixed.to_full)
    return m, rho0, ecc_correlation(fixed, moving, m), it


def affine_error(m: np.ndarray, reference: np.ndarray, xy: np.ndarray) -> dict[str, float]:
    """Distance between two H&E -> IHC transforms at points ``xy``, in H&E full-res px.

    The IHC positions given by ``m`` are mapped back with ``reference``'s inverse, so the error
    is a displacement in the H&E image.
    """
    back = apply_affine(np.linalg.inv(reference), apply_affine(m, xy))
    d = np.linalg.norm(back - np.asarray(xy, dtype=float), axis=1)
    return {"mean": float(d.mean()), "median": float(np.median(d)), "max": float(d.max())}


def _residual_he_px(m: np.ndarray, src: np.ndarray, dst: np.ndarray) -> float:
    """RMS distance, in H&E full-res px, between H&E keypoints and their IHC matches mapped back."""
    if not len(src):
        return float("nan")
    back = apply_affine(np.linalg.inv(m), dst)
    return float(np.sqrt(np.mean(np.sum((back - src) ** 2, axis=1))))


def read_known_affine(path: str | os.PathLike[str], sample: str | None = None) -> np.ndarray:
    """Read a known H&E -> IHC transform: a JSON object with a 3 x 3 (or 2 x 3) ``matrix``."""
    import json

    try:
        with open(path) as fh:
            m = np.asarray(json.load(fh)["matrix"], dtype=float)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"cannot read a known affine transform ({exc})",
            file=path,
            sample=sample,
            fix='give a JSON object with "matrix": [[a, b, tx], [c, d, ty], [0, 0, 1]] mapping '
            "H&E full-resolution px [x, y, 1] to IHC px",
        ) from None
    if m.shape == (2, 3):
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    if m.shape != (3, 3) or not np.all(np.isfinite(m)):
        raise InputError(
            f"the known affine transform has shape {m.shape}, not 3 x 3",
            file=path,
            sample=sample,
            fix="give a 3 x 3 (or 2 x 3) matrix",
        )
    return m


@dataclass(frozen=True)
class _Settings:
    match_um_px: float
    refine_um_px: float
    smooth_um: float
    n_keypoints: int
    ransac_um: float
    min_inliers: int
    max_refine_um: float
    seed: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], seed: int) -> _Settings:
        return cls(
            match_um_px=float(cfg["match_um_px"]),
            refine_um_px=float(cfg["refine_um_px"]),
            smooth_um=float(cfg["smooth_um"]),
            n_keypoints=int(cfg["n_keypoints"]),
            ransac_um=float(cfg["ransac_um"]),
            min_inliers=int(cfg["min_inliers"]),
            max_refine_um=float(cfg["max_refine_um"]),
            seed=int(seed),
        )


def _coarse_fit(he: Any, ihc: Any, mpp_he: float, mpp_ihc: float, st: _Settings, sample: str):
    fixed = feature_level(he, mpp_he, st.match_um_px, st.smooth_um)
    moving = feature_level(ihc, mpp_ihc, st.match_um_px, st.smooth_um)
    src, dst = match_features(fixed, moving, st.n_keypoints)
    m, inliers = fit_affine(src, dst, st.ransac_um / mpp_ihc, st.seed)
    n_in = int(inliers.sum())
    if m is None or n_in < st.min_inliers:
        raise GeometryError(
            f"registration of the IHC image to the H&E failed: {n_in} of {len(src)} feature "
            f"matches agree on one plausible affine transform (at least {st.min_inliers} needed)",
            file=ihc.path,
            sample=sample,
            fix="check that the sheet's ihc_image shows a section adjacent to this one, not "
            "mirrored (flip it) and stained with a haematoxylin counterstain; or lower "
            "ihc.registration.min_inliers / raise ihc.registration.match_um_px",
        )
    return m, src[inliers], dst[inliers], len(src)


def register_images(
    he: Any,
    ihc: Any,
    mpp_he: float,
    mpp_ihc: float,
    settings: Mapping[str, Any],
    seed: int,
    sample: str,
) -> dict[str, Any]:
    """Register an IHC slide to an H&E slide: RANSAC on ORB matches, then ECC refinement.

    Parameters
    ----------
    he, ihc
        Open :class:`~stpredict.ingest.images.SlideImage` objects.
    mpp_he, mpp_ihc
        µm per full-resolution pixel of each.
    settings
        ``ihc.registration`` of the config.
    seed
        Seed of RANSAC's sampling.
    sample
        Sample id, for messages.

    Returns
    -------
    dict
        ``matrix`` (the final transform, H&E full-res px -> IHC px), ``ransac_matrix``,
        ``n_matches``, ``n_inliers``, ``ransac_residual_px`` (RMS inlier residual of the RANSAC
        fit, H&E full-res px), ``refined_residual_px`` (the same inliers under the final
        transform), ``ecc_start`` / ``ecc_end``, ``ecc_iterations``, ``refined`` (bool),
        ``refine_shift_px`` (largest displacement between the RANSAC and the refined transform
        over the image corners, H&E px), ``scale``, ``rotation_deg`` and ``note``.

    Raises
    ------
    GeometryError
        Fewer than ``min_inliers`` matches agree on a plausible affine transform.
    """
    st = _Settings.from_config(settings, seed)
    m0, src, dst, n_matches = _coarse_fit(he, ihc, mpp_he, mpp_ihc, st, sample)
    # ECC on the matching level, then on the finer level (few iterations left there)
    m1, iters = m0, []
    for um_px in dict.fromkeys([st.match_um_px, st.refine_um_px]):
        fixed = feature_level(he, mpp_he, um_px, st.smooth_um)
        moving = feature_level(ihc, mpp_ihc, um_px, st.smooth_um)
        m1, _, _, n_it = refine_ecc(fixed, moving, m1)
        iters.append(n_it)
    rho0 = ecc_correlation(fixed, moving, m0)
    rho1 = ecc_correlation(fixed, moving, m1)
    h, w = he.shape
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=float)
    shift = float(
        np.max(np.linalg.norm(apply_affine(m1, corners) - apply_affine(m0, corners), axis=1))
    )
    shift_he = shift / float(np.sqrt(abs(np.linalg.det(m0[:2, :2]))))
    note = "ECC refinement accepted"
    refined = bool(np.isfinite(rho1) and rho1 > rho0 and _plausible(m1))
    if refined and shift_he * mpp_he > st.max_refine_um:
        refined = False
        note = (
            f"ECC refinement rejected: it moved the transform by {shift_he * mpp_he:.0f} µm "
            f"(more than max_refine_um {st.max_refine_um:g})"
        )
    elif not refined:
        note = f"ECC refinement rejected: correlation {rho0:.3f} -> {rho1:.3f}"
    if not refined:
        log.warning("%s: %s; the RANSAC transform is used", sample, note)
    m = m1 if refined else m0
    return {
        "matrix": m.tolist(),
        "ransac_matrix": m0.tolist(),
        "maps": "H&E full-resolution px [x, y, 1] -> IHC full-resolution px",
        "n_matches": int(n_matches),
        "n_inliers": len(src),
        "ransac_residual_px": _residual_he_px(m0, src, dst),
        "refined_residual_px": _residual_he_px(m, src, dst),
        "ecc_start": rho0,
        "ecc_end": rho1 if refined else rho0,
        "ecc_iterations": iters,
        "refined": refined,
        "refine_shift_px": shift_he,
        "scale": float(np.sqrt(abs(np.linalg.det(m[:2, :2])))),
        "rotation_deg": float(np.degrees(np.arctan2(m[1, 0], m[0, 0]))),
        "match_um_px": st.match_um_px,
        "refine_um_px": fixed.um_px,
        "note": note,
    }


def open_ihc(path: str | os.PathLike[str], sample: str) -> Any:
    """Open the IHC image of a section (a missing file names the sheet's ihc_image column)."""
    from stpredict.ingest.images import open_image

    if not os.path.isfile(path):
        raise InputError(
            "IHC image file does not exist",
            file=path,
            sample=sample,
            fix="check the 'ihc_image' column of the sample sheet (paths are relative to the "
            "directory Snakemake runs in)",
        )
    return open_image(path, sample=sample, column="ihc_image")


def register_section(
    section_path: str | os.PathLike[str],
    image_path: str | os.PathLike[str],
    ihc_path: str | os.PathLike[str],
    settings: Mapping[str, Any],
    *,
    seed: int,
    sample: str,
    known_affine: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Register the IHC image of a section to its H&E (the ``register_ihc`` job).

    Parameters
    ----------
    section_path
        The section AnnData (its µm/px and spot centres).
    image_path, ihc_path
        The H&E and the IHC image.
    settings
        ``ihc.registration`` of the config.
    seed
        Seed of RANSAC.
    sample
        Sample id.
    known_affine
        Optional JSON with a known transform; its error is then reported (mean / median / max
        over the section's spots, H&E full-res px) as ``known_affine_error_px`` (the final
        transform) and ``known_affine_error_ransac_px`` (before refinement).

    Returns
    -------
    dict
        :func:`register_images`'s record plus the µm/px used and the image paths.
    """
    from stpredict.ingest.images import open_image
    from stpredict.io import read_h5ad

    section = read_h5ad(section_path, sample=sample)
    mpp_he = float(section.uns["stpredict"]["mpp"])
    with open_image(image_path, sample=sample) as he, open_ihc(ihc_path, sample) as ihc:
        mpp_ihc, source = ihc.mpp_tags, "image tags"
        if mpp_ihc is None:
            mpp_ihc, source = mpp_he, "assumed equal to the H&E (the IHC image records none)"
            log.warning("%s: the IHC image records no µm/px; assuming the H&E's %g", sample, mpp_he)
        result = register_images(he, ihc, mpp_he, float(mpp_ihc), settings, seed, sample)
    result.update(
        {
            "sample_id": sample,
            "image": str(image_path),
            "ihc_image": str(ihc_path),
            "mpp_he": mpp_he,
            "mpp_ihc": float(mpp_ihc),
            "mpp_ihc_source": source,
        }
    )
    if known_affine:
        ref = read_known_affine(known_affine, sample)
        xy = np.asarray(section.obsm["spatial"], dtype=float)[:, :2]
        result["known_affine"] = str(known_affine)
        result["known_affine_error_px"] = affine_error(np.asarray(result["matrix"]), ref, xy)
        result["known_affine_error_ransac_px"] = affine_error(
            np.asarray(result["ransac_matrix"]), ref, xy
        )
    return result
