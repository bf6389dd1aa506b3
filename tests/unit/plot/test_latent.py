"""Latent-space figures (stpredict.plot.latent): PNG and PDF written, missing examples and NaNs drawn around."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stpredict.plot.latent import plot_ig_overlays, plot_umap
from tests.unit.plot.figure_inputs import (
    check_outputs,
)


@pytest.mark.parametrize("with_patches", [True, False])
def test_umap_figure_with_and_without_example_patches(tmp_path, with_patches):
    rng = np.random.default_rng(4)
    n = 400
    labels = rng.choice(["tumor", "non", ""], n)
    coords = rng.normal(0, 1, (n, 2)) + (labels == "tumor")[:, None] * 2.5
    examples = pd.DataFrame(
        {
            "kind": ["tumour", "normal", "unannotated", "far"],
            "index": [
                int(np.flatnonzero(labels == "tumor")[0]),
                int(np.flatnonzero(labels == "non")[0]),
                7,
                11,
            ],
        }
    )
    patches = rng.integers(0, 255, (4, 32, 32, 3)).astype(np.uint8) if with_patches else None
    png = tmp_path / "umap.png"
    plot_umap(coords, labels, png, examples, patches, "UMAP of patch features")
    check_outputs(png)


def test_umap_figure_without_examples(tmp_path):
    rng = np.random.default_rng(5)
    png = tmp_path / "umap_plain.png"
    plot_umap(
        rng.normal(size=(50, 2)),
        np.array(["tumor"] * 25 + [""] * 25, dtype=object),
        png,
        title="plain",
    )
    check_outputs(png)


def test_ig_overlays_with_empty_and_nan_attributions(tmp_path):
    rng = np.random.default_rng(6)
    patches = rng.integers(100, 255, (7, 24, 24, 3)).astype(np.uint8)
    attr = rng.normal(size=(7, 24, 24))
    attr[1] = 0.0  # no attribution at all
    attr[2, :3] = np.nan
    png = tmp_path / "ig.png"
    plot_ig_overlays(
        patches,
        attr,
        "ERBB2",
        png,
        values=[1.0, np.nan, 2.0, 0.5, 0.1, 3.0, 2.2],
        units_label="log1p",
    )
    check_outputs(png)
    png2 = tmp_path / "ig_one.png"
    plot_ig_overlays(patches[:1], attr[:1], "ERBB2", png2)
    check_outputs(png2, min_w=150)
