"""Bad inputs the readers must refuse with one clear line (issue 8), and real files they accept.

Each test writes a real file in the true format (demo writers, PIL, tifffile, h5py), breaks it the
way real files break (wrong tag, mirrored image, file of another section, normalised values,
truncated copy, empty file) and checks the one-line message: what is wrong, the file, the sample
and the fix.
"""

from __future__ import annotations

import gc
import gzip
import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from stpredict.errors import GeometryError, InputError
from stpredict.ingest.images import SlideImage, plausible_tag_mpp
from stpredict.ingest.st import read_st, read_st_counts
from stpredict.ingest.visium import read_visium
from tests.unit.ingest.test_readers import GENES, MPP, REAL, SYMBOLS, formats, make_st, make_visium

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/fixtures/real absent")
realdata = pytest.mark.realdata


def one_line(err: BaseException, *parts: str) -> str:
    msg = str(err)
    assert "\n" not in msg and "Fix:" in msg, msg
    for p in parts:
        assert p in msg, (p, msg)
    return msg


def truncate(path: Path, frac: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])


# ============================================================================ 1. pixel size
@pytest.mark.parametrize("dpi", [72, 96, 300, 600, 1200])
def test_jpeg_software_dpi_is_ignored_and_section_reads(tmp_path, caplog, dpi):
    """A 300-dpi JPEG used to read as 84.7 µm/px and refuse the section."""
    from PIL import Image

    v = make_visium(tmp_path)
    jpg = tmp_path / "he.jpg"
    Image.open(v["image"]).convert("RGB").save(jpg, dpi=(dpi, dpi), quality=92)
    with caplog.at_level(logging.WARNING):
        a = read_visium(v["outs"], "S1", "P1", image=jpg)
    assert a.uns["stpredict"]["mpp"] == pytest.approx(MPP, rel=1e-3)
    assert "image_tags" not in a.uns["stpredict"]["mpp_estimates"]
    assert f"({dpi} dpi) ignored" in caplog.text and "he.jpg" in caplog.text


@pytest.mark.parametrize(
    ("resolution", "unit", "expected"),
    [
        ((300, 300), "INCH", None),  # software default
        ((72, 72), "INCH", None),
        ((28.35, 28.35), "CENTIMETER", None),  # 72 dpi stored per cm (352 µm/px)
        ((1e4 / 0.5, 1e4 / 0.5), "CENTIMETER", 0.5),  # a scanner's 0.5 µm/px
        ((50800, 50800), "INCH", 0.5),
        ((1e4 / 0.5, 1e4 / 0.25), "CENTIMETER", None),  # anisotropic: not a scan
        ((1, 1), "NONE", None),  # an aspect ratio, not a size
    ],
)
def test_tiff_resolution_tags_checked_for_plausibility(tmp_path, resolution, unit, expected):
    import tifffile

    path = tmp_path / "he.tif"
    img = np.full((64, 80, 3), 200, np.uint8)
    tifffile.imwrite(path, img, photometric="rgb", resolution=resolution, resolutionunit=unit)
    with SlideImage(path, sample="S1") as im:
        if expected is None:
            assert im.mpp_tags is None
        else:
            assert im.mpp_tags == pytest.approx(expected, rel=1e-6)


def test_png_dpi_and_helper_limits(tmp_path, caplog):
    from PIL import Image

    p = tmp_path / "he.png"
    Image.new("RGB", (40, 30), (200, 150, 180)).save(p, dpi=(300, 300))
    with caplog.at_level(logging.WARNING):
        assert SlideImage(p, sample="S9").mpp_tags is None
    assert "sample S9" in caplog.text and "software default" in caplog.text
    assert plausible_tag_mpp(0.25, "x") == 0.25
    assert plausible_tag_mpp(0.01, "x") is None  # beyond any light microscope
    assert plausible_tag_mpp(float("nan"), "x") is None


def test_stale_tiff_tag_is_the_outlier_and_sheet_mpp_settles_it(tmp_path):
    """The image was resized after scanning: its tag says 1 µm/px, the pitch 2 µm/px."""
    v = make_visium(tmp_path, image=None)
    from stpredict.ingest.images import SlideImage as _S

    png = make_visium(tmp_path / "png")["image"]
    arr = _S(png).to_array()
    tif = tmp_path / "stale.tif"
    formats.write_tiff(tif, arr, mpp=MPP / 2)
    with pytest.raises(GeometryError) as ei:
        read_visium(v["outs"], "S1", "P1", image=tif)
    msg = one_line(ei.value, "sample 'S1'", "the outlier is image_tags", "mpp to 2")
    assert "mpp_tolerance" not in msg
    a = read_visium(v["outs"], "S1", "P1", image=tif, mpp=2.0)  # the suggested fix works
    assert a.uns["stpredict"]["mpp"] == 2.0
    del a
    gc.collect()


# ============================================================================ 2. orientation
def _flip_copy(src: Path, dest: Path, op: str) -> Path:
    from PIL import Image

    ops = {
        "flip_lr": Image.Transpose.FLIP_LEFT_RIGHT,
        "flip_ud": Image.Transpose.FLIP_TOP_BOTTOM,
        "rot180": Image.Transpose.ROTATE_180,
    }
    with Image.open(src) as im:
        im.convert("RGB").transpose(ops[op]).save(dest, quality=95)
    return dest


@realdata
@needs_real
@pytest.mark.parametrize(
    ("fixture", "op", "words"),
    [
        ("xfuse", "flip_lr", "mirrored left-right"),
        ("xfuse", "flip_ud", "mirrored up-down"),
        ("mob1", "rot180", "rotated by 180°"),
        ("mob1", "flip_lr", "mirrored left-right"),
    ],
)
def test_real_st_mirrored_or_rotated_image_is_refused(tmp_path, fixture, op, words):
    if fixture == "xfuse":
        d = REAL / "st_xfuse_mob"
        counts, spots, image = d / "counts.tsv", d / "spots.tsv", d / "image.jpg"
    else:
        d = REAL / "st_stutility_mob1"
        counts, spots, image = d / "MOB1.tsv", d / "alignment_table_MOB1.tsv", d / "MOB1.jpg"
    read_st(counts, spots, "S", "P", image)  # the true orientation passes
    bad = _flip_copy(image, tmp_path / "he.jpg", op)
    with pytest.raises(GeometryError) as ei:
        read_st(counts, spots, "S", "P", bad)
    one_line(ei.value, words, "sample 'S'", str(spots), "Fix:")


@realdata
@needs_real
def test_real_visium_lowres_orientation(tmp_path):
    """scanpy's Visium fixture: coordinates scaled onto the lowres H&E; mirrored -> refused."""
    from stpredict.ingest.geometry import check_bounds
    from stpredict.ingest.visium import read_visium_positions

    d = REAL / "visium_sr1_scanpy/spatial"
    pos = read_visium_positions(d / "tissue_positions_list.csv")
    sf = json.loads((d / "scalefactors_json.json").read_text())
    k = sf["tissue_lowres_scalef"]
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float) * k
    it = pos["in_tissue"].to_numpy()
    r, pitch = sf["spot_diameter_fullres"] * k * 55 / 65 / 2, 138.0 * k
    st = check_bounds(SlideImage(d / "tissue_lowres_image.png"), xy[it], xy[~it], r, pitch_px=pitch)
    assert st["separation"] > 0.5
    from PIL import Image

    bad = tmp_path / "lowres_mirrored.png"
    Image.open(d / "tissue_lowres_image.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(bad)
    with pytest.raises(GeometryError, match="mirrored left-right"):
        check_bounds(SlideImage(bad), xy[it], xy[~it], r, "V1", "pos.csv", pitch_px=pitch)


# ============================================================================ 4. files of other sections
def _other_section_positions(v: dict, shift_px: float) -> pd.DataFrame:
    """The same barcode whitelist with the in_tissue flags of a tissue shifted by shift_px."""
    pos = v["pos"].copy()
    h, w = v["shape"]
    centre, radius = (w * 0.4 + shift_px, h * 0.5), min(w, h) * 0.35
    d = np.hypot(pos.pxl_col_in_fullres - centre[0], pos.pxl_row_in_fullres - centre[1])
    pos["in_tissue"] = (d < radius - 15).astype(int)
    return pos


def test_visium_positions_of_another_section_refused(tmp_path):
    v = make_visium(tmp_path)
    formats.write_positions(v["pos_path"], _other_section_positions(v, 60), header=True)
    with pytest.raises(InputError) as ei:
        read_visium(v["outs"], "S1", "P1", image=v["image"])
    msg = one_line(ei.value, "sample 'S1'", "filtered_feature_bc_matrix.h5", str(v["pos_path"]))
    assert "marked off-tissue" in msg and "another section" in msg
    assert f"of the {len(v['barcodes'])} barcodes" in msg


def test_visium_subset_matrix_passes_with_a_warning(tmp_path, caplog):
    v = make_visium(tmp_path)
    keep = v["barcodes"][::2]
    rows = [v["barcodes"].index(b) for b in keep]
    formats.write_10x_h5(
        v["outs"] / "filtered_feature_bc_matrix.h5", v["counts"][rows], keep, GENES, SYMBOLS
    )
    with caplog.at_level(logging.WARNING):
        a = read_visium(v["outs"], "S1", "P1", image=v["image"])
    assert a.n_obs == len(keep)
    assert f"holds {len(keep)} of the {len(v['barcodes'])} spots marked in_tissue" in caplog.text


def _write_labels(path: Path, ids, labels, cols=("Barcode", "Cluster")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({cols[0]: list(ids), cols[1]: list(labels)}).to_csv(path, index=False)
    return path


def test_visium_clusters_of_another_section_or_partial_refused(tmp_path):
    v = make_visium(tmp_path)
    outs = v["outs"]
    cl = outs / "analysis/clustering/graphclust/clusters.csv"
    other = _other_section_positions(v, 60)
    other_bc = list(other.barcode[other.in_tissue == 1])
    _write_labels(cl, other_bc, [i % 4 + 1 for i in range(len(other_bc))])
    with pytest.raises(InputError) as ei:
        read_visium(outs, "S1", "P1", image=v["image"])
    one_line(ei.value, "sample 'S1'", str(cl), "not spots under tissue", "another section")
    # graphclust labels every spot: a table missing a tenth of them is refused
    part = v["barcodes"][: int(0.9 * len(v["barcodes"]))]
    _write_labels(cl, part, [1] * len(part))
    with pytest.raises(InputError) as ei:
        read_visium(outs, "S1", "P1", image=v["image"])
    one_line(ei.value, f"labels only {len(part)} of the section's {len(v['barcodes'])} spots")
    _write_labels(cl, v["barcodes"], [1] * len(v["barcodes"]))
    assert set(read_visium(outs, "S1", "P1", image=v["image"]).obs["cluster"]) == {"1"}


def test_visium_annotation_foreign_refused_partial_warned(tmp_path, caplog):
    v = make_visium(tmp_path)
    other = _other_section_positions(v, 60)
    foreign = [b for b in other.barcode[other.in_tissue == 1] if b not in set(v["barcodes"])]
    ann = _write_labels(
        tmp_path / "ann.csv",
        v["barcodes"][:20] + foreign,
        ["tumor"] * (20 + len(foreign)),
        ("barcode", "label"),
    )
    with pytest.raises(InputError) as ei:
        read_visium(v["outs"], "S1", "P1", image=v["image"], annotation=ann)
    one_line(ei.value, f"{len(foreign)} of the {20 + len(foreign)} ids", str(ann), "sample 'S1'")
    _write_labels(ann, v["barcodes"][:20], ["tumor"] * 20, ("barcode", "label"))
    with caplog.at_level(logging.WARNING):
        a = read_visium(v["outs"], "S1", "P1", image=v["image"], annotation=ann)
    assert (a.obs["annotation"] == "tumor").sum() == 20
    assert f"labels 20 of {len(v['barcodes'])} spots" in caplog.text


def test_label_tables_with_conflicting_duplicates_refused(tmp_path):
    v = make_visium(tmp_path)
    bcs = v["barcodes"]
    ann = _write_labels(
        tmp_path / "ann.csv", bcs + bcs[:1], ["non"] * len(bcs) + ["tumor"], ("barcode", "label")
    )
    with pytest.raises(InputError, match="two different labels") as ei:
        read_visium(v["outs"], "S1", "P1", image=v["image"], annotation=ann)
    one_line(ei.value, bcs[0], "sample 'S1'")


def test_st_spot_file_of_another_section_refused(tmp_path):
    """Another section's spot file: its tissue spots lack counts here (ids overlap in part)."""
    s = make_st(tmp_path / "a", "stnet", ann=False)
    df = s["df"].copy()
    df["x"] += 2  # the other tissue sits 2 array columns further right
    df["pixel_x"] += 2 * 10
    other = tmp_path / "other.spots.txt"
    formats.write_st_spots(other, df, "stnet")
    with pytest.raises(InputError) as ei:
        read_st(s["counts"], other, "S", "P", s["image"])
    msg = one_line(ei.value, "sample 'S'", str(other), "have a row in the count matrix")
    assert "another section" in msg


def test_st_selection_table_must_cover_every_count_row(tmp_path):
    s = make_st(tmp_path, "selection", ann=False)
    t = pd.read_csv(s["spots"], sep="\t")
    sel_ids = set(s["ids"])
    ids = [f"{a}x{b}" for a, b in zip(t.x, t.y, strict=True)]
    drop = [i for i, sid in enumerate(ids) if sid in sel_ids][: len(sel_ids) // 5]
    t.drop(index=drop).to_csv(s["spots"], sep="\t", index=False)  # a fifth of the rows lost
    with pytest.raises(InputError) as ei:
        read_st(s["counts"], s["spots"], "S", "P", s["image"])
    one_line(ei.value, "lists the whole array", "sample 'S'", str(s["counts"]))


def test_st_annotation_coverage(tmp_path, caplog):
    s = make_st(tmp_path, "stnet")
    ids = s["ids"]
    ann = tmp_path / "part_Coords.tsv"
    n = len(ids) // 3
    formats.write_st_annotation(ann, ids[:n], [0.0] * n, [0.0] * n, ["tumor"] * n)
    with pytest.raises(InputError) as ei:
        read_st(s["counts"], s["spots"], "S", "P", s["image"], annotation=ann)
    one_line(ei.value, f"labels only {n} of the section's {len(ids)} spots", str(ann))
    n = int(len(ids) * 0.8)
    formats.write_st_annotation(ann, ids[:n], [0.0] * n, [0.0] * n, ["tumor"] * n)
    with caplog.at_level(logging.WARNING):
        a = read_st(s["counts"], s["spots"], "S", "P", s["image"], annotation=ann)
    assert (a.obs["annotation"] == "tumor").sum() == n
    assert f"labels {n} of {len(ids)} spots" in caplog.text


# ---------------------------------------------------------------------------- counts
def test_st_normalised_or_negative_counts_refused(tmp_path):
    s = make_st(tmp_path, "stnet", ann=False)
    c = pd.read_csv(s["counts"], sep="\t", index_col=0)
    (c / c.sum(axis=1).to_numpy()[:, None] * 1e4).to_csv(s["counts"], sep="\t")
    with pytest.raises(InputError) as ei:
        read_st(s["counts"], s["spots"], "S", "P", s["image"])
    one_line(ei.value, "fractional values", "raw UMI counts", str(s["counts"]), "sample 'S'")
    np.log1p(c).round(0).sub(1).to_csv(s["counts"], sep="\t")
    with pytest.raises(InputError, match="negative values"):
        read_st_counts(s["counts"], "S")


def _float_h5(path: Path, factor: float) -> None:
    with h5py.File(path, "r+") as f:
        data = f["matrix/data"][...].astype(np.float64) * factor
        del f["matrix/data"]
        f["matrix"].create_dataset("data", data=data)


def test_visium_normalised_matrix_refused(tmp_path):
    v = make_visium(tmp_path)
    h5 = v["outs"] / "filtered_feature_bc_matrix.h5"
    _float_h5(h5, 0.37)
    with pytest.raises(InputError) as ei:
        read_visium(v["outs"], "S1", "P1", image=v["image"])
    one_line(ei.value, "fractional values", "raw UMI counts", str(h5), "sample 'S1'", "barcode")
    v2 = make_visium(tmp_path / "mtx", mtx=True)
    mtx = v2["outs"] / "filtered_feature_bc_matrix/matrix.mtx.gz"
    lines = gzip.decompress(mtx.read_bytes()).decode().splitlines()
    lines[0] = lines[0].replace("integer", "real")
    size_line = next(i for i, ln in enumerate(lines) if not ln.startswith("%"))
    body = [
        ln if i <= size_line else " ".join(ln.split()[:2] + ["-1.5"]) for i, ln in enumerate(lines)
    ]
    mtx.write_bytes(gzip.compress(("\n".join(body) + "\n").encode()))
    with pytest.raises(InputError, match="negative values"):
        read_visium(v2["outs"], "S1", "P1", image=v2["image"])


# ============================================================================ 5. damaged files
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize("kind", ["jpg", "tiff", "tiled-tiff"])
def test_truncated_images_raise_input_error_on_every_decode_path(tmp_path, kind):
    img = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    path = tmp_path / ("he.jpg" if kind == "jpg" else "he.tif")
    if kind == "jpg":
        formats.write_jpeg(path, img)
    else:
        formats.write_tiff(path, img, mpp=0.5, tile=64 if kind == "tiled-tiff" else None)
    truncate(path, 0.5)
    for call in (
        lambda im: im.to_array(),
        lambda im: im.read_region(300, 200, 64, 64),
        lambda im: im.thumbnail(100),
    ):
        with pytest.raises(InputError) as ei:
            im = SlideImage(path, sample="S7")
            call(im)
        one_line(ei.value, "truncated or corrupt", str(path), "sample 'S7'", "re-export")
    gc.collect()


def test_truncated_image_through_the_reader(tmp_path):
    s = make_st(tmp_path, "stnet", ann=False)
    truncate(s["image"], 0.7)
    with pytest.raises(InputError) as ei:
        read_st(s["counts"], s["spots"], "S", "P", s["image"])
    one_line(ei.value, "truncated or corrupt", str(s["image"]), "sample 'S'")


@pytest.mark.parametrize(
    "what", ["h5", "mtx", "positions-gz", "st-counts-gz", "st-spots-gz", "st-annotation-gz"]
)
def test_truncated_tables_raise_input_error(tmp_path, what):
    if what in ("h5", "mtx", "positions-gz"):
        v = make_visium(tmp_path, mtx=what == "mtx", gz=what == "positions-gz")
        target = {
            "h5": v["outs"] / "filtered_feature_bc_matrix.h5",
            "mtx": v["outs"] / "filtered_feature_bc_matrix/matrix.mtx.gz",
            "positions-gz": v["pos_path"],
        }[what]
        truncate(target, 0.5)

        def run():
            return read_visium(v["outs"], "S", "P", image=v["image"])
    else:
        s = make_st(tmp_path, "published" if what == "st-spots-gz" else "stnet", gz=True)
        if what == "st-annotation-gz":
            gz = s["ann"].with_suffix(".tsv.gz")
            gz.write_bytes(gzip.compress(s["ann"].read_bytes()))
            s["ann"] = gz
        target = {
            "st-counts-gz": s["counts"],
            "st-spots-gz": s["spots"],
            "st-annotation-gz": s["ann"],
        }[what]
        truncate(target, 0.5)

        def run():
            return read_st(s["counts"], s["spots"], "S", "P", s["image"], annotation=s["ann"])

    with pytest.raises(InputError) as ei:
        run()
    msg = one_line(ei.value, "sample 'S'", "truncated")
    assert str(target) in msg or str(target.parent) in msg


def test_not_gzip_despite_the_name(tmp_path):
    s = make_st(tmp_path, "stnet", gz=True, ann=False)
    s["counts"].write_text("not gzip\n")
    with pytest.raises(InputError) as ei:
        read_st(s["counts"], s["spots"], "S", "P", s["image"])
    one_line(ei.value, "sample 'S'", str(s["counts"]), "must be gzipped")


# ============================================================================ 6. messages that mislead
def test_positions_header_only(tmp_path):
    v = make_visium(tmp_path)
    p = v["pos_path"]
    p.write_text(p.read_text().splitlines()[0] + "\n")
    with pytest.raises(InputError) as ei:
        read_visium(v["outs"], "S1", "P1", image=v["image"])
    one_line(ei.value, "only its header line, no spot rows", str(p), "sample 'S1'")


def test_matrix_without_barcodes_blames_the_matrix(tmp_path):
    v = make_visium(tmp_path)
    h5 = v["outs"] / "filtered_feature_bc_matrix.h5"
    formats.write_10x_h5(h5, np.zeros((0, len(GENES)), int), [], GENES, SYMBOLS)
    ann = _write_labels(tmp_path / "ann.csv", v["barcodes"][:5], ["t"] * 5, ("barcode", "label"))
    with pytest.raises(InputError) as ei:
        read_visium(v["outs"], "S1", "P1", image=v["image"], annotation=ann)
    msg = one_line(ei.value, "holds no barcodes", str(h5), "sample 'S1'")
    assert "ann.csv" not in msg


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "count matrix is empty"),
        (b"\tG1\tG2\n", "only a header line"),
        (b"10x10\n11x10\n12x10\n", "no gene columns"),
        (b"\tG1\tG1\n10x10\t1\t2\n", "appear twice"),
    ],
    ids=["empty", "header-only", "no-genes", "duplicate-genes"],
)
def test_st_count_file_messages(tmp_path, content, words):
    s = make_st(tmp_path, "stnet", ann=False)
    s["counts"].write_bytes(content)
    with pytest.raises(InputError) as ei:
        read_st(s["counts"], s["spots"], "S", "P", s["image"])
    one_line(ei.value, words, str(s["counts"]), "sample 'S'")


# ============================================================================ other flaws
@pytest.mark.parametrize(
    "flaw", ["nan-pixel", "inf-pixel", "same-array-position", "parity", "same-pixel"]
)
def test_visium_positions_flaws(tmp_path, flaw):
    v = make_visium(tmp_path)
    pos = v["pos"].copy()
    if flaw == "nan-pixel":
        pos["pxl_col_in_fullres"] = pos["pxl_col_in_fullres"].astype(object)
        pos.loc[3, "pxl_col_in_fullres"] = ""
        words = "missing, non-numeric or infinite"
    elif flaw == "inf-pixel":
        pos.loc[3, "pxl_col_in_fullres"] = np.inf
        words = "missing, non-numeric or infinite"
    elif flaw == "same-array-position":
        pos.loc[1, ["array_row", "array_col"]] = pos.loc[0, ["array_row", "array_col"]].to_numpy()
        words = "share an array position"
    elif flaw == "parity":
        pos["array_col"] = pos["array_col"] + 1
        words = "hexagonal layout"
    else:  # an export that wrote one pixel column for every spot
        pos["pxl_col_in_fullres"] = 100.0
        pos["pxl_row_in_fullres"] = np.round(pos["pxl_row_in_fullres"] / 200) * 200
        words = "share their pixel position"
    formats.write_positions(v["pos_path"], pos, header=True)
    with pytest.raises(InputError) as ei:
        read_visium(v["outs"], "S1", "P1", image=v["image"])
    one_line(ei.value, words, str(v["pos_path"]), "sample 'S1'")


def test_scalefactors_of_another_image_and_not_an_object(tmp_path):
    v = make_visium(tmp_path)
    sf = v["outs"] / "spatial/scalefactors_json.json"
    obj = json.loads(sf.read_text())
    obj["tissue_lowres_scalef"] = 0.07  # the lowres PNG is 0.1 x the image
    sf.write_text(json.dumps(obj))
    with pytest.raises(InputError) as ei:
        read_visium(v["outs"], "S1", "P1", image=v["image"])
    one_line(ei.value, "tissue_lowres_scalef", "another section", str(sf), "sample 'S1'")
    sf.write_text("[1, 2]")
    with pytest.raises(InputError, match="JSON list"):
        read_visium(v["outs"], "S1", "P1", image=v["image"])
    obj["tissue_lowres_scalef"] = -1
    sf.write_text(json.dumps(obj))
    with pytest.raises(InputError, match="positive"):
        read_visium(v["outs"], "S1", "P1", image=v["image"])


def test_scalefactors_checked_without_image(tmp_path):
    v = make_visium(tmp_path, image=None)
    sf = v["outs"] / "spatial/scalefactors_json.json"
    obj = json.loads(sf.read_text())
    obj["tissue_lowres_scalef"] = 0.3  # spots would land far outside the 0.1x lowres PNG
    sf.write_text(json.dumps(obj))
    with pytest.raises(InputError) as ei:
        read_visium(v["outs"], "S1", "P1")
    one_line(ei.value, "fall outside", "tissue_lowres_image.png", "sample 'S1'")


@pytest.mark.parametrize("flaw", ["inf", "same-pixel"])
def test_st_spot_file_pixel_flaws(tmp_path, flaw):
    s = make_st(tmp_path, "stnet", ann=False)
    df = s["df"].copy()
    if flaw == "inf":
        df.loc[2, "pixel_x"] = np.inf
    else:
        df.loc[:10, ["pixel_x", "pixel_y"]] = 50.0
    formats.write_st_spots(s["spots"], df, "stnet")
    with pytest.raises(InputError) as ei:
        read_st(s["counts"], s["spots"], "S", "P", s["image"])
    one_line(
        ei.value,
        "infinite" if flaw == "inf" else "share their pixel position",
        str(s["spots"]),
        "sample 'S'",
    )


@realdata
@needs_real
def test_real_fixtures_still_read_and_report_their_partial_coverage(tmp_path, caplog):
    """The real files pass every new check (MOB1: 11 count rows without a position)."""
    d = REAL / "st_stutility_mob1"
    with caplog.at_level(logging.WARNING):
        a = read_st(d / "MOB1.tsv", d / "alignment_table_MOB1.tsv", "MOB1", "m", d / "MOB1.jpg")
    assert a.n_obs == 379
    assert "11 of 1934 count rows have no coordinates" in caplog.text
    caplog.clear()
    outs = tmp_path / "outs"
    shutil.copytree(REAL / "visium_sr1_scanpy", outs)
    with caplog.at_level(logging.WARNING):
        a = read_visium(outs, "V1", "P1")
    assert a.n_obs == 100
    assert "holds 100 of the 4235 spots marked in_tissue" in caplog.text


# ============================================================================ 7. silent-wrong inputs
def _labels(a) -> dict:
    return a.obs["annotation"].value_counts().to_dict()


def test_visium_annotation_synonyms_normalised_like_st(tmp_path, caplog):
    """`Tumor` / `Normal` / `tumour` / `non-tumor` ... were stored as written: strata found none."""
    v = make_visium(tmp_path)
    bcs = v["barcodes"]
    words = ["Tumor", "tumour", "CANCER", " Normal ", "non-tumor", "Non_Tumour", "stroma"]
    ann = _write_labels(
        tmp_path / "ann.csv", bcs, [words[i % 7] for i in range(len(bcs))], ("barcode", "label")
    )
    with caplog.at_level(logging.INFO, logger="stpredict.ingest"):
        a = read_visium(v["outs"], "S1", "P1", image=v["image"], annotation=ann)
    n = {w: sum(1 for i in range(len(bcs)) if words[i % 7] == w) for w in words}
    assert _labels(a) == {
        "tumor": n["Tumor"] + n["tumour"] + n["CANCER"],
        "non": n[" Normal "] + n["non-tumor"] + n["Non_Tumour"],
        "stroma": n["stroma"],
    }
    assert "'stroma'" in caplog.text and "leave them out" in caplog.text  # an INFO line
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "stroma" in r.message]


def test_annotation_without_tumor_or_non_is_a_warning(tmp_path, caplog):
    v = make_visium(tmp_path)
    bcs = v["barcodes"]
    ann = _write_labels(
        tmp_path / "ann.csv",
        bcs,
        ["invasive" if i % 2 else "stroma" for i in range(len(bcs))],
        ("barcode", "label"),
    )
    with caplog.at_level(logging.WARNING):
        a = read_visium(v["outs"], "S1", "P1", image=v["image"], annotation=ann)
    assert set(a.obs["annotation"]) == {"invasive", "stroma"}  # kept as written
    msg = next(r.message for r in caplog.records if "none of its labels" in r.message)
    assert "'invasive'" in msg and "'stroma'" in msg and "labels baseline" in msg
    assert "S1" in msg and str(ann) in msg
    # the same for a legacy ST annotation
    s = make_st(tmp_path / "st", "stnet")
    formats.write_st_annotation(
        s["ann"], s["ids"], s["df"]["x"], s["df"]["y"], ["DCIS"] * len(s["ids"])
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_st(s["counts"], s["spots"], "S2", "P", s["image"], annotation=s["ann"])
    assert "none of its labels is tumor or non" in caplog.text and "'DCIS'" in caplog.text


def _deep_counts(n_spots: int, n_genes: int = 150, seed: int = 0) -> np.ndarray:
    """Raw-like counts: varying depth, many genes detected per spot."""
    rng = np.random.default_rng(seed)
    depth = rng.lognormal(np.log(2000), 0.5, n_spots)
    prof = rng.dirichlet(np.full(n_genes, 0.5))
    return rng.poisson(depth[:, None] * prof[None, :])


def _cp10k(c: np.ndarray) -> np.ndarray:
    return np.rint(c / c.sum(axis=1, keepdims=True) * 1e4).astype(np.int64)


@pytest.mark.parametrize("kind", ["cp10k", "log1p"])
def test_st_integer_normalised_counts_refused(tmp_path, kind):
    """round(counts per 10k) and round(log1p(counts)) are integers: they passed as UMI counts."""
    s = make_st(tmp_path, "stnet", ann=False)
    raw = _deep_counts(len(s["ids"]))
    genes = [f"ENSG{i:011d}" for i in range(raw.shape[1])]
    formats.write_st_counts(s["counts"], raw, s["ids"], genes)
    assert read_st(s["counts"], s["spots"], "S", "P", s["image"]).n_vars == len(genes)  # raw: ok
    bad = _cp10k(raw) if kind == "cp10k" else np.rint(np.log1p(raw)).astype(np.int64)
    formats.write_st_counts(s["counts"], bad, s["ids"], genes)
    with pytest.raises(InputError) as ei:
        read_st(s["counts"], s["spots"], "S", "P", s["image"])
    words = (
        ("every spot totals ≈ 10,000", "counts per 10,000")
        if kind == "cp10k"
        else ("log-transformed?", "largest value of the count matrix is")
    )
    one_line(ei.value, *words, "raw UMI counts", str(s["counts"]), "sample 'S'")


@pytest.mark.parametrize(
    ("store", "kind"), [("h5", "cp10k"), ("h5", "log1p"), ("mtx", "cp10k"), ("mtx", "log1p")]
)
def test_visium_integer_normalised_counts_refused(tmp_path, store, kind):
    v = make_visium(tmp_path, mtx=store == "mtx")
    raw = _deep_counts(len(v["barcodes"]), seed=3)
    ids = [f"ENSG{i:011d}" for i in range(raw.shape[1])]
    syms = [f"G{i}" for i in range(raw.shape[1])]
    bad = _cp10k(raw) if kind == "cp10k" else np.rint(np.log1p(raw)).astype(np.int64)
    write = formats.write_10x_mtx if store == "mtx" else formats.write_10x_h5
    target = v["outs"] / (
        "filtered_feature_bc_matrix" if store == "mtx" else "filtered_feature_bc_matrix.h5"
    )
    write(target, raw, v["barcodes"], ids, syms)
    assert read_visium(v["outs"], "S1", "P1", image=v["image"]).n_vars == len(ids)
    write(target, bad, v["barcodes"], ids, syms)
    with pytest.raises(InputError) as ei:
        read_visium(v["outs"], "S1", "P1", image=v["image"])
    one_line(
        ei.value,
        "every spot totals" if kind == "cp10k" else "log-transformed",
        str(target),
        "sample 'S1'",
        "raw UMI counts",
    )


def _st_with_genes(tmp_path, genes):
    s = make_st(tmp_path, "stnet", ann=False)
    raw = _deep_counts(len(s["ids"]), n_genes=len(genes), seed=5)
    formats.write_st_counts(s["counts"], raw, s["ids"], genes)
    return s


def test_gene_map_two_ids_one_symbol_warns(tmp_path, caplog):
    genes = ["ENSG00000091831", "ENSG00000999999", "ENSG00000141736", "ENSG00000000003"]
    s = _st_with_genes(tmp_path, genes)
    gmap = pd.DataFrame({"gene_id": genes, "gene": ["ESR1", "ESR1", "ERBB2", "TSPAN6"]})
    gmap.attrs["path"] = "/maps/genes.tsv"
    with caplog.at_level(logging.WARNING):
        a = read_st(s["counts"], s["spots"], "S", "P", s["image"], gene_map=gmap)
    assert list(a.var_names) == ["ESR1", "ESR1-1", "ERBB2", "TSPAN6"]
    assert a.var["duplicate_symbol"].tolist() == [True, True, False, False]
    assert a.var["gene_ids"].tolist() == genes
    msg = next(r.message for r in caplog.records if "one symbol to several gene ids" in r.message)
    assert "ESR1: ENSG00000091831, ENSG00000999999" in msg and "SYMBOL-1" in msg
    assert "first in file order keeps the symbol" in msg and "sample S:" in msg


@pytest.mark.parametrize("flaw", ["swapped", "other-ids"])
def test_gene_map_mapping_none_of_the_ids_refused(tmp_path, flaw):
    genes = [f"ENSG{i:011d}" for i in range(120)]
    s = _st_with_genes(tmp_path, genes + ["__ambiguous[ENSG00000000001+ENSG00000000002]"])
    syms = [f"GENE{i}" for i in range(120)]
    if flaw == "swapped":  # header gene_id, gene over symbol, id columns
        gmap = pd.DataFrame({"gene_id": syms, "gene": genes})
    else:  # a map of another organism / reference
        gmap = pd.DataFrame({"gene_id": [f"ENSMUSG{i:011d}" for i in range(120)], "gene": syms})
    gmap.attrs["path"] = "/maps/genes.tsv"
    with pytest.raises(InputError) as ei:
        read_st(s["counts"], s["spots"], "S", "P", s["image"], gene_map=gmap)
    msg = one_line(
        ei.value,
        "maps none of the 120 gene ids of this section",
        "are its columns gene_id, gene?",
        "/maps/genes.tsv",
        str(s["counts"]),
        "sample 'S'",
    )
    assert ("columns are swapped" in msg) == (flaw == "swapped")


def test_gene_map_partial_warns_with_numbers_and_symbol_files_pass(tmp_path, caplog):
    genes = [f"ENSG{i:011d}" for i in range(130)]
    s = _st_with_genes(tmp_path, genes)
    gmap = pd.DataFrame({"gene_id": genes[:100], "gene": [f"GENE{i}" for i in range(100)]})
    with caplog.at_level(logging.WARNING):
        a = read_st(s["counts"], s["spots"], "S", "P", s["image"], gene_map=gmap)
    assert list(a.var_names[98:102]) == ["GENE98", "GENE99", genes[100], genes[101]]
    assert "maps 100 of 130 ids" in caplog.text
    assert "the other 30 keep their ids" in caplog.text and "mixes symbols and ids" in caplog.text
    # a section whose file already holds the symbols (HER2ST) under the same map: kept, no warning
    s2 = _st_with_genes(tmp_path / "her2st", [f"GENE{i}" for i in range(100)])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stpredict.ingest"):
        a = read_st(s2["counts"], s2["spots"], "S2", "P", s2["image"], gene_map=gmap)
    assert list(a.var_names[:2]) == ["GENE0", "GENE1"]
    assert "already symbols" in caplog.text
    assert not [
        r for r in caplog.records if r.levelno >= logging.WARNING and "gene map" in r.message
    ]


@pytest.mark.parametrize("mtx", [False, True], ids=["h5", "mtx"])
def test_visium_repeated_feature_symbols_reported_and_marked(tmp_path, caplog, mtx):
    v = make_visium(tmp_path, mtx=mtx)  # SYMBOLS repeats G0 (ids 0 and 11)
    with caplog.at_level(logging.INFO, logger="stpredict.ingest"):
        a = read_visium(v["outs"], "S1", "P1", image=v["image"])
    assert a.var_names[0] == "G0" and a.var_names[11] == "G0-1"
    assert a.var["duplicate_symbol"].tolist() == [True] + [False] * 10 + [True]
    assert a.var["gene_ids"].iloc[11] == GENES[11]
    msg = next(r for r in caplog.records if "repeats symbols" in r.message)
    assert msg.levelno == logging.INFO
    assert (
        "1 symbol(s), 2 features" in msg.message and f"G0: {GENES[0]}, {GENES[11]}" in msg.message
    )
    assert "SYMBOL-1" in msg.message


def test_overruled_spot_diameter_is_corrected_in_the_scalefactors(tmp_path, caplog):
    """squidpy draws spots spot_diameter_fullres wide: the overruled file value stayed there."""
    v = make_visium(tmp_path)
    sf = v["outs"] / "spatial/scalefactors_json.json"
    obj = json.loads(sf.read_text())
    wrong = obj["spot_diameter_fullres"] * 1.6  # the scalefactors of a run at another scale
    obj["spot_diameter_fullres"] = wrong
    sf.write_text(json.dumps(obj))
    with pytest.raises(GeometryError, match="spot_diameter_fullres"):
        read_visium(v["outs"], "S1", "P1", image=v["image"])
    with caplog.at_level(logging.WARNING):
        a = read_visium(v["outs"], "S1", "P1", image=v["image"], mpp=MPP)
    sfo = a.uns["spatial"]["S1"]["scalefactors"]
    assert sfo["spot_diameter_fullres"] == pytest.approx(65 / MPP)
    assert a.uns["stpredict"]["spot_diameter_fullres_file"] == pytest.approx(wrong)
    assert a.uns["stpredict"]["spot_diameter_px"] == pytest.approx(55 / MPP)
    assert f"spot_diameter_fullres {wrong:.4g} px" in caplog.text
    assert "spot_diameter_fullres_file" in caplog.text
    # a file value that agrees is kept as written, and no file value is recorded
    obj["spot_diameter_fullres"] = 65 / MPP * 1.02
    sf.write_text(json.dumps(obj))
    a = read_visium(v["outs"], "S1", "P1", image=v["image"], mpp=MPP)
    assert a.uns["spatial"]["S1"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(
        65 / MPP * 1.02
    )
    assert "spot_diameter_fullres_file" not in a.uns["stpredict"]


def _thumbnail_first_tiff(path: Path, full: np.ndarray, mpp: float, how: str) -> None:
    import tifffile

    thumb = full[::4, ::4].copy()
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    if how == "series":  # two shaped series (tifffile metadata)
        tifffile.imwrite(path, thumb, photometric="rgb")
        tifffile.imwrite(path, full, photometric="rgb", append=True, **res)
    else:  # two plain pages, no metadata; the full page tiled
        with tifffile.TiffWriter(path) as w:
            w.write(thumb, photometric="rgb", metadata=None)
            w.write(full, photometric="rgb", metadata=None, tile=(64, 64), **res)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize("how", ["series", "pages"])
def test_tiff_with_thumbnail_first_reads_the_full_resolution(tmp_path, caplog, how):
    from PIL import Image

    v = make_visium(tmp_path)
    full = np.asarray(Image.open(v["image"]).convert("RGB"))
    tif = tmp_path / "he_thumb_first.tif"
    _thumbnail_first_tiff(tif, full, MPP, how)
    with caplog.at_level(logging.INFO, logger="stpredict.ingest.images"):
        with SlideImage(tif, sample="S1") as im:
            assert im.shape == full.shape[:2]
            assert im.mpp_tags == pytest.approx(MPP)
            np.testing.assert_array_equal(im.read_region(5, 7, 40, 30), full[7:37, 5:45])
            assert im.thumbnail(50)[0].shape[1] == 50
    assert "series 1, the largest" in caplog.text and str(tif) in caplog.text
    a = read_visium(v["outs"], "S1", "P1", image=tif)
    assert a.uns["stpredict"]["image_shape"].tolist() == list(full.shape[:2])
    gc.collect()


@realdata
@needs_real
def test_real_fixtures_and_raw_counts_pass_the_normalisation_checks(tmp_path):
    """Margins of the checks on files nobody here wrote (see readers' constants)."""
    import scanpy as sc

    from stpredict.ingest.files import (
        LOG_MAX_VALUE,
        LOG_MIN_GENES,
        LOG_MIN_SPOT_SHARE,
        MAX_NORMALISED_TOTALS_CV,
    )

    mats = {
        "MOB1": read_st_counts(REAL / "st_stutility_mob1/MOB1.tsv").to_numpy(float),
        "xfuse": read_st_counts(REAL / "st_xfuse_mob/counts.tsv").to_numpy(float),
        "visium": sc.read_10x_h5(REAL / "visium_sr1_scanpy/filtered_feature_bc_matrix.h5")
        .X.toarray()
        .astype(float),
    }
    for name, x in mats.items():
        tot = x.sum(axis=1)
        tot = tot[tot > 0]
        assert tot.std() / tot.mean() > 3 * MAX_NORMALISED_TOTALS_CV, name
        share = ((x > 0).sum(axis=1) >= LOG_MIN_GENES).mean()
        assert x.max() > 30 * LOG_MAX_VALUE or share <= LOG_MIN_SPOT_SHARE, name
    # and their rounded normalised versions are refused where the matrix allows telling
    from stpredict.ingest.files import _check_not_normalised

    for name in ("MOB1", "xfuse"):
        x = mats[name]
        x = x[x.sum(axis=1) > 0]
        with pytest.raises(InputError, match="every spot totals"):
            _check_not_normalised(_cp10k(x), Path(name), name)
    with pytest.raises(InputError, match="log-transformed"):
        _check_not_normalised(np.rint(np.log1p(mats["MOB1"])), Path("MOB1"), "MOB1")


def test_coded_annotation_tokens_only_in_a_binary_column():
    from stpredict.vocab import normalise_annotation_labels

    assert normalise_annotation_labels(["1", "0", "1"]) == ["tumor", "non", "tumor"]
    assert normalise_annotation_labels(["Yes", "no"]) == ["tumor", "non"]
    # a region coding 0/1/2 is not a tumour/normal annotation: kept as written
    assert normalise_annotation_labels(["0", "1", "2"]) == ["0", "1", "2"]
    assert normalise_annotation_labels(["Tumor", "1", "stroma"]) == ["tumor", "1", "stroma"]
