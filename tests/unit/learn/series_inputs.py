"""Small real inputs for the imputation and super-resolution tests: a series of three Visium
sections (hexagonal lattice, a textured H&E image, patch stores cut by the real extractor),
one of them with spots that failed QC on tissue and a few white ones, and a trained fold."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from stpredict.ingest.geometry import visium_lattice
from stpredict.ingest.images import SlideImage
from stpredict.io import write_h5ad
from stpredict.learn.experiments import resolve_experiment
from stpredict.patches.geometry import PatchSpec
from stpredict.patches.store import extract_patches

MPP = 2.0
SPEC = PatchSpec(fov_px=24, size_px=16)
N_ROWS, N_COLS, N_GENES = 8, 18, 12
#: sheet order D3, D1, D2 but series order D1, D2, D3 (the `order` column decides)
ORDER = {"D3": 3, "D1": 1, "D2": 2}


def sheet() -> pd.DataFrame:
    rows = [
        {
            "sample_id": s,
            "patient_id": "P1",
            "platform": "visium",
            "series": "S",
            "order": str(o),
            "image": f"{s}.png",
            "raw": "",
            "clusters": "",
        }
        for s, o in ORDER.items()
    ]
    rows.append(
        {
            "sample_id": "X9",
            "patient_id": "P2",
            "platform": "visium",
            "series": "",
            "order": "",
            "image": "X9.png",
            "raw": "",
            "clusters": "",
        }
    )
    return pd.DataFrame(rows).set_index("sample_id", drop=False)


def experiment(**split):
    return resolve_experiment(
        {
            "split": {"scheme": "section_imputation", "val_frac": 0.25, **split},
            "targets": {"transform": "log1p", "genes": {"mode": "expressed", "min_frac": 0.1}},
            "model": {"backbone": "tiny", "tiny_width": 4},
            "train": {"epochs": 1, "batch_size": 32, "augmentation": "none"},
            "tta": 4,
        },
        {},
    )


def _xy(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    # Visium pitch 100 µm: 50 µm per column unit, 86.6 µm per row, at 2 µm/px
    return np.column_stack([40 + cols * 25.0, 40 + rows * 25.0 * np.sqrt(3)])


def make_section(tmp: Path, sample: str, seed: int, failed: int = 0, white: int = 0):
    """A QC'd section (``failed`` spots fail the UMI threshold on tissue, ``white`` are glass)."""
    rng = np.random.default_rng(seed)
    rows, cols = visium_lattice(N_ROWS, N_COLS)
    n = len(rows)
    xy = _xy(rows, cols)
    h, w = int(xy[:, 1].max()) + 60, int(xy[:, 0].max()) + 60
    img = rng.integers(90, 170, (h, w, 3), dtype=np.uint8)
    dark = rng.uniform(0, 1, n)
    for (x, y), d in zip(xy, dark, strict=True):  # each spot's darkness drives gene 0
        img[int(y) - 8 : int(y) + 8, int(x) - 8 : int(x) + 8] = int(60 + 100 * d)
    white_idx = np.arange(n)[-white:] if white else np.array([], int)
    for i in white_idx:
        x, y = xy[i]
        img[int(y) - 14 : int(y) + 14, int(x) - 14 : int(x) + 14] = 255
    from PIL import Image

    png = tmp / f"{sample}.png"
    Image.fromarray(img).save(png)
    lam = np.full((n, N_GENES), 6.0)
    lam[:, 0] = 2 + 20 * (1 - dark)
    counts = rng.poisson(lam).astype(np.float32)
    a = ad.AnnData(sp.csr_matrix(counts))
    a.obs_names = [f"{sample}-{i:03d}" for i in range(n)]
    a.var_names = [f"G{j}" for j in range(N_GENES)]
    a.var["gene_ids"] = [f"ENSGT{j:011d}" for j in range(N_GENES)]
    a.obs["sample_id"] = sample
    a.obs["patient_id"] = "P1"
    a.obs["in_tissue"] = True
    a.obs["array_row"], a.obs["array_col"] = rows, cols
    a.obs["annotation"] = ""
    a.obs["total_counts"] = counts.sum(axis=1)
    a.obsm["spatial"] = xy
    a.uns["stpredict"] = {"sample_id": sample, "mpp": MPP, "platform": "visium"}
    a.uns["spatial"] = {  # as the readers write it (and scanpy reads Space Ranger)
        sample: {
            "images": {"hires": img[::2, ::2].copy(), "lowres": img[::4, ::4].copy()},
            "scalefactors": {
                "tissue_hires_scalef": 0.5,
                "tissue_lowres_scalef": 0.25,
                "spot_diameter_fullres": 27.5,  # 55 µm at 2 µm/px
                "fiducial_diameter_fullres": 44.4,
            },
            "metadata": {"source_image_path": str(tmp / f"{sample}.png")},
        }
    }
    failed_mask = np.zeros(n, bool)
    failed_mask[np.arange(failed) * 3 + 1] = True  # spread over the section
    a.obs["pass_umi"] = ~failed_mask
    a.obs["pass_genes"] = True
    a.obs["pass_white"] = ~np.isin(np.arange(n), white_idx)
    a.obs["keep"] = a.obs["pass_umi"] & a.obs["pass_white"]
    section = tmp / f"{sample}.h5ad"
    write_h5ad(a, section)
    d = tmp / "patches" / sample
    d.mkdir(parents=True, exist_ok=True)
    with SlideImage(png, sample=sample) as image:
        extract_patches(
            image, xy, SPEC, MPP, d / "spots.npy", d / "spots.tsv", d / "spots.json",
            ids=a.obs_names.to_list(), progress=False,
        )  # fmt: skip
    return a, section, png, d / "spots.npy"


def make_series(tmp: Path) -> tuple[dict, dict, dict, dict]:
    """Sections D1-D3 (D2 with 6 QC-failed and 3 white spots): AnnData, files, images, stores."""
    out: tuple[dict, dict, dict, dict] = ({}, {}, {}, {})
    for i, s in enumerate(("D1", "D2", "D3")):
        a, path, png, store = make_section(
            tmp, s, seed=i, failed=6 if s == "D2" else 0, white=3 if s == "D2" else 0
        )
        for d, v in zip(out, (a, path, png, store), strict=True):
            d[s] = v
    return out
