"""Registration of the demo's IHC to its H&E: real images, real scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from stpredict.errors import GeometryError, InputError
from stpredict.ihc.register import (
    affine_error,
    apply_affine,
    read_known_affine,
    register_images,
    register_section,
)
from stpredict.ingest.images import open_image

from .conftest import fake_section

SETTINGS = {
    "match_um_px": 8.0,
    "refine_um_px": 4.0,
    "smooth_um": 12.0,
    "n_keypoints": 2000,
    "ransac_um": 16.0,
    "min_inliers": 10,
    "max_refine_um": 100.0,
}


@pytest.fixture(scope="module")
def registered(demo_pair):
    with open_image(demo_pair["he"]) as he, open_image(demo_pair["ihc"]) as ihc:
        return register_images(he, ihc, demo_pair["mpp"], demo_pair["mpp"], SETTINGS, 0, "P1_D2")


def test_recovers_the_known_affine(registered, demo_pair):
    err = affine_error(np.asarray(registered["matrix"]), demo_pair["truth"], demo_pair["spots"])
    # within a few full-resolution px over every in-tissue spot (small demo: 4 µm/px)
    assert err["mean"] < 1.5 and err["max"] < 3.0, err
    assert registered["refined"] and registered["ecc_end"] >= registered["ecc_start"]
    assert abs(registered["rotation_deg"] - 2.0) < 0.2 and abs(registered["scale"] - 1.01) < 0.005
    assert registered["n_inliers"] >= SETTINGS["min_inliers"]
    assert 0 < registered["ransac_residual_px"] < 10


def test_refinement_improves_on_ransac(registered, demo_pair):
    ransac = affine_error(
        np.asarray(registered["ransac_matrix"]), demo_pair["truth"], demo_pair["spots"]
    )
    final = affine_error(np.asarray(registered["matrix"]), demo_pair["truth"], demo_pair["spots"])
    assert final["mean"] < ransac["mean"]


def test_is_reproducible(registered, demo_pair):
    with open_image(demo_pair["he"]) as he, open_image(demo_pair["ihc"]) as ihc:
        again = register_images(he, ihc, demo_pair["mpp"], demo_pair["mpp"], SETTINGS, 0, "P1_D2")
    np.testing.assert_allclose(again["matrix"], registered["matrix"])


def test_mirrored_ihc_is_refused_in_one_line(demo_pair, tmp_path):
    mirrored = tmp_path / "mirrored.tif"
    tifffile.imwrite(mirrored, np.ascontiguousarray(tifffile.imread(demo_pair["ihc"])[:, ::-1]))
    with open_image(demo_pair["he"]) as he, open_image(mirrored, "P1_D2") as ihc:
        with pytest.raises(GeometryError) as exc:
            register_images(he, ihc, demo_pair["mpp"], demo_pair["mpp"], SETTINGS, 0, "P1_D2")
    msg = str(exc.value)
    assert "\n" not in msg and "registration of the IHC image to the H&E failed" in msg
    assert "sample 'P1_D2'" in msg and str(mirrored) in msg and "Fix:" in msg


def test_unrelated_image_is_refused(demo_pair, tmp_path):
    noise = tmp_path / "noise.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(noise, rng.integers(180, 255, (600, 600, 3), dtype=np.uint8))
    with open_image(demo_pair["he"]) as he, open_image(noise) as ihc:
        with pytest.raises(GeometryError, match="inliers|agree on one plausible"):
            register_images(he, ihc, demo_pair["mpp"], demo_pair["mpp"], SETTINGS, 0, "P1_D2")


def test_missing_ihc_file_is_one_line(demo_pair, tmp_path):
    section = tmp_path / "section.h5ad"
    fake_section(demo_pair["spots"]).write_h5ad(section)
    with pytest.raises(InputError) as exc:
        register_section(
            section, demo_pair["he"], tmp_path / "absent.tif", SETTINGS, seed=0, sample="S1"
        )
    msg = str(exc.value)
    assert "\n" not in msg and "absent.tif" in msg and "ihc_image" in msg and "sample 'S1'" in msg


def test_register_section_reports_the_known_error(demo_pair, tmp_path):
    section = tmp_path / "section.h5ad"
    a = fake_section(demo_pair["spots"])
    a.uns["stpredict"]["mpp"] = demo_pair["mpp"]
    a.write_h5ad(section)
    known = demo_pair["ihc"].with_name("P1_D2_ESR1_affine.json")
    out = register_section(
        section,
        demo_pair["he"],
        demo_pair["ihc"],
        SETTINGS,
        seed=0,
        sample="S1",
        known_affine=known,
    )
    assert out["known_affine_error_px"]["mean"] < 1.5
    assert out["known_affine_error_ransac_px"]["mean"] >= out["known_affine_error_px"]["mean"]
    assert out["mpp_ihc_source"] == "image tags"


def test_known_affine_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"matrix": [[1, 0], [0, 1]]}')
    with pytest.raises(InputError, match="3 x 3"):
        read_known_affine(bad, "S1")
    with pytest.raises(InputError, match="cannot read"):
        read_known_affine(tmp_path / "absent.json", "S1")


def test_apply_and_error_of_an_affine():
    m = np.array([[1.0, 0, 5], [0, 1.0, -3], [0, 0, 1]])
    xy = np.array([[0.0, 0.0], [10.0, 20.0]])
    np.testing.assert_allclose(apply_affine(m, xy), [[5, -3], [15, 17]])
    assert affine_error(m, m, xy)["max"] == 0
    shifted = m.copy()
    shifted[0, 2] += 2
    assert affine_error(shifted, m, xy)["mean"] == pytest.approx(2.0)


# A greyscale IHC image is refused naming the IHC image and the sheet's ihc_image column (the
# H&E and its image column are fine): found by a new-user review.
def test_greyscale_ihc_error_names_the_ihc_image_column(demo_pair, tmp_path):
    rgb = tifffile.imread(demo_pair["ihc"])
    grey = tmp_path / "grey_ihc.tif"
    tifffile.imwrite(grey, rgb.mean(axis=2).astype(np.uint8))
    section = tmp_path / "section.h5ad"
    fake_section(demo_pair["spots"]).write_h5ad(section)
    with pytest.raises(InputError) as exc:
        register_section(section, demo_pair["he"], grey, SETTINGS, seed=0, sample="S1")
    msg = str(exc.value)
    assert "\n" not in msg and "grey_ihc.tif" in msg
    assert "ihc_image" in msg and "H&E image is required" not in msg
