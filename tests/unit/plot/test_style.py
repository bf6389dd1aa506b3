"""The report copies of the figures: small, same picture, written for every ``<name>_report``."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from stpredict.plot.style import REPORT_MAX_PIXELS, report_copy, save_figure
from stpredict.workflow import write_report_copies


def _big_figure(png):
    """A figure like the QC and map figures: an H&E-like image and a scatter, 150 dpi."""
    rng = np.random.default_rng(0)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 6))
    a.imshow(rng.integers(120, 255, (600, 600, 3), dtype=np.uint8))
    b.scatter(*rng.uniform(size=(2, 2000)), c=rng.uniform(size=2000), s=6)
    b.set_title("measured")
    save_figure(fig, png, dpi=150)
    plt.close(fig)


def test_report_copy_is_a_small_palette_png_of_the_same_picture(tmp_path):
    src, dst = tmp_path / "maps.png", tmp_path / "report" / "maps.png"
    _big_figure(src)
    w, h = report_copy(src, dst)
    with Image.open(src) as full, Image.open(dst) as small:
        assert small.size == (w, h) and small.mode == "P"
        assert w * h <= REPORT_MAX_PIXELS < full.width * full.height
        assert abs(w / h - full.width / full.height) < 0.01  # aspect ratio kept
        # the same picture: the full figure scaled down matches the copy closely
        ref = np.asarray(full.convert("RGB").resize((w, h), Image.Resampling.LANCZOS), float)
        err = np.abs(np.asarray(small.convert("RGB"), float) - ref).mean()
        assert err < 6, err
    assert dst.stat().st_size < src.stat().st_size / 3


def test_a_small_figure_keeps_its_size(tmp_path):
    src = tmp_path / "loss.png"
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [3, 1, 2])
    save_figure(fig, src, dpi=100)
    plt.close(fig)
    with Image.open(src) as full:
        assert report_copy(src, tmp_path / "small.png") == full.size


def test_every_report_output_gets_the_copy_of_its_figure(tmp_path):
    from snakemake.iocontainers import Namedlist

    for name in ("a", "b"):
        _big_figure(tmp_path / f"{name}.png")
    out = Namedlist(
        fromdict={
            "a": str(tmp_path / "a.png"),
            "a_report": str(tmp_path / "report" / "a.png"),
            "a_pdf": str(tmp_path / "a.pdf"),  # not a figure with a report copy
            "b": str(tmp_path / "b.png"),
            "b_report": str(tmp_path / "report" / "b.png"),
        }
    )
    written = write_report_copies(out)
    assert written == [out.a_report, out.b_report]
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["a.png", "b.png"]
