"""The demo cohort: Visium sections, legacy ST sections, IHC, unlabelled H&E and a whole slide.

Also non-tissue textures (``irrelevant/``), the irrelevant images of the semi-supervised control.

Everything is deterministic: each unit of work draws from
``np.random.SeedSequence([seed, zlib.crc32(key.encode())])`` and runs single-threaded BLAS, so
the bytes written do not depend on ``threads``.
"""

from __future__ import annotations

import functools
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage as ndi

from stpredict.config import SHEET_COLUMNS as CONFIG_SHEET_COLUMNS
from stpredict.demo import formats as fmt
from stpredict.demo.genes import Panel, expected_shares, make_panel
from stpredict.demo.tcga import COHORT_MPP, cohort_layout, cohort_paths, task_cohort_slide
from stpredict.demo.textures import render_texture
from stpredict.demo.tissue import (
    BG,
    F_HID,
    TUM,
    View,
    label_map,
    make_block,
    render,
    rng_for,
    sample_field,
    spot_stats,
    view_matrix,
)
from stpredict.ingest.geometry import visium_lattice
from stpredict.io import atomic_path, write_json, write_table

__all__ = ["make_demo", "demo_sheet", "demo_outputs", "demo_slides", "SHEET_COLUMNS"]

SHEET_COLUMNS = list(CONFIG_SHEET_COLUMNS)

# ---------------------------------------------------------------- geometry constants
VIS_ROWS, VIS_COLS = 78, 128
VIS_SPOT_UM, VIS_PITCH_UM, VIS_FOOTPRINT_UM = 55.0, 100.0, 65.0
ST_NX, ST_NY = 33, 35
ST_SPOT_UM, ST_PITCH_UM = 100.0, 200.0
VIS_DEPTH, ST_DEPTH = 9000.0, 3000.0
PERM_FACTOR = 0.03


@dataclass(frozen=True)
class VisiumSpec:
    """One Visium section."""

    sample: str
    patient: str
    block: str
    layout: str  # "sr1" | "sr2"
    matrix: str  # "h5" | "mtx"
    series: str
    order: str
    array_rot: float  # deg, array vs image
    tissue_rot: float  # deg, section vs block
    shift: tuple[float, float]  # µm, section vs block
    depth_factor: float
    perm: bool = False


@dataclass(frozen=True)
class STSpec:
    """One legacy ST section."""

    patient: str
    section: str
    style: str  # "stnet" | "selection" | "published"
    array_rot: float
    tissue_rot: float
    shift: tuple[float, float]
    depth_factor: float

    @property
    def sample(self) -> str:
        """Sample id ``{patient}_{section}``."""
        return f"{self.patient}_{self.section}"


def _visium_specs(small: bool) -> list[VisiumSpec]:
    specs = [
        VisiumSpec("P1_D1", "P1", "P1", "sr1", "h5", "P1_D", "1", 0.7, 0.0, (0.0, 0.0), 1.0),
        VisiumSpec("P1_D2", "P1", "P1", "sr2", "h5", "P1_D", "2", -1.1, 1.2, (40.0, -30.0), 0.9, True),
        VisiumSpec("P1_D3", "P1", "P1", "sr2", "h5", "P1_D", "3", 1.6, -0.9, (-50.0, 60.0), 1.15),
        VisiumSpec("P2_A1", "P2", "P2", "sr2", "mtx", "", "", -0.6, 0.0, (0.0, 0.0), 0.8),
    ]  # fmt: skip
    return [s for s in specs if s.sample != "P1_D3"] if small else specs


_ST_FULL = [
    ("BC50001", ["C1", "C2", "D1"]),
    ("BC50002", ["C1", "C2"]),
    ("BC50003", ["D2", "E1", "E2"]),
    ("BC50004", ["C1", "D1"]),
    ("BC50005", ["C1", "C2"]),
    ("BC50006", ["D2", "E1"]),
]
_ST_SMALL = [("BC50001", ["C1"]), ("BC50002", ["C2"]), ("BC50005", ["C1"])]


def _st_specs(small: bool) -> list[STSpec]:
    out = []
    for pi, (patient, sections) in enumerate(_ST_SMALL if small else _ST_FULL):
        for si, section in enumerate(sections):
            style = "stnet"
            if (patient, section) == ("BC50002", "C2"):
                style = "selection"
            elif patient == "BC50005":
                style = "published"
            k = 3 * pi + si
            out.append(
                STSpec(
                    patient,
                    section,
                    style,
                    array_rot=(-1) ** k * (0.4 + 0.25 * (k % 4)),
                    tissue_rot=(-1) ** (k + 1) * 4.0 * (k % 3),
                    shift=(60.0 * ((k % 5) - 2), -50.0 * ((k % 3) - 1)),
                    depth_factor=0.8 + 0.1 * (k % 5),
                )
            )
    return out


def _n_unlabeled(small: bool) -> int:
    return 1 if small else 4


def _n_irrelevant(small: bool) -> int:
    return 1 if small else 4


def _vis_mpp(small: bool) -> float:
    return 4.0 if small else 2.0


def _st_mpp(small: bool) -> float:
    return 5.0 if small else 2.5


UNL_MPP = 2.0
WSI_MPP = 2.0


def _unl_size(small: bool) -> int:
    return 640 if small else 1500


def _wsi_shape(small: bool) -> tuple[int, int]:
    return (1280, 1536) if small else (5000, 6000)


# ---------------------------------------------------------------- paths
def _o(outdir: str | Path) -> str:
    return str(outdir).rstrip("/") or "."


def _vis_paths(outdir: str, s: VisiumSpec) -> dict[str, str]:
    base = f"{outdir}/visium/{s.sample}"
    outs = f"{base}/outs"
    clus = "graphclust" if s.layout == "sr1" else "gene_expression_graphclust"
    pos = "tissue_positions_list.csv" if s.layout == "sr1" else "tissue_positions.csv"
    mat = "filtered_feature_bc_matrix.h5" if s.matrix == "h5" else "filtered_feature_bc_matrix"
    return {
        "base": base,
        "outs": outs,
        "matrix": f"{outs}/{mat}",
        "positions": f"{outs}/spatial/{pos}",
        "scalefactors": f"{outs}/spatial/scalefactors_json.json",
        "hires": f"{outs}/spatial/tissue_hires_image.png",
        "lowres": f"{outs}/spatial/tissue_lowres_image.png",
        "clusters": f"{outs}/analysis/clustering/{clus}/clusters.csv",
        "image": f"{base}/{s.sample}_fullres.tif",
        "annotation": f"{base}/annotation.csv",
        "truth": f"{outdir}/truth/{s.sample}_spots.tsv",
    }


def _ihc_paths(outdir: str) -> dict[str, str]:
    return {
        "image": f"{outdir}/ihc/P1_D2_ESR1_ihc.tif",
        "affine": f"{outdir}/ihc/P1_D2_ESR1_affine.json",
    }


def _st_paths(outdir: str, s: STSpec) -> dict[str, str]:
    base = f"{outdir}/st/{s.patient}"
    p, sec = s.patient, s.section
    if s.style == "published":
        counts, spots, image = (
            f"{base}/{p}_{sec}_stdata.tsv.gz",
            f"{base}/spots_{p}_{sec}.csv.gz",
            f"{base}/HE_{p}_{sec}.jpg",
        )
    else:
        counts, image = f"{base}/{p}_{sec}.tsv.gz", f"{base}/{p}_{sec}.jpg"
        spots = (
            f"{base}/{p}_{sec}_selection.tsv"
            if s.style == "selection"
            else f"{base}/{p}_{sec}.spots.txt"
        )
    return {
        "counts": counts,
        "spots": spots,
        "image": image,
        "annotation": f"{base}/{p}_{sec}_Coords.tsv",
        "truth": f"{outdir}/truth/{s.sample}_spots.tsv",
    }


def _misc_paths(outdir: str, small: bool) -> dict[str, Any]:
    return {
        "unlabeled": [f"{outdir}/unlabeled/U{i}.jpg" for i in range(1, _n_unlabeled(small) + 1)],
        "images_tsv": f"{outdir}/unlabeled/images.tsv",
        "irrelevant": [f"{outdir}/irrelevant/I{i}.jpg" for i in range(1, _n_irrelevant(small) + 1)],
        "irrelevant_tsv": f"{outdir}/irrelevant/images.tsv",
        "wsi": f"{outdir}/wsi/W1.tif",
        "slides_tsv": f"{outdir}/wsi/slides.tsv",
        "bulk": f"{outdir}/wsi/bulk_counts.tsv",
        "gene_roles": f"{outdir}/gene_roles.tsv",
        "gene_ids": f"{outdir}/gene_ids.tsv",
        "archive": cohort_paths(outdir, small),
    }


# ---------------------------------------------------------------- public: sheet and outputs
def demo_sheet(outdir: str | Path = "results/demo", small: bool = False) -> pd.DataFrame:
    """Sample-sheet rows (DESIGN.md columns) pointing at the files :func:`make_demo` writes.

    Parameters
    ----------
    outdir
        Output folder given to :func:`make_demo` (paths are ``outdir``-prefixed strings).
    small
        The small (unit-test) cohort.

    Returns
    -------
    pandas.DataFrame
        All columns are strings; missing optional values are ``""``.
    """
    od = _o(outdir)
    rows = []
    for s in _visium_specs(small):
        p = _vis_paths(od, s)
        rows.append(
            {
                "sample_id": s.sample,
                "patient_id": s.patient,
                "platform": "visium",
                "raw": p["outs"],
                "spots": "",
                "image": p["image"],
                "annotation": p["annotation"],
                "clusters": "",
                "ihc_image": _ihc_paths(od)["image"] if s.perm else "",
                "ihc_gene": "ESR1" if s.perm else "",
                "series": s.series,
                "order": s.order,
                "mpp": f"{_vis_mpp(small):g}",
            }
        )
    for s in _st_specs(small):
        p = _st_paths(od, s)
        rows.append(
            {
                "sample_id": s.sample,
                "patient_id": s.patient,
                "platform": "st",
                "raw": p["counts"],
                "spots": p["spots"],
                "image": p["image"],
                "annotation": p["annotation"],
                "clusters": "",
                "ihc_image": "",
                "ihc_gene": "",
                "series": "",
                "order": "",
                "mpp": f"{_st_mpp(small):g}",
            }
        )
    return pd.DataFrame(rows, columns=SHEET_COLUMNS).astype(str)


def demo_slides(outdir: str | Path = "results/demo", small: bool = False) -> pd.DataFrame:
    """Return the demo's slide table (``wsi/slides.tsv``): W1, the unlabelled images, the archive.

    Columns ``slide_id, image, mpp`` (µm/px, float), ``patient_id`` and ``subtype`` (empty for
    W1 and U*; the archive slides of :mod:`stpredict.demo.tcga`), the rows :func:`make_demo`
    writes; known before the files exist (the workflow's slide ids are fixed at parse time).
    """
    m = _misc_paths(_o(outdir), small)
    n = _n_unlabeled(small)
    arch = cohort_layout(small)
    return pd.DataFrame(
        {
            "slide_id": ["W1"] + [f"U{i}" for i in range(1, n + 1)] + [r["slide_id"] for r in arch],
            "image": [m["wsi"]] + list(m["unlabeled"]) + list(m["archive"]["images"]),
            "mpp": [WSI_MPP] + [UNL_MPP] * n + [COHORT_MPP] * len(arch),
            "patient_id": [""] * (n + 1) + [r["patient_id"] for r in arch],
            "subtype": [""] * (n + 1) + [r["subtype"] for r in arch],
        }
    )


def demo_outputs(outdir: str | Path = "results/demo", small: bool = False) -> dict[str, list[str]]:
    """Every path :func:`make_demo` creates that a Snakemake rule must declare.

    Returns
    -------
    dict
        ``{"files": [...], "directories": [...]}``; Visium ``outs`` folders are directories
        (their content is not listed separately).
    """
    od = _o(outdir)
    files: list[str] = []
    dirs: list[str] = []
    for s in _visium_specs(small):
        p = _vis_paths(od, s)
        dirs.append(p["outs"])
        files += [p["image"], p["annotation"], p["truth"]]
    ihc = _ihc_paths(od)
    files += [ihc["image"], ihc["affine"]]
    for s in _st_specs(small):
        p = _st_paths(od, s)
        files += [p["counts"], p["spots"], p["image"], p["annotation"], p["truth"]]
    m = _misc_paths(od, small)
    files += m["unlabeled"] + [m["images_tsv"], m["wsi"], m["slides_tsv"], m["bulk"]]
    files += m["irrelevant"] + [m["irrelevant_tsv"]]
    files += m["archive"]["images"] + [m["archive"]["truth"]]
    files += [m["gene_roles"], m["gene_ids"]]
    return {"files": files, "directories": dirs}


# ---------------------------------------------------------------- shared helpers
@functools.lru_cache(maxsize=1)
def visium_barcodes() -> np.ndarray:
    """Return the fixed 16-nt barcodes (+ ``-1``) of the 4,992 positions, row-major over valid (row, col)."""
    rng = np.random.default_rng(np.random.SeedSequence([10, 4992]))
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < VIS_ROWS * VIS_COLS // 2:
        s = "".join("ACGT"[i] for i in rng.integers(0, 4, 16))
        if s not in seen:
            seen.add(s)
            out.append(s + "-1")
    return np.array(out)


def visium_array() -> tuple[np.ndarray, np.ndarray]:
    """``(array_row, array_col)`` of the 4,992 spots (col has the parity of row)."""
    return visium_lattice(VIS_ROWS, VIS_COLS)


def _rot(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _vis_geometry(s: VisiumSpec, small: bool):
    """Image shape and pixel coordinates (x, y) of all 4,992 spots."""
    mpp = _vis_mpp(small)
    rows, cols = visium_array()
    u = cols * VIS_PITCH_UM / 2
    v = rows * VIS_PITCH_UM * math.sqrt(3) / 2
    uc, vc = u.max() / 2, v.max() / 2
    margin = 350.0
    w = int(math.ceil((u.max() + 2 * margin) / mpp))
    h = int(math.ceil((v.max() + 2 * margin) / mpp))
    xy = _rot(s.array_rot) @ np.vstack([u - uc, v - vc]) / mpp
    off = np.array([(w - 1) / 2 + 9.0 * (2 / mpp), (h - 1) / 2 - 7.0 * (2 / mpp)])
    x = np.rint(xy[0] + off[0])
    y = np.rint(xy[1] + off[1])
    return (h, w), rows, cols, x, y


def _vis_block(seed: int, block: str):
    return make_block(seed, block, half_um=5200.0, a_um=2400.0, b_um=2000.0, tilt=0.35)


def _vis_view(seed: int, s: VisiumSpec, small: bool) -> View:
    shape = _vis_geometry(s, small)[0]
    mpp = _vis_mpp(small)
    m = view_matrix(mpp, shape, s.tissue_rot, s.shift)
    return View(_vis_block(seed, s.block), m, shape, mpp, perturb_key=s.sample)


def _counts(
    rng: np.random.Generator,
    panel: Panel,
    fr_t: np.ndarray,
    nd: np.ndarray,
    hid: np.ndarray,
    depth: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw expected shares and negative-binomial (gamma-Poisson) counts."""
    p = expected_shares(panel, fr_t, nd, hid)
    noise = np.flatnonzero(panel.kind == 1)
    p[:, noise] *= rng.lognormal(-0.18, 0.6, (len(depth), len(noise)))
    mu = depth[:, None] * p
    lam = rng.gamma(panel.theta[None, :], mu / panel.theta[None, :])
    return p, rng.poisson(lam).astype(np.int64)


def _tissue_norm(fr: np.ndarray) -> np.ndarray:
    tissue = 1.0 - fr[:, BG]
    return fr[:, 1:] / np.maximum(tissue, 1e-9)[:, None]


def _truth_table(ids, extra: dict[str, Any], fr, nd, hid, depth, perm) -> pd.DataFrame:
    fr_t = _tissue_norm(fr)
    df = pd.DataFrame({"spot_id": ids, **extra})
    df["tissue_frac"] = np.round(1.0 - fr[:, BG], 4)
    for k, name in enumerate(["tumour", "stroma", "immune", "fat"]):
        df[f"frac_{name}"] = np.round(fr_t[:, k], 4)
    df["nuclear_density"] = np.round(nd, 3)
    df["hidden_field"] = np.round(hid, 4)
    df["expected_depth"] = np.round(depth, 1)
    df["perm_failure"] = perm.astype(int)
    return df


def _write_downscaled(rgb: np.ndarray, path: str, scalef: float) -> None:
    h, w = rgb.shape[:2]
    size = (max(1, int(round(w * scalef))), max(1, int(round(h * scalef))))
    small_img = Image.fromarray(rgb).resize(size, Image.Resampling.BOX)
    fmt.write_png(path, np.asarray(small_img))


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, n_iter: int = 50) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding (deterministic given ``rng``)."""
    n = len(x)
    centres = [x[rng.integers(n)]]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        prob = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(x[rng.choice(n, p=prob)])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(axis=1))
    c = np.array(centres)
    labels = np.zeros(n, dtype=np.int64)
    for it in range(n_iter):
        dist = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
        new = dist.argmin(axis=1)
        if it > 0 and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(axis=0)
    return labels


def _clusters(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cluster spots: k-means (k=7) on PCA of log-normalised counts; labels numbered from 1."""
    tot = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    x = np.log1p(counts / tot * 1e4)
    var = x.var(axis=0)
    top = np.sort(np.argsort(-var, kind="stable")[:300])
    z = x[:, top] - x[:, top].mean(axis=0)
    u, sv, _ = np.linalg.svd(z, full_matrices=False)
    pcs = u[:, :15] * sv[:15]
    k = min(7, len(counts))
    lab = _kmeans(pcs, k, rng)
    # renumber by size (largest = 1), ties by label, for stable output
    sizes = np.bincount(lab, minlength=k)
    order = np.lexsort((np.arange(k), -sizes))
    remap = np.empty(k, dtype=int)
    remap[order] = np.arange(1, k + 1)
    return remap[lab]


# ---------------------------------------------------------------- tasks
def _task_visium(args: tuple[str, int, bool, VisiumSpec]) -> dict[str, Any]:
    outdir, seed, small, s = args
    panel = make_panel(small)
    mpp = _vis_mpp(small)
    shape, rows, cols, x, y = _vis_geometry(s, small)
    view = _vis_view(seed, s, small)
    lab = label_map(view, seed)
    rgb, nuclei = render(view, lab, seed, s.sample)
    fr, nd = spot_stats(lab, nuclei, x, y, VIS_SPOT_UM / 2 / mpp, mpp)
    hid = sample_field(view, F_HID, x, y)
    tissue = 1.0 - fr[:, BG]
    in_tissue = tissue > 0.5
    rng = rng_for(seed, "counts:" + s.sample)
    depth = VIS_DEPTH * s.depth_factor * rng.lognormal(0.0, 0.35, len(x)) * (0.3 + 0.7 * tissue)
    perm = np.zeros(len(x), dtype=bool)
    if s.perm:
        cx, cy = np.median(x[in_tissue]), np.median(y[in_tissue])
        a, b = 650.0 / mpp, 420.0 / mpp
        ang = np.deg2rad(30.0)
        dx, dy = x - cx, y - cy
        uu = np.cos(ang) * dx + np.sin(ang) * dy
        vv = -np.sin(ang) * dx + np.cos(ang) * dy
        perm = (uu / a) ** 2 + (vv / b) ** 2 <= 1.0
        depth = np.where(perm, depth * PERM_FACTOR, depth)
    barcodes = visium_barcodes()
    fr_t = _tissue_norm(fr)
    idx = np.flatnonzero(in_tissue)
    idx = idx[np.argsort(barcodes[idx], kind="stable")]
    _, counts = _counts(rng, panel, fr_t[idx], nd[idx], hid[idx], depth[idx])
    paths = _vis_paths(outdir, s)
    if s.matrix == "h5":
        fmt.write_10x_h5(paths["matrix"], counts, barcodes[idx], panel.ids, panel.symbols)
    else:
        fmt.write_10x_mtx(paths["matrix"], counts, barcodes[idx], panel.ids, panel.symbols)
    pos = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": in_tissue.astype(int),
            "array_row": rows,
            "array_col": cols,
            "pxl_row_in_fullres": y.astype(np.int64),
            "pxl_col_in_fullres": x.astype(np.int64),
        }
    )
    if s.layout == "sr2":
        pos = pos.sort_values("barcode", kind="stable")
    fmt.write_positions(paths["positions"], pos, header=s.layout == "sr2")
    hi = min(2000.0 / max(shape), 0.5)
    lo = 600.0 / max(shape)
    spot_px = VIS_FOOTPRINT_UM / mpp
    fmt.write_scalefactors(paths["scalefactors"], hi, lo, spot_px, 1.615 * spot_px)
    _write_downscaled(rgb, paths["hires"], hi)
    _write_downscaled(rgb, paths["lowres"], lo)
    clusters = _clusters(counts, rng_for(seed, "clusters:" + s.sample))
    with atomic_path(paths["clusters"]) as tmp:
        pd.DataFrame({"Barcode": barcodes[idx], "Cluster": clusters}).to_csv(tmp, index=False)
    fmt.write_tiff(paths["image"], rgb, mpp, tile=512, compression="jpeg")
    labels = np.where(fr_t[idx, 0] > 0.5, "tumor", "non")
    with atomic_path(paths["annotation"]) as tmp:
        pd.DataFrame({"barcode": barcodes[idx], "label": labels}).to_csv(tmp, index=False)
    extra = {
        "in_tissue": in_tissue.astype(int),
        "array_row": rows,
        "array_col": cols,
        "x": x,
        "y": y,
    }
    write_table(_truth_table(barcodes, extra, fr, nd, hid, depth, perm), paths["truth"])
    tot = counts.sum(axis=1)
    return {
        "kind": "visium",
        "sample": s.sample,
        "n_in_tissue": int(in_tissue.sum()),
        "n_perm": int(perm[in_tissue].sum()),
        "median_umi": float(np.median(tot[~perm[idx]])),
        "median_genes": float(np.median((counts[~perm[idx]] > 0).sum(axis=1))),
        "image_shape": list(shape),
    }


def ihc_affine(shape: tuple[int, int]) -> np.ndarray:
    """Return the known misregistration: H&E full-res px ``[x, y, 1]`` -> IHC px (3x3)."""
    h, w = shape
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    rs = 1.01 * _rot(2.0)
    t = c + np.array([30.0, -20.0]) - rs @ c
    a = np.eye(3)
    a[:2, :2] = rs
    a[:2, 2] = t
    return a


def _task_ihc(args: tuple[str, int, bool]) -> dict[str, Any]:
    outdir, seed, small = args
    s = next(v for v in _visium_specs(small) if v.perm)
    panel = make_panel(small)
    he_view = _vis_view(seed, s, small)
    a = ihc_affine(he_view.shape)
    view = View(
        he_view.block, he_view.matrix @ np.linalg.inv(a), he_view.shape, he_view.mpp, s.sample
    )
    # the same tissue as P1_D2 (its label map carried through the misregistration), new nuclei:
    # label_map's per-section perturbation lives in image pixels, so label_map(view) would put
    # P1_D2's perturbation at other tissue points and bias any registration towards identity
    inv = np.linalg.inv(a)  # IHC px [x, y, 1] -> H&E px
    lab = ndi.affine_transform(
        label_map(he_view, seed),
        inv[:2, :2][::-1, ::-1],
        offset=inv[:2, 2][::-1],
        output_shape=view.shape,
        order=0,
        mode="constant",
        cval=BG,
    )
    eps = float(panel.eps[list(panel.symbols).index("ESR1")])
    t = ndi.gaussian_filter((lab == TUM).astype(np.float32), 10.0 / view.mpp)
    dab = (0.9 / (1.0 + eps)) * (eps + t) * (lab != BG)
    rgb, _ = render(view, lab, seed, "ihc:" + s.sample, stain="ihc", dab_level=dab)
    paths = _ihc_paths(outdir)
    fmt.write_tiff(paths["image"], rgb, view.mpp, tile=512, compression="jpeg")
    write_json(
        {
            "matrix": a.tolist(),
            "maps": "H&E full-resolution px [x, y, 1] of P1_D2 -> IHC px",
            "rotation_deg": 2.0,
            "scale": 1.01,
            "shift_px": [30.0, -20.0],
            "about": "rotation and scale about the image centre, then the shift",
            "gene": "ESR1",
            "dab_od": "0.9 * (eps + local tumour fraction) / (1 + eps) in tissue, eps of ESR1",
            "esr1_eps": eps,
        },
        paths["affine"],
    )
    return {"kind": "ihc", "image_shape": list(view.shape)}


def _st_view(seed: int, s: STSpec, small: bool):
    mpp = _st_mpp(small)
    margin = 400.0
    w = int(math.ceil(((ST_NX - 1) * ST_PITCH_UM + 2 * margin) / mpp))
    h = int(math.ceil(((ST_NY - 1) * ST_PITCH_UM + 2 * margin) / mpp))
    block = make_block(seed, "st:" + s.patient, half_um=5200.0, a_um=2200.0, b_um=1850.0, tilt=-0.4)
    m = view_matrix(mpp, (h, w), s.tissue_rot, s.shift)
    return View(block, m, (h, w), mpp, perturb_key=s.sample)


def _task_st(args: tuple[str, int, bool, STSpec]) -> dict[str, Any]:
    outdir, seed, small, s = args
    panel = make_panel(small)
    view = _st_view(seed, s, small)
    mpp, (h, w) = view.mpp, view.shape
    rng = rng_for(seed, "st:" + s.sample)
    xg, yg = np.meshgrid(np.arange(1, ST_NX + 1), np.arange(1, ST_NY + 1), indexing="ij")
    xg, yg = xg.ravel(), yg.ravel()
    xf = np.round(xg + rng.normal(0, 0.025, xg.size), 2)
    yf = np.round(yg + rng.normal(0, 0.025, yg.size), 2)
    pu = (xf - 1 - (ST_NX - 1) / 2) * ST_PITCH_UM
    pv = (yf - 1 - (ST_NY - 1) / 2) * ST_PITCH_UM
    xy = _rot(s.array_rot) @ np.vstack([pu, pv]) / mpp
    px = np.round(xy[0] + (w - 1) / 2 + 6.0, 2)
    py = np.round(xy[1] + (h - 1) / 2 - 4.0, 2)
    lab = label_map(view, seed)
    rgb, nuclei = render(view, lab, seed, s.sample)
    fr, nd = spot_stats(lab, nuclei, px, py, ST_SPOT_UM / 2 / mpp, mpp)
    hid = sample_field(view, F_HID, px, py)
    tissue = 1.0 - fr[:, BG]
    under = tissue > 0.5
    depth = ST_DEPTH * s.depth_factor * rng.lognormal(0.0, 0.4, xg.size) * (0.3 + 0.7 * tissue)
    # ambient rows: off-tissue spots next to tissue get a few reads (no coordinates in stnet)
    grid = np.zeros((ST_NX + 2, ST_NY + 2), dtype=bool)
    grid[xg[under], yg[under]] = True
    near = ndi.binary_dilation(grid, np.ones((3, 3), bool))[xg, yg] & ~under
    depth = np.where(under, depth, 0.02 * depth)
    fr_t = _tissue_norm(fr)
    fr_t[~under] = fr_t[under].mean(axis=0) if under.any() else 0.25
    rows_idx = np.flatnonzero(under | near)
    _, counts = _counts(rng, panel, fr_t[rows_idx], nd[rows_idx], hid[rows_idx], depth[rows_idx])
    present = counts.sum(axis=0) > 0
    amb = rng.poisson(0.3, (len(rows_idx), 2))
    fill_ids = panel.ids[panel.role == "filler"]
    amb_names = [
        f"__ambiguous[{fill_ids[0]}+{fill_ids[1]}]",
        f"__ambiguous[{fill_ids[2]}+{fill_ids[3]}]",
    ]
    ids = [f"{a}x{b}" for a, b in zip(xg, yg, strict=True)]
    p = _st_paths(outdir, s)
    fmt.write_st_counts(
        p["counts"],
        np.hstack([counts[:, present], amb]),
        [ids[i] for i in rows_idx],
        list(panel.ids[present]) + amb_names,
    )
    sdf = pd.DataFrame(
        {
            "x": xf,
            "y": yf,
            "new_x": xf,
            "new_y": yf,
            "pixel_x": px,
            "pixel_y": py,
            "selected": under.astype(int),
        }
    )
    if s.style == "selection":
        sdf_out = sdf.assign(x=xg, y=yg)
    else:
        sdf_out = sdf[under]
    fmt.write_st_spots(p["spots"], sdf_out, s.style)
    labels = np.where(fr_t[under, 0] > 0.5, "tumor", "non")
    fmt.write_st_annotation(
        p["annotation"], [ids[i] for i in np.flatnonzero(under)], xf[under], yf[under], labels
    )
    fmt.write_jpeg(p["image"], rgb, quality=90)
    extra = {"in_tissue": under.astype(int), "array_x": xg, "array_y": yg, "x": px, "y": py}
    truth = _truth_table(np.array(ids), extra, fr, nd, hid, depth, np.zeros(xg.size, bool))
    write_table(truth, p["truth"])
    tot = counts[np.isin(rows_idx, np.flatnonzero(under))].sum(axis=1)
    return {
        "kind": "st",
        "sample": s.sample,
        "n_in_tissue": int(under.sum()),
        "n_rows": len(rows_idx),
        "n_genes_present": int(present.sum()),
        "median_umi": float(np.median(tot)) if len(tot) else 0.0,
        "image_shape": [h, w],
    }


def _bulk_expected(view: View, lab: np.ndarray, nuclei: np.ndarray, panel: Panel) -> np.ndarray:
    """Sum over the slide's tissue (50 µm cells) of the planted expected expression."""
    cell = max(1, int(round(50.0 / view.mpp)))
    h, w = lab.shape
    hc, wc = h // cell, w // cell
    lab_c = lab[: hc * cell, : wc * cell].reshape(hc, cell, wc, cell)
    fr = np.stack([(lab_c == k).mean(axis=(1, 3)) for k in range(5)], axis=-1).reshape(-1, 5)
    cnt, _, _ = np.histogram2d(
        nuclei[:, 1], nuclei[:, 0], bins=[hc, wc], range=[[0, hc * cell], [0, wc * cell]]
    )
    area_k = (cell * view.mpp) ** 2 / 1000.0
    tissue = 1.0 - fr[:, BG]
    keep = tissue > 0
    nd = cnt.ravel()[keep] / (area_k * tissue[keep])
    yc, xc = np.meshgrid((np.arange(hc) + 0.5) * cell, (np.arange(wc) + 0.5) * cell, indexing="ij")
    hid = sample_field(view, F_HID, xc.ravel()[keep], yc.ravel()[keep])
    p = expected_shares(panel, _tissue_norm(fr[keep]), nd, hid)
    spot_area = math.pi * (VIS_SPOT_UM / 2) ** 2
    depth = VIS_DEPTH * tissue[keep] * (cell * view.mpp) ** 2 / spot_area
    return depth @ p


def _task_unlabeled(args: tuple[str, int, bool, int]) -> dict[str, Any]:
    outdir, seed, small, i = args
    panel = make_panel(small)
    n = _unl_size(small)
    half = n * UNL_MPP / 2 + 600.0
    a = 0.36 * n * UNL_MPP
    block = make_block(seed, f"U{i}", half_um=half, a_um=a, b_um=0.85 * a, tilt=0.3 * i)
    view = View(block, view_matrix(UNL_MPP, (n, n), 0.0, (0.0, 0.0)), (n, n), UNL_MPP, None)
    lab = label_map(view, seed)
    rgb, nuclei = render(view, lab, seed, f"U{i}")
    fmt.write_jpeg(_misc_paths(outdir, small)["unlabeled"][i - 1], rgb, quality=90)
    return {
        "kind": "unlabeled",
        "slide": f"U{i}",
        "expected": _bulk_expected(view, lab, nuclei, panel),
    }


def _task_irrelevant(args: tuple[str, int, bool, int]) -> dict[str, Any]:
    outdir, seed, small, i = args
    rgb = render_texture(seed, f"I{i}", _unl_size(small), i - 1)
    fmt.write_jpeg(_misc_paths(outdir, small)["irrelevant"][i - 1], rgb, quality=90)
    return {"kind": "irrelevant", "image": f"I{i}"}


def _task_wsi(args: tuple[str, int, bool]) -> dict[str, Any]:
    outdir, seed, small = args
    panel = make_panel(small)
    h, w = _wsi_shape(small)
    half = max(h, w) * WSI_MPP / 2 + 800.0
    block = make_block(
        seed, "W1", half_um=half, a_um=0.3 * w * WSI_MPP, b_um=0.32 * h * WSI_MPP, tilt=0.1
    )
    view = View(block, view_matrix(WSI_MPP, (h, w), 0.0, (0.0, 0.0)), (h, w), WSI_MPP, None)
    lab = label_map(view, seed)
    rgb, nuclei = render(view, lab, seed, "W1")
    fmt.write_tiff(
        _misc_paths(outdir, small)["wsi"], rgb, WSI_MPP, tile=256, pyramid=True, compression="jpeg"
    )
    return {"kind": "wsi", "slide": "W1", "expected": _bulk_expected(view, lab, nuclei, panel)}


def _run(task: tuple[Any, tuple]) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    fn, args = task
    t0 = time.perf_counter()
    with threadpool_limits(1):
        out = fn(args)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


# ---------------------------------------------------------------- public: generator
def make_demo(
    outdir: str | Path = "results/demo", seed: int = 7, threads: int = 1, small: bool = False
) -> dict[str, Any]:
    """Write the whole demo cohort under ``outdir``.

    Parameters
    ----------
    outdir
        Output folder (created).
    seed
        Seed of every random draw; the same seed gives byte-identical files.
    threads
        Worker processes (sections run in parallel); the output does not depend on it.
    small
        Tiny, fast variant for unit tests (fewer sections and genes, smaller images), same
        layouts.

    Returns
    -------
    dict
        A summary per unit of work (spots, median UMI, image shapes), for reporting only.
    """
    od = _o(outdir)
    Path(od).mkdir(parents=True, exist_ok=True)
    tasks: list[tuple[Any, tuple]] = [(_task_wsi, (od, seed, small))]
    tasks += [(_task_visium, (od, seed, small, s)) for s in _visium_specs(small)]
    tasks.append((_task_ihc, (od, seed, small)))
    tasks += [(_task_st, (od, seed, small, s)) for s in _st_specs(small)]
    tasks += [(_task_unlabeled, (od, seed, small, i)) for i in range(1, _n_unlabeled(small) + 1)]
    tasks += [(_task_irrelevant, (od, seed, small, i)) for i in range(1, _n_irrelevant(small) + 1)]
    arch = _misc_paths(od, small)["archive"]
    tasks += [
        (task_cohort_slide, (od, seed, small, row, path))
        for row, path in zip(cohort_layout(small), arch["images"], strict=True)
    ]
    if threads > 1:
        # fork, not spawn: spawn re-imports __main__, which under Snakemake is the rule's script
        with ProcessPoolExecutor(max_workers=threads, mp_context=get_context("fork")) as ex:
            results = list(ex.map(_run, tasks))
    else:
        results = [_run(t) for t in tasks]

    panel = make_panel(small)
    m = _misc_paths(od, small)
    write_table(panel.roles_table(), m["gene_roles"])
    write_table(pd.DataFrame({"gene_id": panel.ids, "gene": panel.symbols}), m["gene_ids"])
    unl = pd.DataFrame(
        {
            "image_id": [f"U{i}" for i in range(1, _n_unlabeled(small) + 1)],
            "image": m["unlabeled"],
            "mpp": UNL_MPP,
        }
    )
    write_table(unl, m["images_tsv"])
    irr = pd.DataFrame(
        {
            "image_id": [f"I{i}" for i in range(1, _n_irrelevant(small) + 1)],
            "image": m["irrelevant"],
            "mpp": UNL_MPP,
        }
    )
    write_table(irr, m["irrelevant_tsv"])
    slides = demo_slides(od, small)
    write_table(slides, m["slides_tsv"])
    expected = {r["slide"]: r["expected"] for r in results if "expected" in r}
    rng = rng_for(seed, "bulk")
    bulk = pd.DataFrame(index=pd.Index(panel.symbols, name="gene"))
    for sid in slides["slide_id"]:
        mu = np.asarray(expected[sid])
        bulk[sid] = rng.poisson(rng.gamma(20.0, mu / 20.0)).astype(np.int64)
    write_table(bulk, m["bulk"], index=True)
    truth = pd.DataFrame([r["truth"] for r in results if "truth" in r])
    write_table(truth.round(6), arch["truth"])
    return {
        "results": [{k: v for k, v in r.items() if k != "expected"} for r in results],
        "n_genes": panel.n_genes,
    }


def write_sheet(path: str | Path, outdir: str = "results/demo", small: bool = False) -> None:
    """Write :func:`demo_sheet` as TSV (how ``config/samples_demo.tsv`` is made)."""
    with atomic_path(path) as tmp:
        demo_sheet(outdir, small).to_csv(tmp, sep="\t", index=False)


def summary_json(result: dict[str, Any]) -> str:
    """Pretty JSON of a :func:`make_demo` summary."""
    return json.dumps(result, indent=1, default=str)
