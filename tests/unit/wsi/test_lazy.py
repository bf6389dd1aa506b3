"""Lazy reading: a 40,000 x 40,000 px pyramidal TIFF is tiled with a bounded peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from stpredict.demo.bigslide import background_pixels, write_big_slide
from tests.conftest import REPO

#: the tiling job run in a fresh process; prints its peak RSS (the whole slide is 4.5 GiB)
CHILD = """
import json, resource, sys, time
from stpredict.ingest.images import SlideImage
from stpredict.patches.geometry import PatchSpec
from stpredict.wsi.slides import choose_level, resolve_mpp, slide_levels
from stpredict.wsi.tiles import tile_slide

path, prefix = sys.argv[1], sys.argv[2]
spec = PatchSpec(fov_um=110.0, size_px=32)  # the demo's geometry: 3.4 µm per stored px
t0 = time.perf_counter()
with SlideImage(path, sample="BIG") as img:
    mpp, _ = resolve_mpp(img, None, 0.1, "BIG")
    level = choose_level(slide_levels(img, mpp), spec.fov_um / spec.size_px, 0.1)
    table = tile_slide(img, level, spec, prefix, rgb=220, max_frac=0.5, slide="BIG")
    decoded_whole = img._array is not None
seconds = time.perf_counter() - t0
print(json.dumps({
    "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "seconds": seconds, "level": level.index, "n_tiles": len(table),
    "n_kept": int(table["keep"].sum()), "decoded_whole": decoded_whole,
}))
"""


def tile_in_subprocess(slide, prefix):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(slide), str(prefix)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_40k_slide_is_tiled_lazily_under_2_gib(tmp_path):
    slide = tmp_path / "big.tif"
    info = write_big_slide(slide, 40_000, mpp=0.5)
    assert info["bytes"] < 400 * 2**20, info["bytes"]  # JPEG tiles: small on disk
    got = tile_in_subprocess(slide, tmp_path / "tiles")
    assert got["level"] == 0 and not got["decoded_whole"]  # 0.5 µm/px is the level it needs
    assert got["peak_rss_kib"] * 1024 < 2 * 2**30, got  # 40k x 40k x 3 = 4.5 GiB decoded
    # every tile, and the background rule exactly: the glass area of each 220-px window
    crop = 220
    bg = background_pixels(info["tissue"], info["tile"], info["shape"], crop) / crop**2
    table = pd.read_csv(tmp_path / "tiles.tsv", sep="\t")
    assert got["n_tiles"] == bg.size == len(table) == (40_000 // crop) ** 2
    frac = table["background_frac"].to_numpy().reshape(bg.shape)
    assert np.allclose(frac, bg, atol=1e-12)
    assert got["n_kept"] == int((bg <= 0.5).sum()) > 0
    print(f"\n40k tiling: {got}")
