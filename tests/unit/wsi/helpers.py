"""Small real inputs for the whole-slide tests: images, pyramidal TIFFs, a tiny trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: the tiny model's patch geometry: 32 µm field of view stored at 16 px (2 µm per stored px)
FOV_UM, SIZE_PX = 32.0, 16
GENES = ["DARK", "FLAT"]


def tissue_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """White glass with an elliptical tissue region, dark (purple) on the left, pink on the right."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((xx - w / 2) / (0.38 * w)) ** 2 + ((yy - h / 2) / (0.34 * h)) ** 2 <= 1.0
    img = np.full((h, w, 3), 245, dtype=np.uint8)
    noise = rng.integers(-12, 13, size=(h, w, 1))
    dark = np.array([110, 60, 150]) + noise
    pink = np.array([220, 140, 200]) + noise
    tissue = np.where((xx < w / 2)[..., None], dark, pink)
    img[inside] = np.clip(tissue[inside], 0, 255).astype(np.uint8)
    return img


def halve(a: np.ndarray) -> np.ndarray:
    """2 x 2 block mean (rounded) of an RGB image with even sides."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    b = a[:h, :w].astype(np.float64).reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    return np.rint(b).astype(np.uint8)


def write_pyramid(
    path: Path, rgb: np.ndarray, mpp: float | None, n_levels: int = 3, tile: int = 64
) -> list[np.ndarray]:
    """A tiled TIFF with ``n_levels - 1`` SubIFD levels (each half the previous); return the levels."""
    import tifffile

    levels = [rgb]
    for _ in range(n_levels - 1):
        levels.append(halve(levels[-1]))
    kw = {"photometric": "rgb", "compression": "zlib", "tile": (tile, tile)}
    with tifffile.TiffWriter(path) as tw:
        for k, lev in enumerate(levels):
            res = {}
            if mpp is not None:
                ppcm = 1e4 / (mpp * 2**k)
                res = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
            if k == 0:
                tw.write(lev, subifds=len(levels) - 1, **res, **kw)
            else:
                tw.write(lev, subfiletype=1, **res, **kw)
    return levels


def write_png(path: Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(rgb).save(path)
    return path


def _section_counts(dark: np.ndarray, rng: np.random.Generator):
    import anndata as ad
    import pandas as pd

    counts = np.column_stack([rng.poisson(5 + 40 * dark), rng.poisson(20, size=len(dark))])
    return ad.AnnData(
        X=counts.astype(np.float32),
        obs=pd.DataFrame({"sample_id": "S1"}, index=[f"s{i}" for i in range(len(dark))]),
        var=pd.DataFrame(index=GENES),
    )


def make_model_dir(root: Path, n_folds: int = 2, epochs: int = 3, mpp: float = 1.0) -> Path:
    """Train a tiny model (seconds on the CPU) and lay it out as an experiment folder.

    ``root/train.png`` (the training image, ``mpp`` µm/px), ``root/patches/S1/spots.*`` (its
    spot store), ``root/exp/folds/{k}/model.pt|fitted.json`` and the card ``root/exp/model.json``.
    Gene DARK follows the darkness of the patch (the planted link), FLAT is noise.
    """
    from stpredict.ingest.images import SlideImage
    from stpredict.io import write_json
    from stpredict.learn.targets import GeneSelector, Log1pNormalized
    from stpredict.learn.train import PatchDataset, train
    from stpredict.patches.geometry import PatchSpec
    from stpredict.patches.store import extract_patches, load_patches
    from stpredict.wsi.card import write_model_card
    from tests.conftest import train_config

    root.mkdir(parents=True, exist_ok=True)
    image = write_png(root / "train.png", tissue_image(320, 320, seed=1))
    step = int(FOV_UM / mpp)
    g = np.arange(step, 320 - step, step // 2, dtype=float)
    xy = np.array([(x, y) for y in g for x in g])
    store = root / "patches" / "S1" / "spots"
    store.parent.mkdir(parents=True)
    spec = PatchSpec(fov_um=FOV_UM, size_px=SIZE_PX)
    with SlideImage(image, sample="S1") as img:
        extract_patches(
            img,
            xy,
            spec,
            mpp,
            store.with_suffix(".npy"),
            store.with_suffix(".tsv"),
            store.with_suffix(".json"),
            progress=False,
        )
    patches = np.asarray(load_patches(store.with_suffix(".npy")))
    dark = 1.0 - patches.mean(axis=(1, 2, 3)) / 255.0
    rng = np.random.default_rng(0)
    section = _section_counts(dark, rng)
    selector = GeneSelector(mode="panel", panel=GENES).fit([section])
    transform = Log1pNormalized(genes=GENES).fit([section])
    y = transform.transform(section).astype(np.float32)
    exp = root / "exp"
    folds = {}
    for k in range(n_folds):
        out = exp / "folds" / str(k)
        cfg = train_config(
            backbone="tiny",
            weights="none",
            tiny_width=4,
            epochs=epochs,
            batch_size=32,
            lr=0.01,
            loss="mse",
            optimiser="adam",
            augmentation="none",
            seed=k,
        )
        ds = PatchDataset([store.with_suffix(".npy")], [np.arange(len(xy))], targets=y)
        train(cfg, ds, None, out, genes=GENES, target_transform="log1p", device="cpu")
        fitted = {
            "experiment": "tiny",
            "fold": str(k),
            "task": "regression",
            "genes": selector.to_dict(),
            "transform": transform.to_dict(),
            "transform_name": "log1p",
        }
        write_json(fitted, out / "fitted.json")
        folds[str(k)] = {"model": out / "model.pt", "fitted": out / "fitted.json"}
    write_model_card(
        "tiny",
        {"task": "regression", "tta": 4, "precision": "fp32"},
        folds,
        {"S1": store.with_suffix(".json")},
        exp / "model.json",
    )
    return exp
