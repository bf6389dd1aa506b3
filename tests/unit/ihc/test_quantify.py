"""Per-spot IHC measures on synthetic images of known DAB (skimage's own stain vectors)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.color import hed2rgb

from stpredict.errors import GeometryError, InputError
from stpredict.ihc.quantify import (
    OD_PER_HED,
    dab_od,
    measure_spots,
    spot_geometry,
    spot_table,
    target_column,
)
from stpredict.ingest.images import open_image

from .conftest import fake_section

IDENTITY = np.eye(3)


def stained(dab_decadic: np.ndarray, hema: float = 0.3) -> np.ndarray:
    """RGB uint8 of a known decadic DAB optical density (and a haematoxylin counterstain)."""
    hed = np.zeros(dab_decadic.shape + (3,))
    hed[..., 0] = hema / OD_PER_HED
    hed[..., 2] = dab_decadic / OD_PER_HED
    return np.clip(np.rint(hed2rgb(hed) * 255), 0, 255).astype(np.uint8)


@pytest.fixture
def image(tmp_path):
    """A 400 x 600 image: DAB OD 0.05 on the left, 0.4 on the right, a gradient in between."""
    dab = np.zeros((400, 600))
    dab[:, :200] = 0.05
    dab[:, 400:] = 0.4
    dab[:, 200:400] = np.linspace(0.05, 0.4, 200)[None, :]
    path = tmp_path / "ihc.tif"
    tifffile.imwrite(path, stained(dab))
    return path, dab


def test_dab_od_recovers_the_known_density():
    dab = np.array([[0.0, 0.1, 0.3, 0.6]])
    got = dab_od(stained(dab))
    np.testing.assert_allclose(got[0], dab[0], atol=0.02)


def test_measures_at_known_spots(image):
    path, dab = image
    xy = np.array([[100.0, 200.0], [500.0, 200.0], [300.0, 100.0], [5.0, 200.0]])
    section = fake_section(xy, spot_diameter_px=30.0, hires_scalef=0.5)
    geom = spot_geometry(section, IDENTITY, 14, "hires", "S1")
    assert geom.square_px == 28 and geom.disk_radius_px == pytest.approx(15.0)
    with open_image(path) as ihc:
        m = measure_spots(ihc, geom)
    assert list(m["inside"]) == [True, True, True, False]
    assert m.loc[0, "dab_od"] == pytest.approx(0.05, abs=0.01)
    assert m.loc[1, "dab_od"] == pytest.approx(0.4, abs=0.02)
    assert m.loc[2, "dab_od"] == pytest.approx(dab[100, 300], abs=0.02)
    assert m.loc[0, "darkness"] < m.loc[2, "darkness"] < m.loc[1, "darkness"]
    assert m.loc[:2, "darkness"].to_numpy() == pytest.approx(255 - m.loc[:2, "mean_rgb"])
    assert np.isnan(m.loc[3, "dab_od"]) and np.isnan(m.loc[3, "mean_rgb"])


def test_square_is_the_papers_14_px_at_the_chosen_scale(image):
    path, _ = image
    xy = np.array([[300.0, 200.0]])
    section = fake_section(xy, hires_scalef=0.25)
    scaled = np.diag([1.5, 1.5, 1.0])
    assert spot_geometry(section, IDENTITY, 14, "hires", "S1").square_px == 56
    assert spot_geometry(section, scaled, 14, "hires", "S1").square_px == 84
    assert spot_geometry(section, scaled, 14, "fullres", "S1").square_px == 14
    geom = spot_geometry(section, scaled, 14, "fullres", "S1")
    np.testing.assert_allclose(geom.ihc_xy, [[450.0, 300.0]])
    assert geom.disk_radius_px == pytest.approx(15.0)  # 20 px spot x 1.5 / 2


def test_no_hires_scale_factor_is_a_one_line_error():
    section = fake_section(np.array([[10.0, 10.0]]), hires_scalef=None)
    with pytest.raises(GeometryError) as exc:
        spot_geometry(section, IDENTITY, 14, "hires", "S1")
    assert "\n" not in str(exc.value) and "square_scale: fullres" in str(exc.value)


def test_measures_follow_the_transform(image):
    """Spots of the H&E land where the transform says on the IHC."""
    path, dab = image
    m = np.array([[1.0, 0.0, 300.0], [0.0, 1.0, 50.0], [0, 0, 1]])  # IHC = H&E + (300, 50)
    section = fake_section(np.array([[-200.0, 150.0], [200.0, 150.0]]), spot_diameter_px=20.0)
    with open_image(path) as ihc:
        got = measure_spots(ihc, spot_geometry(section, m, 14, "fullres", "S1"))
    assert got.loc[0, "dab_od"] == pytest.approx(0.05, abs=0.01)
    assert got.loc[1, "dab_od"] == pytest.approx(0.4, abs=0.02)


def test_spot_table_and_target_column():
    import anndata as ad

    xy = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0]])
    section = fake_section(xy, keep=np.array([True, False, True]))
    geom = spot_geometry(section, IDENTITY, 4, "fullres", "S1")
    measures = pd.DataFrame(
        {"inside": True, "darkness": [1.0, 2, 3], "dab_od": [0.1, 0.2, 0.3]}, index=[0, 1, 2]
    )
    pred = ad.AnnData(
        X=np.array([[1.0], [3.0]], np.float32),
        obs=pd.DataFrame({"spot_id": ["spot2", "spot0"]}, index=["spot2", "spot0"]),
        var=pd.DataFrame(index=["ESR1"]),
    )
    pred.layers["predicted"] = np.array([[0.5], [0.7]], np.float32)
    measured, predicted = target_column(pred, "ESR1", "S1", "p.h5ad", "exp")
    table = spot_table(section, geom, measures, measured, predicted)
    assert list(table["spot_id"]) == ["spot0", "spot1", "spot2"]
    np.testing.assert_allclose(table["measured"], [3.0, np.nan, 1.0])
    np.testing.assert_allclose(table["predicted"], [0.7, np.nan, 0.5], rtol=1e-6)
    assert list(table["keep"]) == [True, False, True]
    with pytest.raises(InputError) as exc:
        target_column(pred, "PGR", "S1", "p.h5ad", "exp")
    assert "\n" not in str(exc.value) and "did not predict PGR" in str(exc.value)
