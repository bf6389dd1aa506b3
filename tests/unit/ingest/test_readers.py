"""Tests of stpredict.ingest.section on real files written by others and on synthetic fixtures."""

from __future__ import annotations

import gc
import os
import shutil
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stpredict.errors import GeometryError, InputError
from stpredict.ingest.geometry import estimate_mpp_from_pitch, visium_lattice
from stpredict.ingest.section import read_section
from stpredict.ingest.st import read_st, read_st_annotation
from stpredict.ingest.visium import read_visium

formats = pytest.importorskip("stpredict.demo.formats")

REAL = Path(
    os.environ.get(
        "STPREDICT_REAL_FIXTURES",
        Path(__file__).resolve().parents[3].parent / "shared/fixtures/real",
    )
)
realdata = pytest.mark.realdata
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/fixtures/real absent")

OBS_COLUMNS = {
    "sample_id",
    "patient_id",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
    "annotation",
    "cluster",
    "total_counts",
    "n_genes_by_counts",
}


def check_contract(a: ad.AnnData, sample: str, tmp_path: Path) -> None:
    assert sp.issparse(a.X) and a.X.dtype == np.float32 and a.X.format == "csr"
    assert OBS_COLUMNS <= set(a.obs.columns)
    assert a.obs["in_tissue"].dtype == bool
    assert a.var_names.is_unique
    assert {"gene_ids", "feature_types", "ambiguous"} <= set(a.var.columns)
    sp_ = a.obsm["spatial"]
    assert sp_.dtype == np.float64 and sp_.shape == (a.n_obs, 2)
    np.testing.assert_array_equal(sp_[:, 0], a.obs["pxl_col_in_fullres"].to_numpy())
    np.testing.assert_array_equal(sp_[:, 1], a.obs["pxl_row_in_fullres"].to_numpy())
    sf = a.uns["spatial"][sample]["scalefactors"]
    assert {"tissue_hires_scalef", "tissue_lowres_scalef", "spot_diameter_fullres"} <= set(sf)
    assert "lowres" in a.uns["spatial"][sample]["images"]
    info = a.uns["stpredict"]
    for key in ("sample_id", "platform", "mpp", "mpp_source", "mpp_estimates", "spot_diameter_px"):
        assert key in info
    assert {"barcode", "in_tissue", "array_row", "array_col", "x", "y"} <= set(a.uns["positions"])
    # round trip through h5ad
    path = tmp_path / f"{sample}.h5ad"
    a.write_h5ad(path)
    b = ad.read_h5ad(path)
    assert (b.obs_names == a.obs_names).all()
    assert (b.X != a.X).nnz == 0
    pd.testing.assert_frame_equal(b.obs, a.obs, check_categorical=False, check_dtype=False)
    assert b.uns["stpredict"]["mpp"] == pytest.approx(info["mpp"])


# ============================================================================ real fixtures
@realdata
@needs_real
def test_real_visium_sr1_matches_scanpy(tmp_path):
    import scanpy as sc

    outs = REAL / "visium_sr1_scanpy"
    a = read_visium(outs, "V1", "P1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sc.read_visium(outs)
    assert list(a.obs_names) == list(ref.obs_names)
    assert (sp.csr_matrix(ref.X) != a.X).nnz == 0
    np.testing.assert_allclose(a.obsm["spatial"], ref.obsm["spatial"].astype(float))
    np.testing.assert_array_equal(a.obs["array_row"], ref.obs["array_row"])
    np.testing.assert_array_equal(a.obs["array_col"], ref.obs["array_col"])
    assert list(a.var["gene_ids"]) == list(ref.var["gene_ids"])
    assert len(a.uns["positions"]["barcode"]) == 4992
    check_contract(a, "V1", tmp_path)


@realdata
@needs_real
def test_real_visium_pitch_agrees_with_scalefactors_65um():
    """Pitch: 138 px per 100 µm -> 0.7246 µm/px; scalefactors 89.43 px as 65 µm -> 0.7268."""
    outs = REAL / "visium_sr1_scanpy"
    a = read_visium(outs, "V1", "P1")
    est = a.uns["stpredict"]["mpp_estimates"]
    assert est["pitch"] == pytest.approx(0.7246, abs=0.002)
    assert est["spot_diameter_fullres"] == pytest.approx(65 / 89.4275, rel=1e-4)
    assert est["pitch"] == pytest.approx(est["spot_diameter_fullres"], rel=0.01)
    # read as 55 µm the scale factor would give 0.615 µm/px: 15 % off the pitch
    assert abs(55 / 89.4275 - est["pitch"]) / est["pitch"] > 0.1
    assert a.uns["stpredict"]["mpp_source"] == "pitch"


@realdata
@needs_real
def test_real_visium_lowres_as_fullres_fails_bounds():
    outs = REAL / "visium_sr1_scanpy"
    with pytest.raises(GeometryError) as ei:
        read_visium(outs, "V1", "P1", image=outs / "spatial/tissue_lowres_image.png")
    msg = str(ei.value)
    assert "in-tissue spots lie outside the 600x600 image" in msg
    assert "sample 'V1'" in msg and "tissue_positions_list.csv" in msg and "Fix:" in msg


@realdata
@needs_real
def test_real_st_xfuse(tmp_path):
    d = REAL / "st_xfuse_mob"
    a = read_st(d / "counts.tsv", d / "spots.tsv", "MOBX", "mouse", d / "image.jpg")
    assert a.n_obs == 282 and a.n_vars == 10
    assert a.uns["stpredict"]["mpp"] == pytest.approx(6.9, abs=0.1)
    assert a.obs["array_col"].iloc[0] == 17 and a.obs["array_row"].iloc[0] == 17
    check_contract(a, "MOBX", tmp_path)


@realdata
@needs_real
def test_real_st_xfuse_transposed_fails(tmp_path):
    d = REAL / "st_xfuse_mob"
    spots = pd.read_csv(d / "spots.tsv", sep="\t")
    spots[["pixel_x", "pixel_y"]] = spots[["pixel_y", "pixel_x"]].to_numpy()
    bad = tmp_path / "spots.tsv"
    spots.to_csv(bad, sep="\t", index=False)
    with pytest.raises(GeometryError) as ei:
        read_st(d / "counts.tsv", bad, "MOBX", "mouse", d / "image.jpg")
    msg = str(ei.value)
    assert "transposed" in msg and "sample 'MOBX'" in msg and str(bad) in msg


@realdata
@needs_real
def test_real_st_stutility_mob1(tmp_path):
    d = REAL / "st_stutility_mob1"
    a = read_st(d / "MOB1.tsv", d / "alignment_table_MOB1.tsv", "MOB1", "mouse1", d / "MOB1.jpg")
    assert 350 <= a.n_obs <= 420 and a.n_vars == 1000
    assert 4.0 <= a.uns["stpredict"]["mpp"] <= 5.0  # staggered 2k array: 100 µm per unit
    assert a.uns["stpredict"]["array_unit_um"] == 100
    assert a.var_names[0].startswith("ENSMUSG")
    assert len(a.uns["positions"]["barcode"]) == 2068
    assert a.uns["positions"]["in_tissue"].sum() == 379
    check_contract(a, "MOB1", tmp_path)


# ============================================================================ synthetic
MPP = 2.0  # µm/px of the synthetic "full-resolution" images (small and fast)
GENES = [f"ENSG{i:011d}" for i in range(12)]
SYMBOLS = [f"G{i}" for i in range(11)] + ["G0"]  # a repeated symbol


def render(path: Path, w: int, h: int, centre, radius: float, kind: str = "png") -> Path:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 244, np.uint8)
    img[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < radius**2] = (175, 95, 165)
    if kind == "png":
        formats.write_png(path, img)
    elif kind == "tiff":
        formats.write_tiff(path, img, mpp=MPP)
    else:
        formats.write_jpeg(path, img)
    return path


def visium_positions(n_rows=16, n_cols=32):
    rows, cols = visium_lattice(n_rows, n_cols)
    px = 100.0 / MPP
    x = 40 + cols * px / 2
    y = 40 + rows * px * np.sqrt(3) / 2
    bc = [f"AC{i:06d}GT-1" for i in range(len(rows))]
    return pd.DataFrame(
        {
            "barcode": bc,
            "in_tissue": 0,
            "array_row": rows,
            "array_col": cols,
            "pxl_row_in_fullres": y,
            "pxl_col_in_fullres": x,
        }
    )


def make_visium(
    root: Path,
    *,
    header: bool = True,
    gz: bool = False,
    mtx: bool = False,
    r_barcodes: bool = False,
    image: str | None = "png",
) -> dict:
    outs = root / "outs"
    (outs / "spatial").mkdir(parents=True)
    pos = visium_positions()
    w, h = int(pos.pxl_col_in_fullres.max() + 40), int(pos.pxl_row_in_fullres.max() + 40)
    centre, radius = (w * 0.4, h * 0.5), min(w, h) * 0.35
    d = np.hypot(pos.pxl_col_in_fullres - centre[0], pos.pxl_row_in_fullres - centre[1])
    pos.loc[d < radius - 15, "in_tissue"] = 1
    tissue = pos[pos.in_tissue == 1]
    rng = np.random.default_rng(1)
    counts = rng.poisson(2.0, size=(len(tissue), len(GENES)))
    bcs = list(tissue.barcode)
    if mtx:
        formats.write_10x_mtx(outs / "filtered_feature_bc_matrix", counts, bcs, GENES, SYMBOLS)
    else:
        formats.write_10x_h5(outs / "filtered_feature_bc_matrix.h5", counts, bcs, GENES, SYMBOLS)
    name = "tissue_positions.csv" if header else "tissue_positions_list.csv"
    pos_out = pos.copy()
    if r_barcodes:
        pos_out["barcode"] = pos_out["barcode"].str.replace("-1", ".1", regex=False)
    pos_path = outs / "spatial" / (name + (".gz" if gz else ""))
    formats.write_positions(pos_path, pos_out, header=header)
    formats.write_scalefactors(
        outs / "spatial/scalefactors_json.json", 0.5, 0.1, 65 / MPP, 105 / MPP
    )
    lo = np.full((int(h * 0.1), int(w * 0.1), 3), 240, np.uint8)
    formats.write_png(outs / "spatial/tissue_lowres_image.png", lo)
    img = None
    if image:
        img = render(
            root / f"he.{'tif' if image == 'tiff' else image}", w, h, centre, radius, image
        )
    return {
        "outs": outs,
        "image": img,
        "pos": pos,
        "pos_path": pos_path,
        "counts": counts,
        "barcodes": bcs,
        "shape": (h, w),
    }


@pytest.mark.parametrize(
    "kw",
    [
        {"header": False},  # Space Ranger 1.x
        {"header": True},  # Space Ranger >= 2
        {"header": True, "mtx": True},
        {"header": False, "gz": True},
        {"header": True, "gz": True},
        {"header": True, "r_barcodes": True},
    ],
    ids=["sr1", "sr2", "mtx", "sr1-gz", "sr2-gz", "r-barcodes"],
)
def test_visium_variants(tmp_path, kw):
    v = make_visium(tmp_path, **kw)
    a = read_visium(v["outs"], "S1", "P1", image=v["image"])
    assert list(a.obs_names) == v["barcodes"]
    np.testing.assert_array_equal(a.X.toarray(), v["counts"].astype(np.float32))
    assert a.var_names.is_unique and list(a.var["gene_ids"]) == GENES
    assert a.obs["in_tissue"].all()
    assert a.uns["stpredict"]["mpp"] == pytest.approx(MPP, rel=1e-3)
    assert len(a.uns["positions"]["barcode"]) == len(v["pos"])
    assert a.uns["stpredict"]["image_shape"].tolist() == list(v["shape"])
    check_contract(a, "S1", tmp_path)


# images.SlideImage keeps tifffile's zarr store open (no close()): its FileIO is reported as a
# ResourceWarning when garbage-collected; collect it here so it cannot fail a later test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_visium_tiff_tags_read_and_clusters_annotation(tmp_path):
    v = make_visium(tmp_path, image="tiff")
    outs = v["outs"]
    cl = outs / "analysis/clustering/gene_expression_graphclust/clusters.csv"
    cl.parent.mkdir(parents=True)
    pd.DataFrame(
        {"Barcode": v["barcodes"], "Cluster": [i % 3 + 1 for i in range(len(v["barcodes"]))]}
    ).to_csv(cl, index=False)
    ann = tmp_path / "ann.csv"
    pd.DataFrame(
        {"barcode": [b.replace("-1", ".1") for b in v["barcodes"][:5]], "label": "tumour"}
    ).to_csv(ann, index=False)
    a = read_visium(outs, "S1", "P1", image=v["image"], annotation=ann)
    # the tag is read and agrees; the spot pitch (measured in the coordinates) is preferred
    assert a.uns["stpredict"]["mpp_estimates"]["image_tags"] == pytest.approx(MPP)
    assert a.uns["stpredict"]["mpp_source"] == "pitch"
    assert set(a.obs["cluster"]) == {"1", "2", "3"}
    assert (a.obs["annotation"] == "tumor").sum() == 5  # 'tumour' normalised, as for ST
    assert (a.obs["annotation"] == "").sum() == a.n_obs - 5
    del a
    gc.collect()


def test_visium_no_image_logs_and_uses_pitch(tmp_path, caplog):
    v = make_visium(tmp_path, image=None)
    a = read_visium(v["outs"], "S1", "P1")
    assert a.uns["stpredict"]["mpp_source"] == "pitch" and a.uns["stpredict"]["image"] == ""
    assert "no full-resolution image" in caplog.text
    check_contract(a, "S1", tmp_path)


def test_visium_missing_outs_and_files(tmp_path):
    with pytest.raises(InputError, match="outs folder does not exist") as ei:
        read_visium(tmp_path / "nope", "S1", "P1")
    assert "sample 'S1'" in str(ei.value)
    v = make_visium(tmp_path)
    (v["outs"] / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(InputError) as ei:
        read_visium(v["outs"], "S1", "P1", image=v["image"])
    msg = str(ei.value)
    assert "filtered_feature_bc_matrix.h5, filtered_feature_bc_matrix)" in msg
    assert "sample 'S1'" in msg


def test_visium_missing_positions(tmp_path):
    v = make_visium(tmp_path)
    v["pos_path"].unlink()
    with pytest.raises(InputError) as ei:
        read_visium(v["outs"], "S1", "P1", image=v["image"])
    msg = str(ei.value)
    assert "tissue_positions.csv" in msg and "tissue_positions_list.csv" in msg
    assert "sample 'S1'" in msg


def test_visium_wrong_header_and_column_count(tmp_path):
    v = make_visium(tmp_path)
    p = v["pos_path"]
    text = p.read_text().splitlines()
    p.write_text("\n".join(["barcode,tissue,row,col,y,x"] + text[1:]) + "\n")
    with pytest.raises(InputError, match="unexpected header") as ei:
        read_visium(v["outs"], "S1", "P1", image=v["image"])
    assert str(p) in str(ei.value) and "sample 'S1'" in str(ei.value)
    p.write_text("\n".join(",".join(ln.split(",")[:5]) for ln in text) + "\n")
    with pytest.raises(InputError, match="5 comma-separated columns; expected 6"):
        read_visium(v["outs"], "S1", "P1", image=v["image"])


def test_visium_barcode_mismatch(tmp_path):
    v = make_visium(tmp_path)
    pos = v["pos"].copy()
    pos["barcode"] = pos["barcode"].str.replace("-1", "-2", regex=False)
    formats.write_positions(v["pos_path"], pos, header=True)
    with pytest.raises(InputError) as ei:
        read_visium(v["outs"], "S1", "P1", image=v["image"])
    msg = str(ei.value)
    n = len(v["barcodes"])
    assert f"{n} of {n} matrix barcodes are absent" in msg
    assert v["barcodes"][0] in msg and "filtered_feature_bc_matrix.h5" in msg


def test_visium_duplicate_barcodes(tmp_path):
    v = make_visium(tmp_path)
    pos = v["pos"].copy()
    pos.loc[1, "barcode"] = pos.loc[0, "barcode"]
    formats.write_positions(v["pos_path"], pos, header=True)
    with pytest.raises(InputError, match="duplicate barcode"):
        read_visium(v["outs"], "S1", "P1", image=v["image"])


def test_visium_image_smaller_than_coordinates(tmp_path):
    v = make_visium(tmp_path)
    small = render(tmp_path / "small.png", 100, 80, (50, 40), 30)
    with pytest.raises(GeometryError) as ei:
        read_visium(v["outs"], "S1", "P1", image=small)
    msg = str(ei.value)
    assert "lie outside the 100x80 image" in msg and "sample 'S1'" in msg


@pytest.mark.parametrize("mode", ["RGBA", "L", "I;16"])
def test_visium_bad_image_modes(tmp_path, mode):
    from PIL import Image

    v = make_visium(tmp_path)
    h, w = v["shape"]
    bad = tmp_path / "bad.png"
    if mode == "I;16":
        Image.fromarray(np.full((h, w), 40000, np.uint16)).save(bad)
    else:
        Image.new(mode, (w, h)).save(bad)
    with pytest.raises(InputError) as ei:
        read_visium(v["outs"], "S1", "P1", image=bad)
    assert "sample 'S1'" in str(ei.value) and "bad.png" in str(ei.value)


def test_visium_transposed_and_mpp_disagreement(tmp_path):
    v = make_visium(tmp_path)
    pos = v["pos"].copy()
    pos[["pxl_row_in_fullres", "pxl_col_in_fullres"]] = pos[
        ["pxl_col_in_fullres", "pxl_row_in_fullres"]
    ].to_numpy()
    formats.write_positions(v["pos_path"], pos, header=True)
    with pytest.raises(GeometryError, match="transposed") as ei:
        read_visium(v["outs"], "S1", "P1", image=v["image"])
    assert "sample 'S1'" in str(ei.value)
    v2 = make_visium(tmp_path / "b")
    with pytest.raises(GeometryError) as ei:
        read_visium(v2["outs"], "S2", "P1", image=v2["image"], mpp=1.0)
    msg = str(ei.value)
    assert "disagree" in msg and "sheet=1" in msg and "pitch=2" in msg and "sample 'S2'" in msg
    a = read_visium(v2["outs"], "S2", "P1", image=v2["image"], mpp=1.0, mpp_tolerance=1.5)
    assert a.uns["stpredict"]["mpp_source"] == "sheet"


# ---------------------------------------------------------------------------- legacy ST
def make_st(root: Path, style: str, *, gz: bool = False, extra_counts: int = 0, ann: bool = True):
    root.mkdir(parents=True, exist_ok=True)
    xs, ys = np.meshgrid(np.arange(2, 20), np.arange(2, 16))
    x, y = xs.ravel(), ys.ravel()
    px = 200.0 / 20.0  # 20 µm/px: 10 px per 200 µm step
    rng = np.random.default_rng(2)
    df = pd.DataFrame(
        {
            "x": x + rng.normal(0, 0.03, x.size),
            "y": y + rng.normal(0, 0.03, x.size),
            "pixel_x": 30 + x * px,
            "pixel_y": 20 + y * px,
        }
    )
    df["new_x"], df["new_y"] = df["x"], df["y"]
    w, h = 260, 200
    centre, radius = (110.0, 100.0), 60.0
    d = np.hypot(df.pixel_x - centre[0], df.pixel_y - centre[1])
    df["selected"] = (d < radius - 6).astype(int)
    ids = [f"{a}x{b}" for a, b in zip(x, y, strict=True)]
    if style != "selection":  # ST-Net files list only spots under tissue
        keep = df["selected"].to_numpy() == 1
        df, ids = df[keep].reset_index(drop=True), [i for i, k in zip(ids, keep, strict=True) if k]
    count_ids = [i for i, s in zip(ids, df["selected"], strict=True) if s == 1]
    count_ids += [f"{90 + k}x{90 + k}" for k in range(extra_counts)]
    genes = ["ENSG00000000001", "ENSG00000000002", "__ambiguous[ENSG00000000003+ENSG00000000004]"]
    counts = rng.poisson(3, size=(len(count_ids), len(genes)))
    cpath = root / ("counts.tsv.gz" if gz else "counts.tsv")
    formats.write_st_counts(cpath, counts, count_ids, genes)
    spath = (
        root
        / {
            "stnet": "sec.spots.txt",
            "selection": "sec_selection.tsv",
            "published": "spots_BC23209_C1.csv.gz" if gz else "spots_BC23209_C1.csv",
        }[style]
    )
    formats.write_st_spots(spath, df, style)
    img = render(root / "HE_BC23209_C1.jpg", w, h, centre, radius, "jpg")
    apath = None
    if ann:
        apath = root / "BC23209_C1_Coords.tsv"
        labels = ["tumor" if i % 2 else "non" for i in range(len(df))]
        formats.write_st_annotation(apath, ids, df["x"], df["y"], labels)
    return {
        "counts": cpath,
        "spots": spath,
        "image": img,
        "ann": apath,
        "ids": count_ids,
        "values": counts,
        "df": df,
        "genes": genes,
    }


@pytest.mark.parametrize("style", ["stnet", "selection", "published"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_st_variants(tmp_path, style, gz):
    s = make_st(tmp_path, style, gz=gz)
    a = read_st(s["counts"], s["spots"], "BC23209_C1", "BC23209", s["image"], annotation=s["ann"])
    assert list(a.obs_names) == s["ids"]
    np.testing.assert_array_equal(a.X.toarray(), s["values"].astype(np.float32))
    assert a.var["ambiguous"].tolist() == [False, False, True]
    assert a.uns["stpredict"]["mpp"] == pytest.approx(20.0, rel=0.02)
    assert a.uns["stpredict"]["spot_diameter_px"] == pytest.approx(5.0, rel=0.02)
    assert set(a.obs["annotation"]) <= {"tumor", "non"} and (a.obs["annotation"] != "").all()
    x0, y0 = (int(t) for t in a.obs_names[0].split("x"))
    assert a.obs["array_col"].iloc[0] == x0 and a.obs["array_row"].iloc[0] == y0
    check_contract(a, "BC23209_C1", tmp_path)


def test_st_annotation_shifted_header(tmp_path):
    p = tmp_path / "x_Coords.tsv"
    formats.write_st_annotation(
        p, ["10x13", "11x13"], [10.02, 11.0], [13.04, 13.0], ["tumor", "non"]
    )
    s = read_st_annotation(p, "S")
    assert s.to_dict() == {"10x13": "tumor", "11x13": "non"}


def test_st_intersection_and_gene_map(tmp_path):
    s = make_st(tmp_path, "stnet", extra_counts=3)
    gmap = pd.DataFrame(
        {"gene_id": ["ENSG00000000001", "ENSG00000000002"], "gene": ["ERBB2", "ERBB2"]}
    )
    a = read_st(s["counts"], s["spots"], "S", "P", s["image"], gene_map=gmap)
    assert a.n_obs == len(s["ids"]) - 3
    assert list(a.var_names[:2]) == ["ERBB2", "ERBB2-1"]
    assert a.var["gene_ids"].iloc[0] == "ENSG00000000001"


def test_st_mismatched_files_fail(tmp_path):
    s = make_st(tmp_path, "stnet", ann=False)
    other = make_st(tmp_path / "o", "stnet", ann=False)
    df = other["df"].copy()
    df["x"] += 40
    formats.write_st_spots(other["spots"], df, "stnet")
    with pytest.raises(InputError) as ei:
        read_st(s["counts"], other["spots"], "S", "P", s["image"])
    msg = str(ei.value)
    assert f"only 0 of {len(s['ids'])} count-matrix spots" in msg and "sample 'S'" in msg
    assert str(s["counts"]) in msg and str(other["spots"]) in msg


def test_st_bad_spot_columns_and_missing(tmp_path):
    s = make_st(tmp_path, "stnet", ann=False)
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\tc\n1\t2\t3\n")
    with pytest.raises(InputError, match="unrecognised spot-file columns") as ei:
        read_st(s["counts"], bad, "S", "P", s["image"])
    assert "bad.tsv" in str(ei.value)
    with pytest.raises(InputError, match="does not exist"):
        read_st(tmp_path / "nope.tsv", s["spots"], "S", "P", s["image"])


def test_st_transposed_fails(tmp_path):
    s = make_st(tmp_path, "stnet", ann=False)
    df = s["df"].copy()
    df[["pixel_x", "pixel_y"]] = df[["pixel_y", "pixel_x"]].to_numpy()
    formats.write_st_spots(s["spots"], df, "stnet")
    with pytest.raises(GeometryError, match="transposed"):
        read_st(s["counts"], s["spots"], "S", "P", s["image"])


def test_read_section_dispatch(tmp_path):
    s = make_st(tmp_path / "st", "selection")
    row = {
        "sample_id": "S1",
        "patient_id": "P1",
        "platform": "st",
        "raw": str(s["counts"]),
        "spots": str(s["spots"]),
        "image": str(s["image"]),
        "annotation": str(s["ann"]),
        "clusters": "",
        "ihc_image": "",
        "ihc_gene": "",
        "series": "blockA",
        "order": "2",
        "mpp": float("nan"),
    }
    a = read_section(row)
    assert a.uns["stpredict"]["series"] == "blockA" and a.uns["stpredict"]["order"] == 2
    check_contract(a, "S1", tmp_path)
    v = make_visium(tmp_path / "v")
    row = {
        "sample_id": "V1",
        "patient_id": "P2",
        "platform": "visium",
        "raw": str(v["outs"]),
        "spots": "",
        "image": str(v["image"]),
        "mpp": "2.0",
        "ihc_gene": "ERBB2",
    }
    a = read_section(row)
    assert a.uns["stpredict"]["mpp_source"] == "sheet" and a.uns["stpredict"]["ihc_gene"] == "ERBB2"
    check_contract(a, "V1", tmp_path)
    with pytest.raises(InputError, match="unknown platform"):
        read_section({**row, "platform": "slideseq"})


@realdata
@needs_real
def test_estimate_from_real_mob1_staggered():
    t = pd.read_csv(REAL / "st_stutility_mob1/alignment_table_MOB1.tsv", sep="\t")
    mpp = estimate_mpp_from_pitch(t.new_y, t.new_x, t.pixel_x, t.pixel_y, "st")
    assert mpp == pytest.approx(4.38, abs=0.05)


@realdata
@needs_real
def test_copy_of_real_visium_with_r_barcodes(tmp_path):
    outs = tmp_path / "outs"
    shutil.copytree(REAL / "visium_sr1_scanpy", outs)
    p = outs / "spatial/tissue_positions_list.csv"
    p.chmod(0o644)
    p.write_text(p.read_text().replace("-1,", ".1,"))
    a = read_visium(outs, "V1", "P1")
    assert a.obs_names[0].endswith("-1") and a.n_obs == 100
