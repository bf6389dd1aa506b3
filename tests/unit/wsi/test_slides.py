from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stpredict.errors import ConfigError, GeometryError, InputError
from stpredict.ingest.images import SlideImage
from stpredict.wsi.slides import (
    Level,
    LevelImage,
    choose_level,
    read_slides,
    resolve_mpp,
    slide_levels,
)
from tests.unit.wsi.helpers import tissue_image, write_png, write_pyramid


def _table(tmp_path, rows, name="slides.tsv"):
    p = tmp_path / name
    pd.DataFrame(rows).to_csv(p, sep="\t", index=False)
    return p


def _one_line(msg: str, *parts: str) -> None:
    assert "\n" not in msg
    for part in parts:
        assert part in msg, (part, msg)


# ------------------------------------------------------------------------------ slide table
def test_slide_table_is_read_and_indexed(tmp_path):
    img = write_png(tmp_path / "a.png", tissue_image(64, 64))
    p = _table(tmp_path, {"slide_id": ["A", "B"], "image": [str(img), str(img) + ".x"]})
    with pytest.raises(ConfigError) as e:
        read_slides(p)
    _one_line(str(e.value), "row 3", "'image'", "sample 'B'", str(p), "Fix:")
    t = read_slides(p, produced=[str(img) + ".x"])  # made by a rule: accepted before it exists
    assert list(t.index) == ["A", "B"] and t.loc["A", "mpp"] == "" and "patient_id" in t


@pytest.mark.parametrize(
    "rows, match",
    [
        ({"slide_id": ["A", "A"], "image": ["x.png", "y.png"]}, "share the slide_id"),
        ({"slide_id": ["A", "B"], "image": ["x.png", "./x.png"]}, "share the image"),
        ({"slide_id": ["A b"], "image": ["x.png"]}, "row 2, column 'slide_id'"),
        ({"slide_id": ["A"], "image": ["x.png"], "mpp": ["0.5um"]}, "row 2, column 'mpp'"),
        ({"slide_id": ["A"], "image": ["x.png"], "mpp": ["0"]}, "must be positive"),
        ({"slide_id": ["A"], "image": ["x.png"], "mmp": ["0.5"]}, "unknown column.*mmp"),
        ({"slide_id": ["A"], "image": [""]}, "row 2, column 'image'"),
    ],
)
def test_bad_slide_tables_are_refused_in_one_line(tmp_path, rows, match):
    p = _table(tmp_path, rows)
    with pytest.raises(ConfigError, match=match) as e:
        read_slides(p, produced=["x.png", "y.png"])
    _one_line(str(e.value), str(p), "Fix:")


# ------------------------------------------------------------------------------ pixel size
def test_mpp_from_table_tags_both_or_neither(tmp_path):
    tif = tmp_path / "s.tif"
    write_pyramid(tif, tissue_image(128, 128), mpp=0.5, n_levels=2)
    with SlideImage(tif, sample="S") as img:
        assert resolve_mpp(img, None, 0.1, "S") == (pytest.approx(0.5), "image tags")
        assert resolve_mpp(img, "0.52", 0.1, "S")[1] == "given (agrees with the image tags)"
        with pytest.raises(GeometryError) as e:
            resolve_mpp(img, 0.25, 0.1, "S")
        _one_line(str(e.value), "0.25", "0.5", str(tif), "sample 'S'", "Fix:")
    png = write_png(tmp_path / "s.png", tissue_image(64, 64))
    with SlideImage(png, sample="P") as img:
        assert resolve_mpp(img, 2.0, 0.1, "P") == (2.0, "given")
        with pytest.raises(GeometryError, match="must be positive"):
            resolve_mpp(img, "0.5 um", 0.1, "P")
        with pytest.raises(InputError) as e:
            resolve_mpp(img, None, 0.1, "P")
        _one_line(str(e.value), "not given", str(png), "sample 'P'", "--mpp")


# ------------------------------------------------------------------------------ levels
def _levels(*mpps):
    return [Level(k, (100, 100), m / mpps[0], m) for k, m in enumerate(mpps)]


@pytest.mark.parametrize(
    "target, want",
    [(2.0, 2), (2.1, 2), (1.9, 1), (1.99, 2), (3.9, 2), (4.3, 3), (100, 3), (0.5, 0), (0.49, 0)],
)
def test_level_is_the_coarsest_at_or_finer_than_the_model(target, want):
    assert choose_level(_levels(0.5, 1.0, 2.0, 4.0), target, 0.1).index == want


def test_a_level_coarser_than_the_model_is_refused():
    with pytest.raises(GeometryError) as e:
        choose_level(_levels(0.5, 1.0), 0.4, 0.1, file="s.tif", slide="S")
    _one_line(str(e.value), "0.5 µm/px", "coarser", "s.tif", "sample 'S'", "Fix:")
    assert choose_level(_levels(0.5, 1.0), 0.46, 0.1).index == 0  # within the tolerance


def test_levels_of_a_pyramidal_tiff_are_read_by_region(tmp_path):
    tif = tmp_path / "p.tif"
    levels = write_pyramid(tif, tissue_image(256, 320), mpp=0.5, n_levels=3)
    with SlideImage(tif, sample="P") as img:
        lv = slide_levels(img, 0.5)
        assert [x.shape for x in lv] == [(256, 320), (128, 160), (64, 80)]
        assert [x.mpp for x in lv] == [0.5, 1.0, 2.0] and [x.downsample for x in lv] == [1, 2, 4]
        view = LevelImage(img, lv[2])
        assert view.shape == (64, 80)
        region = view.read_region(-3, 10, 20, 30, fill=7)
        assert np.array_equal(region[:, 3:], levels[2][10:40, 0:17])
        assert (region[:, :3] == 7).all()
        assert img._array is None  # never decoded whole
    png = write_png(tmp_path / "p.png", levels[0])
    with SlideImage(png) as img:
        assert [x.shape for x in slide_levels(img, 1.0)] == [(256, 320)]
