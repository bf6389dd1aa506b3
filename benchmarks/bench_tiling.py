"""Benchmark: whole-slide tiling throughput and peak memory (stpredict.wsi.tiles.tile_slide).

Writes a synthetic 40,000 x 40,000 px tiled pyramidal JPEG TIFF at 0.5 µm/px tile by tile
(stpredict.demo.bigslide: never held in memory), then tiles it in a fresh process at the demo's
geometry (110 µm field of view -> 220 px of level 0, stored at 32 px) and at ST-Net's (224 px of
0.5 µm/px, stored at 224 px; 112 µm), each with the background rule. Reports tiles/s (every grid
tile is cut, resized and stored) and the process's peak RSS (``getrusage``), and writes
``benchmarks/results/tiling.tsv``.

Usage: ``python benchmarks/bench_tiling.py [--size 40000] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from stpredict.demo.bigslide import write_big_slide

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[5]))
from stpredict.ingest.images import SlideImage
from stpredict.patches.geometry import PatchSpec
from stpredict.wsi.slides import choose_level, resolve_mpp, slide_levels
from stpredict.wsi.tiles import tile_slide

path, prefix, fov, size = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
spec = PatchSpec(fov_um=fov, size_px=size)
t0 = time.perf_counter()
with SlideImage(path, sample="BIG") as img:
    mpp, _ = resolve_mpp(img, None, 0.1, "BIG")
    level = choose_level(slide_levels(img, mpp), spec.fov_um / spec.size_px, 0.1)
    table = tile_slide(img, level, spec, prefix, rgb=220, max_frac=0.5, slide="BIG")
print(json.dumps({
    "seconds": time.perf_counter() - t0,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "level": level.index, "crop_px": spec.crop_px(level.mpp),
    "n_tiles": len(table), "n_kept": int(table["keep"].sum()),
}))
"""

GEOMETRIES = {
    "demo (110 um -> 32 px)": (110.0, 32),
    "ST-Net (112 um = 224 px at 0.5 um/px -> 224 px)": (112.0, 224),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=40_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "tiling.tsv"
    )
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        t0 = time.perf_counter()
        info = write_big_slide(tmp / "big.tif", args.size, mpp=0.5)
        write_s = time.perf_counter() - t0
        print(
            f"slide {args.size} x {args.size} px written in {write_s:.1f} s "
            f"({info['bytes'] / 2**20:.0f} MiB on disk)"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        for name, (fov, size) in GEOMETRIES.items():
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    str(tmp / "big.tif"),
                    str(tmp / "tiles"),
                    str(fov),
                    str(size),
                    str(args.threads),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            store_mib = (tmp / "tiles.npy").stat().st_size / 2**20
            row = {
                "geometry": name,
                "slide_px": args.size,
                "slide_mib": round(info["bytes"] / 2**20, 1),
                "level": got["level"],
                "crop_px": got["crop_px"],
                "stored_px": size,
                "n_tiles": got["n_tiles"],
                "n_kept": got["n_kept"],
                "seconds": round(got["seconds"], 1),
                "tiles_per_s": round(got["n_tiles"] / got["seconds"], 1),
                "mpix_per_s": round(got["n_tiles"] * got["crop_px"] ** 2 / got["seconds"] / 1e6, 1),
                "peak_rss_mib": round(got["peak_rss_mib"]),
                "store_mib": round(store_mib),
                "threads": args.threads,
                "cpus": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
            }
            rows.append(row)
            print(json.dumps(row))
            for f in tmp.glob("tiles.*"):
                f.unlink()
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, sep="\t", index=False)
    print(df.to_string(index=False))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
