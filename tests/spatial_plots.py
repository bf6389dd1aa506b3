"""Draw a result AnnData the way users do, with scanpy and squidpy, and check the H&E is drawn."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402


def _image_and_spots(ax, n_spots: int, what: str) -> None:
    images = [im for im in ax.get_children() if isinstance(im, AxesImage)]
    assert images, f"{what}: no image drawn"
    arr = np.asarray(images[0].get_array())
    assert arr.ndim == 3 and min(arr.shape[:2]) > 10, f"{what}: image {arr.shape}"
    assert float(np.asarray(arr, dtype=float).std()) > 0, f"{what}: a blank image"
    drawn = sum(max(len(c.get_offsets()), len(c.get_paths())) for c in ax.collections)
    assert drawn >= n_spots, f"{what}: {drawn} spots drawn of {n_spots}"


def draw_with_scanpy_and_squidpy(adata, sample: str, gene: str) -> None:
    """``sc.pl.spatial`` and ``sq.pl.spatial_scatter`` of ``layers["predicted"]`` over the H&E."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the libraries' own notes (docrep's SyntaxWarnings...)
        import scanpy as sc
        import squidpy as sq

        axes = sc.pl.spatial(adata, color=gene, layer="predicted", library_id=sample, show=False)
        _image_and_spots(axes[0], adata.n_obs, "scanpy.pl.spatial")
        plt.close("all")
        ax = sq.pl.spatial_scatter(
            adata, color=gene, layer="predicted", library_id=sample, return_ax=True
        )
        ax = ax[0] if isinstance(ax, (list, tuple)) else ax
        _image_and_spots(ax, adata.n_obs, "squidpy.pl.spatial_scatter")
        plt.close("all")
