"""Benchmark: patch extraction of the seed implementations vs stpredict.patches.store.extract_patches.

Makes a synthetic H&E-like RGB image (default 8,000 x 8,000 px) as a JPEG and as a tiled,
JPEG-compressed TIFF in a temporary folder, lays ~3,000 spot centres on a hexagonal grid and times

(a)  the seeds' approach (DeepSpaCE / ST-Net scripts): for every spot, ``PIL.Image.open(path)``,
     crop, resize to 224 px and save one PNG per patch. Each spot decodes the whole JPEG, so this
     is timed on a subset of spots (``--n-seed``) and reported as a rate;
(a') the same with the image decoded once (the best a per-PNG pipeline can do), on ``--n-once``
     spots (the decode is included in its time);
(b)  ``extract_patches`` on the JPEG (decoded once) and on the tiled TIFF (read by region).

The one-off ``import torch`` of (b) is timed separately and excluded from its rates.
All use DeepSpaCE's geometry at 0.5 µm/px: a 137.5 µm field (275 px) resized to 224 px.
Prints the rates and ratios and writes ``benchmarks/results/patch_extraction.tsv``.

Usage: ``python benchmarks/bench_patch_extraction.py [--size 8000] [--n-spots 3000] [--n-seed 12]``
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from stpredict.ingest.images import SlideImage
from stpredict.patches.geometry import PatchSpec
from stpredict.patches.store import extract_patches

MPP = 0.5
SPEC = PatchSpec.deepspace()  # 137.5 µm -> 275 px at 0.5 µm/px -> 224 px


def make_image(size: int, seed: int = 0) -> np.ndarray:
    """Smooth pink/purple 'tissue' with fine texture and white background, uint8 RGB."""
    rng = np.random.default_rng(seed)
    low = rng.random((size // 200 + 2, size // 200 + 2)).astype(np.float32)
    field = np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC))
    tissue = field > 0.45
    img = np.empty((size, size, 3), np.uint8)
    noise = rng.integers(0, 40, size=(size, size), dtype=np.uint8)
    img[..., 0] = np.where(tissue, 190, 235) + noise // 2
    img[..., 1] = np.where(tissue, 110, 235) + noise // 3
    img[..., 2] = np.where(tissue, 190, 238) + noise // 4
    return img


def hex_centres(size: int, n: int, margin: int = 200) -> np.ndarray:
    """About ``n`` centres on a hexagonal grid covering the image."""
    span = size - 2 * margin
    pitch = span / np.sqrt(n * np.sqrt(3) / 2)
    rows = []
    y, k = float(margin), 0
    while y <= size - margin:
        xs = np.arange(margin + (pitch / 2) * (k % 2), size - margin, pitch)
        rows.append(np.column_stack([xs, np.full(len(xs), y)]))
        y += pitch * np.sqrt(3) / 2
        k += 1
    xy = np.concatenate(rows)
    return xy[:n]


def seed_per_spot(path: Path, xy: np.ndarray, out: Path, reopen: bool) -> float:
    """Per-spot crop + resize + PNG, as the seed scripts do; returns seconds."""
    crop = SPEC.crop_px(MPP)
    r = crop // 2
    out.mkdir(parents=True, exist_ok=True)
    Image.MAX_IMAGE_PIXELS = None
    t0 = time.perf_counter()
    im = None if reopen else Image.open(path).convert("RGB")
    for i, (x, y) in enumerate(xy):
        src = Image.open(path) if reopen else im
        x, y = int(round(x)), int(round(y))
        patch = src.crop((x - r, y - r, x - r + crop, y - r + crop))
        patch = patch.resize((SPEC.size_px, SPEC.size_px), Image.Resampling.BILINEAR)
        patch.save(out / f"spot_{i}.png")
        if reopen:
            src.close()
    return time.perf_counter() - t0


def ours(path: Path, xy: np.ndarray, out: Path) -> float:
    image = SlideImage(path, sample=path.stem)
    t0 = time.perf_counter()
    extract_patches(
        image, xy, SPEC, MPP, out / "p.npy", out / "p.tsv", out / "p.json", progress=False
    )
    dt = time.perf_counter() - t0
    image.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=8000)
    ap.add_argument("--n-spots", type=int, default=3000)
    ap.add_argument("--n-seed", type=int, default=12, help="spots timed for (a) (full decode each)")
    ap.add_argument("--n-once", type=int, default=600, help="spots timed for (a')")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "patch_extraction.tsv",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        t0 = time.perf_counter()
        img = make_image(args.size)
        jpg, tif = tmp / "slide.jpg", tmp / "slide.tif"
        Image.fromarray(img).save(jpg, quality=90)
        tifffile.imwrite(
            tif,
            img,
            tile=(512, 512),
            photometric="rgb",
            compression="jpeg",
            compressionargs={"level": 90},
        )
        del img
        print(
            f"test image {args.size}x{args.size} written in {time.perf_counter() - t0:.1f} s "
            f"(jpeg {jpg.stat().st_size / 2**20:.0f} MiB, tiled tiff {tif.stat().st_size / 2**20:.0f} MiB)"
        )
        xy = hex_centres(args.size, args.n_spots)
        n = len(xy)
        rows = []

        def add(method: str, image: str, k: int, sec: float) -> None:
            rows.append(
                {
                    "method": method,
                    "image": image,
                    "n_patches": k,
                    "seconds": round(sec, 3),
                    "patches_per_s": round(k / sec, 2),
                }
            )
            print(
                f"{method:<46s} {image:<10s} {k:5d} patches {sec:8.2f} s {k / sec:9.1f} patches/s"
            )

        t0 = time.perf_counter()
        import torch  # noqa: F401  (one-off per process; excluded from (b), reported here)

        print(
            f"import torch (once per process, not in the (b) times): {time.perf_counter() - t0:.1f} s"
        )
        sub = xy[np.linspace(0, n - 1, args.n_seed).astype(int)]
        add(
            "(a) seed: per-spot open+crop+resize+PNG",
            "jpeg",
            len(sub),
            seed_per_spot(jpg, sub, tmp / "seed_a", reopen=True),
        )
        sub = xy[np.linspace(0, n - 1, min(args.n_once, n)).astype(int)]
        add(
            "(a') per-spot crop+resize+PNG, decoded once",
            "jpeg",
            len(sub),
            seed_per_spot(jpg, sub, tmp / "seed_b", reopen=False),
        )
        add("(b) stpredict extract_patches", "jpeg", n, ours(jpg, xy, tmp / "ours_jpg"))
        add("(b) stpredict extract_patches", "tiled tiff", n, ours(tif, xy, tmp / "ours_tif"))

    df = pd.DataFrame(rows)
    base = df["patches_per_s"].iloc[0]
    df["speedup_vs_a"] = (df["patches_per_s"] / base).round(1)
    df["speedup_vs_a_prime"] = (df["patches_per_s"] / df["patches_per_s"].iloc[1]).round(2)
    df["cpus"] = os.cpu_count()
    df["machine"] = platform.processor() or platform.machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, sep="\t", index=False)
    print()
    print(
        df[["method", "image", "patches_per_s", "speedup_vs_a", "speedup_vs_a_prime"]].to_string(
            index=False
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
