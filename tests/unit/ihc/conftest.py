"""Inputs of the IHC tests: the demo's H&E / IHC pair of P1_D2 (small variant), synthetic sections."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stpredict.demo import formats as fmt
from stpredict.demo.cohort import (
    _ihc_paths,
    _task_ihc,
    _vis_geometry,
    _vis_mpp,
    _vis_view,
    _visium_specs,
)
from stpredict.demo.tissue import label_map, render

SEED = 7


@pytest.fixture(scope="session")
def demo_pair(tmp_path_factory) -> dict:
    """The small demo's P1_D2 H&E and its IHC (written by the demo generator), spot centres."""
    out = tmp_path_factory.mktemp("ihc_demo")
    spec = next(s for s in _visium_specs(True) if s.perm)
    view = _vis_view(SEED, spec, True)
    rgb, _ = render(view, label_map(view, SEED), SEED, spec.sample)
    he = out / "he.tif"
    fmt.write_tiff(he, rgb, _vis_mpp(True), tile=512, compression="jpeg")
    _task_ihc((str(out), SEED, True))
    paths = _ihc_paths(str(out))
    _, _, _, x, y = _vis_geometry(spec, True)
    tissue = label_map(view, SEED)[y.astype(int), x.astype(int)] > 0
    return {
        "he": he,
        "ihc": Path(paths["image"]),
        "truth": np.asarray(json.loads(Path(paths["affine"]).read_text())["matrix"]),
        "mpp": _vis_mpp(True),
        "spots": np.column_stack([x, y])[tissue],
        "sample": spec.sample,
    }


def fake_section(
    xy: np.ndarray,
    spot_diameter_px: float = 20.0,
    hires_scalef: float | None = 0.5,
    sample: str = "S1",
    keep: np.ndarray | None = None,
) -> ad.AnnData:
    """A section AnnData with the fields the IHC stage reads."""
    n = len(xy)
    obs = pd.DataFrame(
        {"sample_id": sample, "keep": np.ones(n, bool) if keep is None else keep},
        index=[f"spot{i}" for i in range(n)],
    )
    a = ad.AnnData(X=np.zeros((n, 1), np.float32), obs=obs)
    a.obsm["spatial"] = np.asarray(xy, dtype=float)
    a.uns["stpredict"] = {"sample_id": sample, "spot_diameter_px": spot_diameter_px, "mpp": 2.0}
    scalefactors = {"spot_diameter_fullres": spot_diameter_px}
    if hires_scalef is not None:
        scalefactors["tissue_hires_scalef"] = hires_scalef
    a.uns["spatial"] = {sample: {"images": {}, "scalefactors": scalefactors}}
    return a
