"""Writers for the true on-disk formats of Visium / legacy ST / image files (FORMATS.md).

Every writer is atomic (temporary file + rename, :func:`stpredict.io.atomic_path`) and
byte-deterministic: gzip streams carry ``mtime=0`` and no file name, HDF5 datasets carry no
time stamps, TIFFs carry no date. Other modules' tests use these functions to build fixtures.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image

from stpredict.ingest.visium import POSITION_COLUMNS as READER_POSITION_COLUMNS
from stpredict.io import atomic_path

__all__ = [
    "write_10x_h5",
    "write_10x_mtx",
    "write_positions",
    "write_scalefactors",
    "write_png",
    "write_jpeg",
    "write_tiff",
    "write_st_counts",
    "write_st_spots",
    "write_st_annotation",
]

PathLike = str | os.PathLike[str]
POSITION_COLUMNS = list(READER_POSITION_COLUMNS)


def _write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` atomically; gzip it (deterministically) when ``path`` ends with ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=4) as gz:
            gz.write(data)
        data = buf.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_text(path: PathLike, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def _as_csc_genes_by_barcodes(counts: Any) -> sp.csc_matrix:
    """Spots x genes integer matrix -> CSC genes x barcodes (columns = barcodes)."""
    mat = sp.csr_matrix(counts) if not sp.issparse(counts) else counts.tocsr()
    mat = sp.csr_matrix(mat, dtype=np.int64)
    mat.eliminate_zeros()
    mat.sort_indices()
    # CSR of (spots x genes) has the same arrays as CSC of (genes x spots).
    return sp.csc_matrix((mat.data, mat.indices, mat.indptr), shape=(mat.shape[1], mat.shape[0]))


def _bytes_array(values: Sequence[str]) -> np.ndarray:
    enc = [str(v).encode("ascii") for v in values]
    width = max((len(v) for v in enc), default=1) or 1
    return np.array(enc, dtype=f"S{width}")


def write_10x_h5(
    path: PathLike,
    counts: Any,
    barcodes: Sequence[str],
    gene_ids: Sequence[str],
    gene_names: Sequence[str],
    genome: str = "GRCh38",
) -> None:
    """Write a 10x Genomics feature-barcode HDF5 matrix (Space Ranger >= 3 layout).

    Parameters
    ----------
    path
        Output ``.h5`` file.
    counts
        Spots x genes integer counts (``scipy.sparse`` or ndarray).
    barcodes, gene_ids, gene_names
        Row names (barcodes, e.g. ``ACGT...-1``) and column ids / symbols.
    genome
        Value of ``features/genome``.
    """
    mat = _as_csc_genes_by_barcodes(counts)
    n_genes, n_bc = mat.shape
    if len(barcodes) != n_bc or len(gene_ids) != n_genes or len(gene_names) != n_genes:
        raise ValueError("counts shape does not match barcodes / genes")
    kw: dict[str, Any] = {"track_times": False}
    zkw: dict[str, Any] = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=False) as f:
            f.attrs["filetype"] = np.array([b"matrix"])
            f.attrs["library_ids"] = np.array([b"stpredict_demo"])
            f.attrs["chemistry_description"] = np.array([b"Visium Spatial Gene Expression"])
            f.attrs["software_version"] = "stpredict-demo (spaceranger-3 layout)"
            f.attrs["version"] = np.array([2], dtype=np.int32)
            g = f.create_group("matrix", track_order=False)
            g.create_dataset("barcodes", data=_bytes_array(barcodes), **kw)
            g.create_dataset("data", data=mat.data.astype(np.int32), **kw, **zkw)
            g.create_dataset("indices", data=mat.indices.astype(np.int64), **kw, **zkw)
            g.create_dataset("indptr", data=mat.indptr.astype(np.int64), **kw)
            g.create_dataset("shape", data=np.array([n_genes, n_bc], dtype=np.int32), **kw)
            ft = g.create_group("features")
            ft.create_dataset("id", data=_bytes_array(gene_ids), **kw)
            ft.create_dataset("name", data=_bytes_array(gene_names), **kw)
            ft.create_dataset(
                "feature_type", data=_bytes_array(["Gene Expression"] * n_genes), **kw
            )
            ft.create_dataset("genome", data=_bytes_array([genome] * n_genes), **kw)
            ft.create_dataset("_all_tag_keys", data=np.array([b"genome"]), **kw)


def write_10x_mtx(
    folder: PathLike,
    counts: Any,
    barcodes: Sequence[str],
    gene_ids: Sequence[str],
    gene_names: Sequence[str],
) -> None:
    """Write a 10x ``filtered_feature_bc_matrix/`` folder (v3: gzipped mtx/barcodes/features).

    ``matrix.mtx.gz`` is genes x barcodes, ``coordinate integer general``, 1-based.
    """
    folder = Path(folder)
    mat = _as_csc_genes_by_barcodes(counts).tocoo()
    n_genes, n_bc = mat.shape
    # Order by barcode (column) then gene, as Space Ranger does.
    order = np.lexsort((mat.row, mat.col))
    rows, cols, vals = mat.row[order] + 1, mat.col[order] + 1, mat.data[order]
    head = (
        "%%MatrixMarket matrix coordinate integer general\n"
        '%metadata_json: {"software_version": "stpredict-demo", "format_version": 2}\n'
        f"{n_genes} {n_bc} {len(vals)}\n"
    )
    body = pd.DataFrame({"g": rows, "b": cols, "v": vals}).astype(np.int64)
    text = body.to_csv(sep=" ", header=False, index=False, lineterminator="\n")
    _write_text(folder / "matrix.mtx.gz", head + text)
    _write_text(folder / "barcodes.tsv.gz", "".join(f"{b}\n" for b in barcodes))
    _write_text(
        folder / "features.tsv.gz",
        "".join(f"{i}\t{n}\tGene Expression\n" for i, n in zip(gene_ids, gene_names, strict=True)),
    )


def write_positions(path: PathLike, df: pd.DataFrame, header: bool) -> None:
    """Write Visium spot positions.

    Parameters
    ----------
    path
        ``tissue_positions_list.csv`` (Space Ranger 1.x, ``header=False``) or
        ``tissue_positions.csv`` (>= 2.0, ``header=True``); gzipped when it ends with ``.gz``.
    df
        Columns ``barcode, in_tissue, array_row, array_col, pxl_row_in_fullres,
        pxl_col_in_fullres`` (written in that order).
    header
        Whether to write the header line.
    """
    out = df[POSITION_COLUMNS]
    _write_text(path, out.to_csv(index=False, header=header, lineterminator="\n"))


def write_scalefactors(
    path: PathLike,
    tissue_hires_scalef: float,
    tissue_lowres_scalef: float,
    spot_diameter_fullres: float,
    fiducial_diameter_fullres: float,
) -> None:
    """Write ``scalefactors_json.json`` with the four Space Ranger keys."""
    obj = {
        "spot_diameter_fullres": float(spot_diameter_fullres),
        "tissue_hires_scalef": float(tissue_hires_scalef),
        "fiducial_diameter_fullres": float(fiducial_diameter_fullres),
        "tissue_lowres_scalef": float(tissue_lowres_scalef),
    }
    _write_text(path, json.dumps(obj, indent=4) + "\n")


def _rgb_u8(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def write_png(path: PathLike, rgb: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG."""
    with atomic_path(path) as tmp:
        Image.fromarray(_rgb_u8(rgb)).save(tmp, format="PNG", compress_level=3)


def write_jpeg(path: PathLike, rgb: np.ndarray, quality: int = 90) -> None:
    """Write an RGB uint8 array as baseline JPEG."""
    with atomic_path(path) as tmp:
        Image.fromarray(_rgb_u8(rgb)).save(tmp, format="JPEG", quality=int(quality))


def _halve(img: np.ndarray) -> np.ndarray:
    """2x2 mean downsampling (odd edges dropped)."""
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    v = img[:h, :w].astype(np.uint16)
    out = (v[0::2, 0::2] + v[1::2, 0::2] + v[0::2, 1::2] + v[1::2, 1::2] + 2) // 4
    return out.astype(np.uint8)


def write_tiff(
    path: PathLike,
    rgb: np.ndarray,
    mpp: float | None,
    tile: int | None = None,
    pyramid: bool = False,
    compression: str = "zlib",
) -> None:
    """Write an RGB TIFF, optionally tiled with a SubIFD pyramid.

    Parameters
    ----------
    path
        Output ``.tif``.
    rgb
        ``(H, W, 3)`` uint8 image.
    mpp
        µm per pixel; when given, X/YResolution = ``1e4 / mpp`` pixels per centimetre with
        ResolutionUnit CENTIMETER.
    tile
        Tile edge in px (multiple of 16), or None for strips.
    pyramid
        Add reduced-resolution levels (each half the previous) as SubIFDs of the first page,
        down to about 512 px. Requires ``tile``-able sizes; uses ``tile`` (or 256) for levels.
    compression
        ``"zlib"`` or ``"jpeg"``.
    """
    import tifffile

    img = _rgb_u8(rgb)
    levels: list[np.ndarray] = []
    if pyramid:
        cur = img
        while max(cur.shape[:2]) > 1024:
            cur = _halve(cur)
            levels.append(cur)
    common: dict[str, Any] = {"photometric": "rgb", "compression": compression}
    if compression == "jpeg":
        common["compressionargs"] = {"level": 90}
    if tile is not None or pyramid:
        common["tile"] = (tile or 256, tile or 256)
    res: dict[str, Any] = {}
    if mpp is not None:
        ppcm = 1e4 / float(mpp)
        res = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=False) as tw:
            tw.write(img, subifds=len(levels) or None, software="stpredict-demo", **res, **common)
            for k, lev in enumerate(levels, start=1):
                lres: dict[str, Any] = {}
                if mpp is not None:
                    ppcm = 1e4 / (float(mpp) * 2**k)
                    lres = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
                tw.write(lev, subfiletype=1, **lres, **common)


def write_st_counts(
    path: PathLike, counts: Any, spot_ids: Sequence[str], genes: Sequence[str]
) -> None:
    """Write a legacy ST count matrix (spots x genes TSV, first column the ``XxY`` id).

    The header of the id column is blank; gzipped when ``path`` ends with ``.gz``.
    """
    arr = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    arr = np.rint(arr).astype(np.int64)
    buf = io.StringIO()
    buf.write("\t" + "\t".join(map(str, genes)) + "\n")
    ids = np.asarray(list(map(str, spot_ids)), dtype=object)[:, None]
    table = np.hstack([ids, arr.astype(str).astype(object)])
    buf.write("\n".join("\t".join(row) for row in table))
    buf.write("\n")
    _write_text(path, buf.getvalue())


def _fmt(v: float) -> str:
    return f"{float(v):.2f}"


def write_st_spots(path: PathLike, df: pd.DataFrame, style: str) -> None:
    """Write a legacy ST spot-coordinate file.

    Parameters
    ----------
    path
        Output file (gzipped when it ends with ``.gz``).
    df
        Columns ``x, y`` (array coordinates, may be float), ``pixel_x, pixel_y`` (image column /
        row), and for ``style="selection"`` also ``new_x, new_y, selected``.
    style
        ``"stnet"``: tab-separated ``x y pixel_x pixel_y`` (ST-Net ``*.spots.txt``);
        ``"selection"``: tab-separated ``x y new_x new_y pixel_x pixel_y selected``
        (HER2ST / STUtility); ``"published"``: comma-separated, index ``"{x}x{y}"`` (rounded),
        columns ``X, Y`` = pixel x, pixel y (ST-Net download ``spots_*.csv.gz``).
    """
    if style == "stnet":
        lines = ["x\ty\tpixel_x\tpixel_y"]
        for r in df.itertuples(index=False):
            lines.append("\t".join([_fmt(r.x), _fmt(r.y), _fmt(r.pixel_x), _fmt(r.pixel_y)]))
    elif style == "selection":
        lines = ["x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected"]
        for r in df.itertuples(index=False):
            lines.append(
                "\t".join(
                    [
                        str(int(round(r.x))),
                        str(int(round(r.y))),
                        _fmt(r.new_x),
                        _fmt(r.new_y),
                        _fmt(r.pixel_x),
                        _fmt(r.pixel_y),
                        str(int(r.selected)),
                    ]
                )
            )
    elif style == "published":
        lines = [",X,Y"]
        for r in df.itertuples(index=False):
            sid = f"{int(round(r.x))}x{int(round(r.y))}"
            lines.append(f"{sid},{float(r.pixel_x):.3f},{float(r.pixel_y):.3f}")
    else:
        raise ValueError(f"unknown ST spot style {style!r} (stnet | selection | published)")
    _write_text(path, "\n".join(lines) + "\n")


def write_st_annotation(
    path: PathLike,
    spot_ids: Sequence[str],
    x: Sequence[float],
    y: Sequence[float],
    labels: Sequence[str],
) -> None:
    """Write an ST-Net ``*_Coords.tsv`` tumour annotation (header shifted one column left).

    The header line holds three names ``xcoord, ycoord, tumor`` above data rows of four fields
    ``id, x, y, label`` (labels ``tumor`` / ``non``).
    """
    lines = ["xcoord\tycoord\ttumor"]
    for s, xi, yi, lab in zip(spot_ids, x, y, labels, strict=True):
        lines.append(f"{s}\t{_fmt(xi)}\t{_fmt(yi)}\t{lab}")
    _write_text(path, "\n".join(lines) + "\n")
