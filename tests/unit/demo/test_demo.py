"""Tests of the demo-cohort generator (small variant; fast)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import tifffile
from PIL import Image

from stpredict.demo import demo_outputs, demo_sheet, make_demo
from stpredict.demo.cohort import SHEET_COLUMNS

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    make_demo(out, seed=7, threads=1, small=True)
    return out


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _sheet(out: Path) -> pd.DataFrame:
    return demo_sheet(str(out), small=True).set_index("sample_id")


def test_sheet_matches_committed_config() -> None:
    committed = pd.read_csv(
        REPO / "config" / "samples_demo.tsv", sep="\t", dtype=str, keep_default_na=False
    )
    expected = demo_sheet("results/demo")
    assert list(committed.columns) == SHEET_COLUMNS
    pd.testing.assert_frame_equal(committed, expected)


def test_sheet_contents() -> None:
    sheet = demo_sheet("results/demo")
    assert sheet["sample_id"].is_unique
    vis = sheet[sheet.platform == "visium"]
    assert set(vis.sample_id) >= {"P1_D1", "P1_D2", "P1_D3", "P2_A1"}
    p1 = vis[vis.patient_id == "P1"]
    assert set(p1.series) == {"P1_D"} and sorted(p1.order) == ["1", "2", "3"]
    row = sheet.set_index("sample_id").loc["P1_D2"]
    assert row.ihc_gene == "ESR1" and row.ihc_image.endswith("P1_D2_ESR1_ihc.tif")
    st = sheet[sheet.platform == "st"]
    assert st.patient_id.nunique() == 6 and len(st) >= 12
    assert (st.spots != "").all() and (vis.spots == "").all()


def test_all_outputs_exist(demo: Path) -> None:
    outs = demo_outputs(str(demo), small=True)
    for f in outs["files"]:
        assert Path(f).is_file(), f
    for d in outs["directories"]:
        assert Path(d).is_dir(), d
    sheet = _sheet(demo)
    for col in ["raw", "spots", "image", "annotation", "ihc_image"]:
        for v in sheet[col]:
            if v:
                assert Path(v).exists(), v


def test_determinism_and_threads(demo: Path, tmp_path: Path) -> None:
    other = tmp_path / "demo"
    make_demo(other, seed=7, threads=2, small=True)
    rel = [
        "visium/P1_D1/outs/filtered_feature_bc_matrix.h5",
        "visium/P1_D1/outs/spatial/tissue_positions_list.csv",
        "visium/P1_D2/P1_D2_fullres.tif",
        "visium/P1_D2/outs/analysis/clustering/gene_expression_graphclust/clusters.csv",
        "visium/P2_A1/outs/filtered_feature_bc_matrix/matrix.mtx.gz",
        "st/BC50001/BC50001_C1.tsv.gz",
        "st/BC50005/HE_BC50005_C1.jpg",
        "ihc/P1_D2_ESR1_ihc.tif",
        "wsi/W1.tif",
        "wsi/bulk_counts.tsv",
        "irrelevant/I1.jpg",
        "truth/P1_D2_spots.tsv",
        "gene_roles.tsv",
    ]
    for r in rel:
        assert _md5(demo / r) == _md5(other / r), r


def test_visium_matrices_read(demo: Path) -> None:
    sheet = _sheet(demo)
    a = sc.read_10x_h5(Path(sheet.loc["P1_D1", "raw"]) / "filtered_feature_bc_matrix.h5")
    assert a.n_obs > 1000 and a.obs_names.str.endswith("-1").all()
    assert "ESR1" in a.var_names and a.var["gene_ids"].str.startswith("ENSG").all()
    b = sc.read_10x_mtx(Path(sheet.loc["P2_A1", "raw"]) / "filtered_feature_bc_matrix")
    assert b.n_obs > 1000 and b.n_vars == a.n_vars
    # same barcode for the same array position in every section
    p1 = pd.read_csv(sheet.loc["P1_D1", "raw"] + "/spatial/tissue_positions_list.csv", header=None)
    p2 = pd.read_csv(sheet.loc["P1_D2", "raw"] + "/spatial/tissue_positions.csv")
    m = p1.set_index(0)[[2, 3]].join(p2.set_index("barcode")[["array_row", "array_col"]])
    assert (m[2] == m.array_row).all() and (m[3] == m.array_col).all()
    # filtered matrix = in-tissue spots
    intissue = set(p1.loc[p1[1] == 1, 0])
    assert set(a.obs_names) == intissue


def test_positions_files(demo: Path) -> None:
    sheet = _sheet(demo)
    nohead = pd.read_csv(
        sheet.loc["P1_D1", "raw"] + "/spatial/tissue_positions_list.csv", header=None
    )
    head = pd.read_csv(sheet.loc["P1_D2", "raw"] + "/spatial/tissue_positions.csv")
    assert nohead.shape == (4992, 6) and len(head) == 4992
    assert list(head.columns) == [
        "barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"
    ]  # fmt: skip
    assert ((head.array_row % 2) == (head.array_col % 2)).all()
    assert head.array_row.max() == 77 and head.array_col.max() == 127
    frac = head.in_tissue.mean()
    assert 0.25 < frac < 0.5


def test_images_consistent_with_positions(demo: Path) -> None:
    sheet = _sheet(demo)
    for sid in ["P1_D1", "P1_D2", "P2_A1"]:
        raw = Path(sheet.loc[sid, "raw"])
        pos = next((raw / "spatial").glob("tissue_positions*.csv"))
        header = None if pos.name.endswith("_list.csv") else 0
        df = pd.read_csv(pos, header=header)
        df.columns = ["barcode", "in_tissue", "r", "c", "y", "x"]
        with tifffile.TiffFile(sheet.loc[sid, "image"]) as tif:
            page = tif.pages[0]
            h, w = page.shape[:2]
            xres = page.tags["XResolution"].value
            assert page.tags["ResolutionUnit"].value == 3  # centimetre
            mpp_tag = 1e4 / (xres[0] / xres[1])
            img = page.asarray()
        mpp = float(sheet.loc[sid, "mpp"])
        assert mpp_tag == pytest.approx(mpp)
        inside = df[df.in_tissue == 1]
        assert inside.x.between(0, w - 1).all() and inside.y.between(0, h - 1).all()
        # pitch: neighbours (row, col+2) are 100 µm apart
        d = df.set_index(["r", "c"])
        a = d.loc[(10, 20)]
        b = d.loc[(10, 22)]
        assert np.hypot(a.x - b.x, a.y - b.y) * mpp == pytest.approx(100.0, abs=mpp * 1.5)
        # in-tissue spots are darker than off-tissue ones
        gray = img.mean(axis=2)
        off = df[df.in_tissue == 0]
        assert gray[inside.y, inside.x].mean() < gray[off.y, off.x].mean() - 20
        sf = json.loads((raw / "spatial" / "scalefactors_json.json").read_text())
        assert sf["spot_diameter_fullres"] == pytest.approx(65.0 / mpp)
        with Image.open(raw / "spatial" / "tissue_hires_image.png") as hi:
            assert hi.size[0] == pytest.approx(w * sf["tissue_hires_scalef"], abs=1)


def test_planted_link(demo: Path) -> None:
    sheet = _sheet(demo)
    a = sc.read_10x_h5(Path(sheet.loc["P1_D1", "raw"]) / "filtered_feature_bc_matrix.h5")
    truth = pd.read_csv(demo / "truth" / "P1_D1_spots.tsv", sep="\t").set_index("spot_id")
    truth = truth.loc[a.obs_names]
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    x = a.to_df()
    roles = pd.read_csv(demo / "gene_roles.tsv", sep="\t").set_index("gene")
    col = {"tumour": "frac_tumour", "stroma": "frac_stroma", "immune": "frac_immune"}
    col |= {"fat": "frac_fat", "nuclear_density": "nuclear_density"}
    for gene in ["ESR1", "ERBB2", "COL1A1", "SPARC", "POSTN", "PTPRC", "CD74", "ADIPOQ", "MKI67"]:
        drv = roles.loc[gene, "driver"]
        r = np.corrcoef(x[gene], truth[col[drv]])[0, 1]
        assert r > 0.5, (gene, drv, r)
    noise = roles.index[roles.role == "noise"]
    for gene in noise[:20]:
        for c in ["frac_tumour", "frac_stroma", "frac_immune", "frac_fat"]:
            r = np.corrcoef(x[gene], truth[c])[0, 1]
            assert abs(r) < 0.15, (gene, c, r)
    assert set(roles.role) >= {"morphology", "noise", "housekeeping", "hidden_spatial"}


def test_perm_failure(demo: Path) -> None:
    sheet = _sheet(demo)
    a = sc.read_10x_h5(Path(sheet.loc["P1_D2", "raw"]) / "filtered_feature_bc_matrix.h5")
    truth = pd.read_csv(demo / "truth" / "P1_D2_spots.tsv", sep="\t").set_index("spot_id")
    perm = truth.loc[a.obs_names, "perm_failure"].to_numpy().astype(bool)
    umi = np.asarray(a.X.sum(axis=1)).ravel()
    assert 30 < perm.sum() < 400
    assert np.median(umi[perm]) < 0.1 * np.median(umi[~perm])
    assert np.quantile(umi[perm], 0.95) < 1000
    # the tissue is still there (in_tissue) under the failed region
    assert truth.loc[a.obs_names[perm], "tissue_frac"].min() > 0.5


def test_ihc_affine(demo: Path) -> None:
    aff = json.loads((demo / "ihc" / "P1_D2_ESR1_affine.json").read_text())
    m = np.asarray(aff["matrix"], dtype=float)
    assert m.shape == (3, 3) and np.allclose(m[2], [0, 0, 1])
    assert abs(np.linalg.det(m[:2, :2]) - 1.01**2) < 1e-6
    with tifffile.TiffFile(demo / "ihc" / "P1_D2_ESR1_ihc.tif") as tif:
        assert tif.pages[0].shape[2] == 3


def test_st_files(demo: Path) -> None:
    sheet = _sheet(demo)
    counts = pd.read_csv(sheet.loc["BC50001_C1", "raw"], sep="\t", index_col=0)
    assert counts.index.str.fullmatch(r"\d+x\d+").all()
    assert counts.columns.str.startswith("ENSG").sum() > 100
    assert counts.columns.str.startswith("__ambiguous[").sum() == 2
    spots = pd.read_csv(sheet.loc["BC50001_C1", "spots"], sep="\t")
    assert list(spots.columns) == ["x", "y", "pixel_x", "pixel_y"]
    assert 200 <= len(spots) <= 500
    ids = spots.x.round().astype(int).astype(str) + "x" + spots.y.round().astype(int).astype(str)
    assert set(ids) <= set(counts.index)
    sel = pd.read_csv(sheet.loc["BC50002_C2", "spots"], sep="\t")
    assert list(sel.columns) == ["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"]
    assert len(sel) == 33 * 35 and set(sel.selected) == {0, 1}
    pub = pd.read_csv(sheet.loc["BC50005_C1", "spots"], index_col=0)
    assert list(pub.columns) == ["X", "Y"]
    ann = pd.read_csv(sheet.loc["BC50001_C1", "annotation"], sep="\t")
    assert list(ann.columns) == ["xcoord", "ycoord", "tumor"]
    assert set(ann["tumor"]) <= {"tumor", "non"}


def test_wsi_and_bulk(demo: Path) -> None:
    with tifffile.TiffFile(demo / "wsi" / "W1.tif") as tif:
        page = tif.pages[0]
        assert page.is_tiled and len(page.subifds or []) >= 1
    slides = pd.read_csv(demo / "wsi" / "slides.tsv", sep="\t")
    assert list(slides.columns) == ["slide_id", "image", "mpp", "patient_id", "subtype"]
    bulk = pd.read_csv(demo / "wsi" / "bulk_counts.tsv", sep="\t", index_col=0)
    assert list(bulk.columns) == list(slides.slide_id)
    assert (bulk.to_numpy() >= 0).all() and bulk.to_numpy().dtype.kind == "i"
    unl = pd.read_csv(demo / "unlabeled" / "images.tsv", sep="\t")
    assert list(unl.columns) == ["image_id", "image", "mpp"]


def test_archive_plants_subtypes_in_the_tissue_make_up(demo: Path) -> None:
    """The archive slides: 1-2 per patient, one subtype per patient, basal more immune."""
    slides = pd.read_csv(demo / "wsi" / "slides.tsv", sep="\t", keep_default_na=False)
    arch = slides[slides["subtype"] != ""]
    assert len(arch) >= 8 and arch.groupby("patient_id")["subtype"].nunique().max() == 1
    assert arch.groupby("patient_id").size().between(1, 2).all()
    assert set(arch["subtype"]) == {"basal", "luminal"}
    for img in arch["image"]:
        assert Path(img).is_file()
    truth = pd.read_csv(demo / "wsi" / "cohort_truth.tsv", sep="\t").set_index("slide_id")
    assert list(truth.index) == list(arch["slide_id"])
    by = truth.groupby("subtype")[["immune_frac", "tumour_frac"]].mean()
    assert by.loc["basal", "immune_frac"] > by.loc["luminal", "immune_frac"]
    assert by.loc["basal", "tumour_frac"] < by.loc["luminal", "tumour_frac"]
    # the bulk carries it: immune genes higher, tumour genes lower in basal slides (log CPM)
    bulk = pd.read_csv(demo / "wsi" / "bulk_counts.tsv", sep="\t", index_col=0)[list(arch.slide_id)]
    cpm = np.log1p(bulk / bulk.sum() * 1e6)
    basal = (arch.set_index("slide_id")["subtype"] == "basal").to_numpy()
    assert cpm.loc["PTPRC"].to_numpy()[basal].mean() > cpm.loc["PTPRC"].to_numpy()[~basal].mean()
    assert cpm.loc["ESR1"].to_numpy()[basal].mean() < cpm.loc["ESR1"].to_numpy()[~basal].mean()


def test_irrelevant_images_are_non_tissue_textures(demo: Path) -> None:
    """The irrelevant control's images: listed with their pixel size, far from H&E colours."""
    table = pd.read_csv(demo / "irrelevant" / "images.tsv", sep="\t")
    assert list(table.columns) == ["image_id", "image", "mpp"] and len(table) >= 1
    unl = np.asarray(Image.open(demo / "unlabeled" / "U1.jpg").convert("RGB"), dtype=float)
    for path in table["image"]:
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=float)
        assert rgb.shape == unl.shape
        # H&E is pink/purple (red and blue above green); the textures are not
        he = (unl[..., 0] > unl[..., 1]) & (unl[..., 2] > unl[..., 1])
        tex = (rgb[..., 0] > rgb[..., 1]) & (rgb[..., 2] > rgb[..., 1])
        assert he.mean() > 0.5 > tex.mean()
    from stpredict.demo.textures import render_texture

    a = render_texture(7, "I1", 64, 0)
    assert np.array_equal(a, render_texture(7, "I1", 64, 0))
    assert not np.array_equal(a, render_texture(8, "I1", 64, 0))
