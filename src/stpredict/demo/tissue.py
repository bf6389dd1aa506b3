"""Synthetic tissue: smooth class fields per tissue block, views (sections) and H&E / IHC rendering.

A *block* is a piece of tissue described in µm by coarse smooth random fields (class logits,
tissue mask, nuclear-density modulation, a hidden spatial field). A *view* is an image of a
section of that block: an affine map from image pixels to block µm plus an image shape and
µm/px. Consecutive sections are views of the same block with small shifts / rotations.

Rendering is vectorised: nuclei are a thinned Poisson process written into a few impulse
images (one per size / shape bin) that are blurred by Gaussian kernels and soft-thresholded;
stains are composed by Beer–Lambert optical density with skimage's HED vectors.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.color import rgb_from_hed

__all__ = [
    "BG",
    "TUM",
    "STR",
    "IMM",
    "FAT",
    "CLASS_NAMES",
    "Block",
    "View",
    "make_block",
    "view_matrix",
    "label_map",
    "render",
    "sample_field",
    "spot_stats",
    "rng_for",
]

BG, TUM, STR, IMM, FAT = range(5)
CLASS_NAMES = ("background", "tumour", "stroma", "immune", "fat")
BLOCK_RES = 16.0  # µm per coarse block pixel
F_MASK, F_ND, F_HID = 4, 5, 6  # field indices (0..3: class logits tumour..fat)

# nuclei per 1000 µm² by class (tumour, stroma, immune, fat)
DENSITY = {TUM: 7.0, STR: 2.0, IMM: 13.0, FAT: 0.5}
ND_GAIN = 0.4  # nuclear density modulation exp(ND_GAIN * field)


def rng_for(seed: int, key: str) -> np.random.Generator:
    """Return the generator of one named unit of work (independent of process and of Python ``hash``)."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(key.encode())]))


@dataclass(frozen=True)
class Block:
    """Coarse fields of one tissue block, centred on (0, 0) µm."""

    block_id: str
    fields: np.ndarray  # (7, n, n) float32
    half_um: float

    def index(self, bx: np.ndarray, by: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Block µm -> fractional coarse (row, col) index."""
        return (by + self.half_um) / BLOCK_RES, (bx + self.half_um) / BLOCK_RES


def _smooth(rng: np.random.Generator, n: int, sigma_um: float) -> np.ndarray:
    """Standardised periodic Gaussian random field (FFT filtering of white noise)."""
    spec = sfft.rfft2(rng.standard_normal((n, n), dtype=np.float32))
    spec = ndi.fourier_gaussian(spec, sigma_um / BLOCK_RES, n=n)
    f = sfft.irfft2(spec, s=(n, n))
    return (f - f.mean()) / f.std()


@functools.lru_cache(maxsize=4)
def make_block(
    seed: int,
    block_id: str,
    half_um: float,
    a_um: float,
    b_um: float,
    tilt: float = 0.3,
    logit_shift: tuple[float, float, float, float] | None = None,
) -> Block:
    """Generate the coarse fields of a tissue block.

    Parameters
    ----------
    seed, block_id
        Randomness (``rng_for(seed, "block:" + block_id)``).
    half_um
        Half the side of the square block in µm.
    a_um, b_um
        Semi-axes of the elliptical tissue blob (irregularised by noise).
    tilt
        Rotation of the ellipse (radians).
    logit_shift
        Added to the class logits (tumour, stroma, immune, fat): shifts the tissue make-up
        (the demo's planted subtypes, :mod:`stpredict.demo.tcga`); ``None`` = no shift.
    """
    rng = rng_for(seed, "block:" + block_id)
    n = sfft.next_fast_len(int(np.ceil(2 * half_um / BLOCK_RES)) + 1, real=True)
    half_um = (n - 1) * BLOCK_RES / 2
    c = np.arange(n) * BLOCK_RES - half_um
    yy, xx = np.meshgrid(c, c, indexing="ij")
    ct, st = np.cos(tilt), np.sin(tilt)
    u, v = ct * xx + st * yy, -st * xx + ct * yy
    rough = 0.02 * _smooth(rng, n, 40.0)
    tum = 1.25 * _smooth(rng, n, 380.0) + 0.35 * _smooth(rng, n, 110.0) + 0.10 + rough
    stro = 1.00 * _smooth(rng, n, 420.0) + 0.35 * _smooth(rng, n, 110.0) + 0.45 + rough
    imm = 1.10 * _smooth(rng, n, 180.0) + 0.30 * _smooth(rng, n, 60.0) - 0.35
    fat = 1.30 * _smooth(rng, n, 500.0) + 0.20 * _smooth(rng, n, 110.0) - 0.55
    mask = 1.0 - (u / a_um) ** 2 - (v / b_um) ** 2 + 0.30 * _smooth(rng, n, 700.0)
    mask += 0.08 * _smooth(rng, n, 150.0)
    nd = _smooth(rng, n, 300.0)
    hid = _smooth(rng, n, 800.0)
    if logit_shift is not None:
        tum, stro, imm, fat = (
            f + d for f, d in zip((tum, stro, imm, fat), logit_shift, strict=True)
        )
    fields = np.stack([tum, stro, imm, fat, mask, nd, hid]).astype(np.float32)
    return Block(block_id, fields, float(half_um))


def view_matrix(
    mpp: float, shape: tuple[int, int], angle_deg: float, shift_um: tuple[float, float]
):
    """3x3 matrix mapping image px ``[x, y, 1]`` to block µm: rotate about the image centre."""
    h, w = shape
    cx, cy = (w - 1) / 2 * mpp, (h - 1) / 2 * mpp
    a = np.deg2rad(angle_deg)
    ca, sa = np.cos(a), np.sin(a)
    m = np.array(
        [
            [mpp * ca, -mpp * sa, -(ca * cx - sa * cy) + shift_um[0]],
            [mpp * sa, mpp * ca, -(sa * cx + ca * cy) + shift_um[1]],
            [0.0, 0.0, 1.0],
        ]
    )
    return m


@dataclass
class View:
    """One image of a block."""

    block: Block
    matrix: np.ndarray  # 3x3, image px [x, y, 1] -> block µm
    shape: tuple[int, int]  # (H, W)
    mpp: float
    perturb_key: str | None = None  # per-section perturbation of the class fields
    extra: dict = field(default_factory=dict)


def sample_field(view: View, idx: list[int] | int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample block fields at image pixel positions (bilinear)."""
    m = view.matrix
    bx = m[0, 0] * x + m[0, 1] * y + m[0, 2]
    by = m[1, 0] * x + m[1, 1] * y + m[1, 2]
    r, c = view.block.index(bx, by)
    idxs = [idx] if isinstance(idx, int) else idx
    out = [ndi.map_coordinates(view.block.fields[i], [r, c], order=1, mode="nearest") for i in idxs]
    return out[0] if isinstance(idx, int) else np.stack(out)


def label_map(view: View, seed: int) -> np.ndarray:
    """Full-resolution class label map (uint8, 0 = background glass) of a view.

    Fields are sampled on a grid 4x coarser than the image, upsampled 2x bilinearly, reduced
    to labels and repeated 2x; only the bounding box of the tissue mask is refined.
    """
    h, w = view.shape
    f = 4
    hc, wc = -(-h // f), -(-w // f)
    rr = (np.arange(hc) + 0.5) * f - 0.5
    cc = (np.arange(wc) + 0.5) * f - 0.5
    y, x = np.meshgrid(rr, cc, indexing="ij")
    prng = rng_for(seed, "perturb:" + view.perturb_key) if view.perturb_key else None
    sig = 60.0 / (f * view.mpp)

    def perturb(v: np.ndarray, amp: float) -> np.ndarray:
        if prng is None:
            return v
        noise = ndi.gaussian_filter(prng.standard_normal(v.shape), sig)
        return v + amp * noise / max(float(noise.std()), 1e-9)

    mask = perturb(sample_field(view, F_MASK, x.ravel(), y.ravel()).reshape(hc, wc), 0.04)
    lab = np.zeros((h, w), dtype=np.uint8)
    rows, cols = np.flatnonzero((mask > 0).any(axis=1)), np.flatnonzero((mask > 0).any(axis=0))
    if len(rows) == 0:
        return lab
    r0, r1 = max(rows[0] - 2, 0), min(rows[-1] + 3, hc)
    c0, c1 = max(cols[0] - 2, 0), min(cols[-1] + 3, wc)
    xs, ys = x[r0:r1, c0:c1].ravel(), y[r0:r1, c0:c1].ravel()
    logits = sample_field(view, [0, 1, 2, 3], xs, ys).reshape(4, r1 - r0, c1 - c0)
    full_logits = np.zeros((4, hc, wc))
    for i in range(4):  # perturb on the whole grid so the noise does not depend on the box
        full_logits[i, r0:r1, c0:c1] = logits[i]
        full_logits[i] = perturb(full_logits[i], 0.12)
    vals = np.concatenate([full_logits[:, r0:r1, c0:c1], mask[None, r0:r1, c0:c1]])
    up = np.stack([ndi.zoom(v.astype(np.float32), 2, order=1) for v in vals])
    sub = (np.argmax(up[:4], axis=0) + 1).astype(np.uint8)
    sub[up[4] <= 0] = BG
    sub = np.repeat(np.repeat(sub, 2, axis=0), 2, axis=1)
    rs, cs = r0 * f, c0 * f
    re, ce = min(rs + sub.shape[0], h), min(cs + sub.shape[1], w)
    lab[rs:re, cs:ce] = sub[: re - rs, : ce - cs]
    return lab


# nucleus shape bins: (sigma_row_um, sigma_col_um)
BINS = [(1.9, 1.9), (2.6, 2.6), (3.3, 3.3), (4.0, 4.0), (1.4, 3.8), (3.8, 1.4)]
# probability of each bin per class, and stain weight (darkness) range
BIN_P = {
    TUM: [0.0, 0.25, 0.45, 0.30, 0.0, 0.0],
    STR: [0.10, 0.0, 0.0, 0.0, 0.45, 0.45],
    IMM: [0.85, 0.15, 0.0, 0.0, 0.0, 0.0],
    FAT: [0.3, 0.3, 0.0, 0.0, 0.2, 0.2],
}
WEIGHT = {TUM: (0.8, 1.5), STR: (0.8, 1.1), IMM: (1.5, 2.0), FAT: (0.6, 0.9)}
# background stain per class: (H OD, E OD)
BG_STAIN = {
    BG: (0.012, 0.025),
    TUM: (0.16, 0.42),
    STR: (0.04, 0.62),
    IMM: (0.14, 0.30),
    FAT: (0.015, 0.03),
}


def _nuclei(view: View, lab: np.ndarray, seed: int, key: str, box: tuple[int, int, int, int]):
    """Nuclei centres (x, y px), class and shape bin, by thinning a Poisson process."""
    rng = rng_for(seed, "nuclei:" + key)
    r0, r1, c0, c1 = box
    area_um2 = (r1 - r0) * (c1 - c0) * view.mpp**2
    mod_max = np.exp(ND_GAIN * 2.0)
    xs, ys, cls, bins, wts = [], [], [], [], []
    for k in (TUM, STR, IMM, FAT):
        n = rng.poisson(DENSITY[k] * 1e-3 * mod_max * area_um2)
        x = rng.uniform(c0, c1, n)
        y = rng.uniform(r0, r1, n)
        u = rng.uniform(0, 1, n)
        b = rng.choice(len(BINS), size=n, p=BIN_P[k])
        wt = rng.uniform(*WEIGHT[k], n)
        keep = lab[y.astype(np.int64), x.astype(np.int64)] == k
        x, y, u, b, wt = x[keep], y[keep], u[keep], b[keep], wt[keep]
        mod = np.exp(ND_GAIN * np.clip(sample_field(view, F_ND, x, y), -2, 2))
        keep = u < mod / mod_max
        xs.append(x[keep])
        ys.append(y[keep])
        cls.append(np.full(keep.sum(), k, dtype=np.uint8))
        bins.append(b[keep])
        wts.append(wt[keep])
    return (
        np.concatenate(xs),
        np.concatenate(ys),
        np.concatenate(cls),
        np.concatenate(bins),
        np.concatenate(wts),
    )


def render(
    view: View,
    lab: np.ndarray,
    seed: int,
    key: str,
    stain: str = "he",
    dab_level: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render an H&E-like (or IHC, ``stain="ihc"``) RGB image of a view.

    Parameters
    ----------
    view, lab
        The view and its label map (:func:`label_map`).
    seed, key
        Randomness of nuclei, texture and stain variation.
    stain
        ``"he"`` or ``"ihc"`` (haematoxylin counterstain + DAB from ``dab_level``).
    dab_level
        IHC only: full-resolution DAB optical density.

    Returns
    -------
    rgb, nuclei
        ``(H, W, 3)`` uint8 image and ``(n, 2)`` float nuclei centres ``[x, y]`` in px.
    """
    rng = rng_for(seed, "render:" + key)
    h, w = lab.shape
    mpp = view.mpp
    vh, ve, vd = (rgb_from_hed[i].astype(np.float32) for i in range(3))
    # near-white glass with faint noise
    glass_od = BG_STAIN[BG][0] * vh + BG_STAIN[BG][1] * ve
    tile = 255.0 * np.exp(-glass_od)[None, None, :] + rng.normal(0.0, 0.6, (128, 128, 3))
    tile = np.clip(np.rint(tile), 0, 255).astype(np.uint8)
    reps = (-(-h // 128), -(-w // 128), 1)
    rgb = np.ascontiguousarray(np.tile(tile, reps)[:h, :w])
    tissue = np.flatnonzero(lab.any(axis=1)), np.flatnonzero(lab.any(axis=0))
    if len(tissue[0]) == 0:
        return rgb, np.zeros((0, 2))
    pad = 24
    r0, r1 = max(tissue[0][0] - pad, 0), min(tissue[0][-1] + pad + 1, h)
    c0, c1 = max(tissue[1][0] - pad, 0), min(tissue[1][-1] + pad + 1, w)
    sub = lab[r0:r1, c0:c1]
    sh = sub.shape
    x, y, cls, b, wt = _nuclei(view, lab, seed, key, (r0, r1, c0, c1))
    flat = (y.astype(np.int64) - r0) * sh[1] + (x.astype(np.int64) - c0)
    nfield = np.zeros(sh, dtype=np.float32)
    for i, (sr, sc) in enumerate(BINS):
        sel = b == i
        if not sel.any():
            continue
        spr, spc = sr / mpp, sc / mpp
        amp = wt[sel] * 2 * np.pi * spr * spc
        imp = np.bincount(flat[sel], weights=amp, minlength=sh[0] * sh[1])
        imp = imp.astype(np.float32).reshape(sh)
        nfield += ndi.gaussian_filter(imp, (spr, spc), truncate=3.0)
    hval = np.array([BG_STAIN[k][0] for k in range(5)], dtype=np.float32)
    evalue = np.array([BG_STAIN[k][1] for k in range(5)], dtype=np.float32)
    noise = ndi.gaussian_filter(rng.standard_normal(sh, dtype=np.float32), 0.8)
    noise *= np.float32(1.0 / max(float(noise.std()), 1e-6))
    hs, es = (np.float32(v) for v in rng.uniform(0.9, 1.1, 2))  # section stain variation
    nuc = np.exp(np.float32(-1.3) * nfield)
    np.subtract(np.float32(1.0), nuc, out=nuc)
    if stain == "he":
        hod = hval[sub]
        hod += np.float32(1.9) * nuc
        hod += np.float32(0.03) * noise
        eod = evalue[sub]
        fib = ndi.gaussian_filter(rng.standard_normal(sh, dtype=np.float32), (0.6, 3.0 / mpp))
        fib *= np.float32(0.45 / max(float(fib.std()), 1e-6))
        fib += np.float32(1.0)
        is_str = sub == STR
        eod[is_str] *= fib[is_str]
        # fat: white vacuoles with thin pink membranes (contours of a smooth field)
        fh, fw = -(-sh[0] // 2), -(-sh[1] // 2)
        ff = ndi.gaussian_filter(rng.standard_normal((fh, fw), dtype=np.float32), 14.0 / (2 * mpp))
        ff *= np.float32(1.0 / (0.18 * max(float(ff.std()), 1e-9)))
        memb = np.exp(-(ff * ff))
        memb = np.repeat(np.repeat(memb, 2, axis=0), 2, axis=1)[: sh[0], : sh[1]]
        is_fat = sub == FAT
        eod[is_fat] = np.float32(0.03) + np.float32(0.75) * memb[is_fat]
        eod *= np.float32(1.0) + np.float32(0.4) * nuc
        eod += np.float32(0.04) * noise
        dod = None
        hod *= hs
        eod *= es
    elif stain == "ihc":
        if dab_level is None:
            raise ValueError("stain='ihc' needs dab_level")
        hod = np.float32(0.5) * hval[sub] + nuc + np.float32(0.02) * noise
        hod *= hs
        eod = np.full(sh, 0.02, dtype=np.float32)
        dod = dab_level[r0:r1, c0:c1].astype(np.float32) * (
            np.float32(1.0) + np.float32(0.03) * noise
        )
        np.maximum(dod, 0, out=dod)
    else:
        raise ValueError(f"unknown stain {stain!r}")
    np.maximum(hod, 0, out=hod)
    np.maximum(eod, 0, out=eod)
    # write tissue (and nuclei spilling over its border); glass keeps the faint-noise tile
    write = (sub != BG) | (nuc > 0.05)
    if dod is not None:
        write |= dod > 0.01
    out = rgb[r0:r1, c0:c1]
    for ch in range(3):
        od = hod * vh[ch]
        od += eod * ve[ch]
        if dod is not None:
            od += dod * vd[ch]
        val = np.exp(-od)
        val *= np.float32(255.0)
        val += np.float32(0.5)
        out[..., ch][write] = val[write].astype(np.uint8)
    return rgb, np.column_stack([x, y])


def disk_offsets(radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel offsets (dy, dx) inside a disk."""
    r = int(np.ceil(radius_px))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dy**2 + dx**2 <= radius_px**2
    return dy[inside], dx[inside]


def spot_stats(
    lab: np.ndarray, nuclei: np.ndarray, x: np.ndarray, y: np.ndarray, radius_px: float, mpp: float
) -> tuple[np.ndarray, np.ndarray]:
    """Class fractions ``(n, 5)`` and nuclear density (per 1000 µm²) inside spot footprints."""
    dy, dx = disk_offsets(radius_px)
    h, w = lab.shape
    yi = np.clip(np.rint(y).astype(np.int64)[:, None] + dy[None, :], 0, h - 1)
    xi = np.clip(np.rint(x).astype(np.int64)[:, None] + dx[None, :], 0, w - 1)
    vals = lab[yi, xi]
    fr = np.stack([(vals == k).mean(axis=1) for k in range(5)], axis=1)
    if len(nuclei):
        tree = cKDTree(nuclei)
        cnt = tree.query_ball_point(np.column_stack([x, y]), radius_px, return_length=True)
    else:
        cnt = np.zeros(len(x))
    area = np.pi * (radius_px * mpp) ** 2 / 1000.0
    return fr, np.asarray(cnt, dtype=float) / area
