"""Reader of Space Ranger ``outs/`` folders (1.x and >= 2.0) into the section AnnData.

:func:`read_visium` returns the section AnnData of docs/DESIGN.md (built with the helpers of
:mod:`stpredict.ingest.section`): raw counts from ``filtered_feature_bc_matrix(.h5)``, positions
from ``spatial/tissue_positions(_list).csv``, ``uns["spatial"]`` from the scale factors and the
hires / lowres PNGs, annotation and graphclust clusters in ``obs``. Formats and pitfalls follow
FORMATS.md; problems raise :class:`~stpredict.errors.InputError` /
:class:`~stpredict.errors.GeometryError` with one-line messages naming file, sample and fix. The
checks shared with the ST reader (raw counts, damaged files, label tables) are in
:mod:`stpredict.ingest.files`. Beyond them:

- every matrix barcode is in the positions file and marked in_tissue (up to
  :data:`MAX_MATRIX_OFF_TISSUE`; another section's positions file fails here), positions have
  finite pixels, non-negative array coordinates of the hexagonal parity, one barcode per array
  position; a header-only positions file is refused where it is;
- the scale factors are a JSON object of positive numbers and fit the hires / lowres PNGs;
- graphclust clusters label every spot and, like annotations, no spot off this section's tissue
  (:data:`MAX_FOREIGN_LABELS`, :data:`MIN_GRAPHCLUST_COVERAGE`);
- geometry: the pixel size (:func:`~stpredict.ingest.geometry.reconcile_mpp`: sheet, spot pitch,
  scale factors, image tags) and the bounds and orientation of the spots on the image
  (:func:`~stpredict.ingest.geometry.check_bounds`).

A subset matrix or a partial annotation is logged as a warning with numbers.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from stpredict.errors import InputError
from stpredict.ingest.files import (
    PathLike,
    _check_distinct_pixels,
    _check_not_normalised,
    _check_raw_counts,
    _examples,
    _head_lines,
    _is_number,
    _label_csv,
    _map_labels,
    _read_table,
    _report_annotation_labels,
    _unique_gene_names,
)
from stpredict.ingest.geometry import (
    VISIUM_PITCH_UM,
    VISIUM_SCALEFACTOR_SPOT_UM,
    VISIUM_SPOT_UM,
    check_bounds,
    estimate_mpp_from_pitch,
    reconcile_mpp,
)
from stpredict.ingest.images import SlideImage
from stpredict.ingest.section import (
    _LOWRES_MAX,
    _csr_float32,
    _finish_obs,
    _open_image,
    _positions_uns,
    _stpredict_uns,
)
from stpredict.vocab import normalise_annotation_labels

__all__ = [
    "read_visium",
    "read_visium_positions",
    "repair_barcodes",
    "POSITION_COLUMNS",
    "GRAPHCLUST_CLUSTERS",
]

log = logging.getLogger(__name__)

POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]


#: where Space Ranger writes the graphclust clusters, relative to ``outs/`` (1.x, then >= 2.0)
GRAPHCLUST_CLUSTERS: tuple[str, ...] = (
    "analysis/clustering/graphclust/clusters.csv",
    "analysis/clustering/gene_expression_graphclust/clusters.csv",
)
_R_BARCODE = re.compile(r"\.(\d+)$")


def _first_existing(candidates: Sequence[Path]) -> Path | None:
    for c in candidates:
        if c.exists():
            return c
    return None


def _missing(what: str, looked: Sequence[Path], sample: str | None, fix: str) -> InputError:
    listing = ", ".join(p.name for p in looked)
    return InputError(
        f"{what} not found (looked for: {listing})", file=looked[0].parent, sample=sample, fix=fix
    )


def repair_barcodes(values: Sequence[str] | pd.Index) -> list[str]:
    """Undo R's name mangling of 10x barcodes: ``AAAC...GT.1`` -> ``AAAC...GT-1``."""
    return [_R_BARCODE.sub(r"-\1", str(v).strip()) for v in values]


def _load_png_rgb(path: Path, sample: str | None = None) -> np.ndarray:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a damaged file
        raise InputError(
            f"cannot decode the image ({type(exc).__name__}: {exc})",
            file=path,
            sample=sample,
            fix="copy Space Ranger's spatial/ folder again (the PNG is truncated or corrupt)",
        ) from exc


# --------------------------------------------------------------------------- Visium
def read_visium_positions(path: PathLike, sample: str | None = None) -> pd.DataFrame:
    """Read ``tissue_positions(_list).csv(.gz)``, with or without a header line.

    The header is detected by content: a first line whose second to fourth fields are not all
    numbers is a header, and its names must be the Space Ranger ones.

    Returns
    -------
    pandas.DataFrame
        Columns ``barcode, in_tissue (bool), array_row, array_col (int),
        pxl_row_in_fullres, pxl_col_in_fullres (float)``.
    """
    path = Path(path)
    fix = (
        "give Space Ranger's spatial/tissue_positions.csv (with header) or "
        "tissue_positions_list.csv (no header): barcode,in_tissue,array_row,array_col,"
        "pxl_row_in_fullres,pxl_col_in_fullres"
    )
    lines = _head_lines(path, sample, "positions file", fix, need_rows=False)
    first = [f.strip().strip('"') for f in lines[0].split(",")]
    if len(first) != 6:
        raise InputError(
            f"positions file has {len(first)} comma-separated columns; expected 6",
            file=path,
            sample=sample,
            fix=fix,
        )
    has_header = not all(_is_number(f) for f in first[1:6])
    if has_header and [f.lower() for f in first] != POSITION_COLUMNS:
        raise InputError(
            f"positions file has an unexpected header {','.join(first)!r}",
            file=path,
            sample=sample,
            fix=fix,
        )
    if has_header and len(lines) < 2:
        raise InputError(
            "positions file holds only its header line, no spot rows",
            file=path,
            sample=sample,
            fix="copy spatial/tissue_positions.csv again from Space Ranger's outs/ (every one of "
            "the array's spots has a row)",
        )
    df = _read_table(
        path,
        sample,
        "positions file",
        fix,
        header=0 if has_header else None,
        names=POSITION_COLUMNS,
        dtype={"barcode": str},
        compression="infer",
    )
    num = df[POSITION_COLUMNS[1:]].apply(pd.to_numeric, errors="coerce")
    bad_rows = ~np.isfinite(num.to_numpy(dtype=float)).all(axis=1)
    if bad_rows.any():
        first_bad = int(np.flatnonzero(bad_rows)[0])
        raise InputError(
            f"{int(bad_rows.sum())} of {len(df)} row(s) of the positions file have missing, "
            f"non-numeric or infinite values (e.g. barcode {df['barcode'].iloc[first_bad]!r})",
            file=path,
            sample=sample,
            fix=fix,
        )
    if not num["in_tissue"].isin([0, 1]).all():
        raise InputError(
            "column 2 (in_tissue) holds values other than 0/1; columns may be in the wrong order",
            file=path,
            sample=sample,
            fix=fix,
        )
    rows = np.rint(num["array_row"]).astype(np.int64).to_numpy()
    cols = np.rint(num["array_col"]).astype(np.int64).to_numpy()
    if (rows < 0).any() or (cols < 0).any():
        raise InputError(
            f"{int(((rows < 0) | (cols < 0)).sum())} spot(s) have negative array_row / array_col",
            file=path,
            sample=sample,
            fix=fix,
        )
    odd = (rows + cols) % 2 != 0
    if odd.mean() > 0.01:
        raise InputError(
            f"{int(odd.sum())} of {len(rows)} spots break the Visium hexagonal layout (array_col "
            "must have the parity of array_row); array_row / array_col may be mixed up with "
            "other columns",
            file=path,
            sample=sample,
            fix=fix,
        )
    out = pd.DataFrame(
        {
            "barcode": repair_barcodes(df["barcode"]),
            "in_tissue": num["in_tissue"].astype(bool).to_numpy(),
            "array_row": rows,
            "array_col": cols,
            "pxl_row_in_fullres": num["pxl_row_in_fullres"].astype(np.float64).to_numpy(),
            "pxl_col_in_fullres": num["pxl_col_in_fullres"].astype(np.float64).to_numpy(),
        }
    )
    dup = out["barcode"].duplicated()
    if dup.any():
        raise InputError(
            f"{int(dup.sum())} duplicate barcode(s) in the positions file (e.g. "
            f"{_examples(out['barcode'][dup])})",
            file=path,
            sample=sample,
            fix="give the positions file Space Ranger wrote, one row per barcode",
        )
    _check_distinct_pixels(
        out["pxl_col_in_fullres"].to_numpy(),
        out["pxl_row_in_fullres"].to_numpy(),
        out["barcode"],
        path,
        sample,
    )
    pos_dup = out.duplicated(["array_row", "array_col"])
    if pos_dup.any():
        ex = out[pos_dup].iloc[0]
        raise InputError(
            f"{int(pos_dup.sum())} barcode(s) share an array position with another one (e.g. "
            f"{ex['barcode']} at array_row {ex['array_row']}, array_col {ex['array_col']})",
            file=path,
            sample=sample,
            fix="give the positions file Space Ranger wrote (one barcode per array position)",
        )
    return out


def _check_matrix(adata: ad.AnnData, path: Path, sample: str) -> None:
    """Refuse an empty matrix and one that holds normalised values instead of counts."""
    if adata.n_obs == 0:
        raise InputError(
            "the count matrix holds no barcodes (0 spots)",
            file=path,
            sample=sample,
            fix="give Space Ranger's filtered_feature_bc_matrix of this section (it has one "
            "barcode per spot under tissue)",
        )
    if adata.n_vars == 0:
        raise InputError(
            "the count matrix holds no features (0 genes)",
            file=path,
            sample=sample,
            fix="give Space Ranger's filtered_feature_bc_matrix of this section",
        )
    x = adata.X
    data = x.data if sp.issparse(x) else np.asarray(x)
    if sp.issparse(x):
        coo = None

        def where(i: int) -> str:
            nonlocal coo
            coo = coo if coo is not None else sp.coo_matrix(x)
            return f"barcode {adata.obs_names[coo.row[i]]}, gene {adata.var_names[coo.col[i]]}"

    else:

        def where(i: int) -> str:
            r, c = np.unravel_index(i, data.shape)
            return f"barcode {adata.obs_names[r]}, gene {adata.var_names[c]}"

    _check_raw_counts(data, path, sample, where)
    _check_not_normalised(x, path, sample)


def _read_10x_matrix(outs: Path, sample: str) -> tuple[ad.AnnData, Path, dict[str, str]]:
    import scanpy as sc

    h5 = outs / "filtered_feature_bc_matrix.h5"
    mtx = outs / "filtered_feature_bc_matrix"
    fix = "point the sample sheet's 'raw' column at Space Ranger's outs/ folder"
    meta: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if h5.is_file():
            try:
                adata = sc.read_10x_h5(h5)
            except Exception as exc:  # noqa: BLE001 - any h5py / scanpy failure is a bad input
                raise InputError(
                    f"cannot read the 10x HDF5 matrix, it is truncated, corrupt or not a 10x "
                    f"matrix ({type(exc).__name__}: {str(exc)[:200]})",
                    file=h5,
                    sample=sample,
                    fix="copy filtered_feature_bc_matrix.h5 again from Space Ranger's outs/ "
                    "(compare its size with the original)",
                ) from exc
            try:
                import h5py

                with h5py.File(h5, "r") as f:
                    for key in ("chemistry_description", "software_version"):
                        if key in f.attrs:
                            v = f.attrs[key]
                            v = v[0] if isinstance(v, np.ndarray) and v.size else v
                            meta[key] = v.decode() if isinstance(v, bytes) else str(v)
            except OSError:
                pass
            _check_matrix(adata, h5, sample)
            return adata, h5, meta
        if mtx.is_dir():
            try:
                adata = sc.read_10x_mtx(mtx, var_names="gene_symbols", make_unique=False)
            except Exception as exc:  # noqa: BLE001
                damaged = isinstance(exc, (EOFError, zlib.error)) or "end-of-stream" in str(exc)
                raise InputError(
                    f"cannot read the 10x matrix folder"
                    f"{': a file is truncated or corrupt' if damaged else ''} "
                    f"({type(exc).__name__}: {str(exc)[:200]})",
                    file=mtx,
                    sample=sample,
                    fix="copy filtered_feature_bc_matrix/ again from Space Ranger's outs/; it "
                    "must hold matrix.mtx(.gz), barcodes.tsv(.gz) and features.tsv(.gz)",
                ) from exc
            _check_matrix(adata, mtx, sample)
            return adata, mtx, meta
    raise _missing("count matrix", [h5, mtx], sample, fix)


def _read_scalefactors(path: Path, sample: str) -> dict[str, float]:
    """Read ``scalefactors_json.json``: a JSON object of positive numbers."""
    fix = "copy scalefactors_json.json again from Space Ranger's outs/spatial/"
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise InputError(
            f"cannot parse the scale factors ({type(exc).__name__}: {exc})",
            file=path,
            sample=sample,
            fix=fix,
        ) from exc
    if not isinstance(obj, dict):
        raise InputError(
            f"the scale factors file holds a JSON {type(obj).__name__}, not an object of "
            "named factors",
            file=path,
            sample=sample,
            fix=fix,
        )
    out: dict[str, float] = {}
    for k, v in obj.items():
        if isinstance(v, str) and not _is_number(v):  # a text entry is no scale factor: skip it
            continue
        try:
            value = float(v)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"scale factor {k!r} is not a number ({v!r})", file=path, sample=sample, fix=fix
            ) from exc
        if not np.isfinite(value) or value < 0 or (value == 0 and k != "fiducial_diameter_fullres"):
            raise InputError(
                f"scale factor {k!r} is {value}; it must be a positive number",
                file=path,
                sample=sample,
                fix=fix,
            )
        out[str(k)] = value
    return out


def _check_scalefactors_fit(
    images: Mapping[str, np.ndarray],
    scalefactors: Mapping[str, float],
    img: SlideImage | None,
    pos: pd.DataFrame,
    spatial: Path,
    sf_path: Path,
    sample: str,
) -> None:
    """Check that the hires / lowres PNGs are the full-resolution image scaled by their factors.

    With the full-resolution image: each PNG's height and width must be the image's times
    ``tissue_{hires,lowres}_scalef`` (within 2 % + 2 px; Space Ranger rounds). Without it: the
    in-tissue spots, scaled, must fall inside the PNG. Either failing means the scale factors
    (or PNGs) belong to another section, or the image is not the one given to Space Ranger.
    """
    for key, png in images.items():
        scalef = scalefactors.get(f"tissue_{key}_scalef")
        if not scalef:
            continue
        ph, pw = png.shape[:2]
        name = spatial / f"tissue_{key}_image.png"
        if img is not None:
            h, w = img.shape
            eh, ew = h * scalef, w * scalef
            if abs(eh - ph) > 2 + 0.02 * ph or abs(ew - pw) > 2 + 0.02 * pw:
                raise InputError(
                    f"tissue_{key}_scalef {scalef:.6g} x the {w}x{h} px image '{img.path}' gives "
                    f"{ew:.0f}x{eh:.0f} px, but '{name}' is {pw}x{ph} px: the scale factors "
                    "belong to another section or image, or the image is not the "
                    "full-resolution image given to Space Ranger",
                    file=sf_path,
                    sample=sample,
                    fix="give the spatial/ folder of this section's Space Ranger run and the "
                    "full-resolution image it was run on",
                )
        else:
            it = pos["in_tissue"].to_numpy()
            if not it.any():
                continue
            xs = pos["pxl_col_in_fullres"].to_numpy()[it] * scalef
            ys = pos["pxl_row_in_fullres"].to_numpy()[it] * scalef
            out = (xs < -1) | (ys < -1) | (xs > pw + 1) | (ys > ph + 1)
            if out.mean() > 0.01:
                raise InputError(
                    f"{int(out.sum())} of {int(it.sum())} in-tissue spots fall outside "
                    f"'{name}' ({pw}x{ph} px) when scaled by tissue_{key}_scalef {scalef:.6g}: "
                    "the scale factors belong to another section or image",
                    file=sf_path,
                    sample=sample,
                    fix="give the spatial/ folder of this section's Space Ranger run",
                )


#: Largest share of matrix barcodes that the positions file may mark off-tissue (Space Ranger
#: writes exactly the in-tissue spots into the filtered matrix; on the demo, another section's
#: positions file marks 1.7-29 % of them off-tissue).
MAX_MATRIX_OFF_TISSUE = 0.005


#: Largest share of a Visium annotation / clusters table's barcodes that may lie outside the
#: section's tissue (correct tables: 0; another section's, on the demo: 1.7-29 %).
MAX_FOREIGN_LABELS = 0.005


#: Smallest share of the section's spots a Visium clusters table must label (graphclust labels
#: all of them; another section's table labels 71-98 % on the demo).
MIN_GRAPHCLUST_COVERAGE = 0.99


def _check_matrix_in_tissue(
    barcodes: pd.Index,
    in_tissue: np.ndarray,
    pos: pd.DataFrame,
    matrix_path: Path,
    pos_path: Path,
    sample: str,
) -> None:
    """Check that the filtered matrix holds exactly the spots marked in_tissue."""
    n = len(barcodes)
    off = barcodes[~in_tissue]
    n_in_pos = int(pos["in_tissue"].sum())
    in_pos = pd.Index(pos["barcode"][pos["in_tissue"].to_numpy()])
    not_in_matrix = in_pos[~in_pos.isin(barcodes)]
    if len(off) > MAX_MATRIX_OFF_TISSUE * n:
        raise InputError(
            f"{len(off)} of the {n} barcodes of the filtered matrix '{matrix_path}' "
            f"({100 * len(off) / n:.1f}%) are marked off-tissue (in_tissue 0) in the positions "
            f"file '{pos_path}' (e.g. {_examples(off)}), and {len(not_in_matrix)} of its "
            f"{n_in_pos} in-tissue spots are not in the matrix; Space Ranger puts exactly the "
            "in-tissue spots in the filtered matrix, so the positions file probably belongs to "
            "another section (same barcode whitelist, other tissue)",
            file=pos_path,
            sample=sample,
            fix="give the matrix and the spatial/ folder of the same Space Ranger run (the "
            "'raw' folder of this section)",
        )
    if len(off):
        log.warning(
            "sample %s: %d of %d matrix barcodes are marked off-tissue in '%s' (kept)",
            sample,
            len(off),
            n,
            pos_path,
        )
    if len(not_in_matrix):
        log.warning(
            "sample %s: the matrix '%s' holds %d of the %d spots marked in_tissue in '%s' "
            "(%d absent, e.g. %s): a subset of the section's spots",
            sample,
            matrix_path,
            n - len(off),
            n_in_pos,
            pos_path,
            len(not_in_matrix),
            _examples(not_in_matrix),
        )


def _matrix_barcodes(
    adata: ad.AnnData, pos: pd.DataFrame, matrix_path: Path, pos_path: Path, sample_id: str
) -> pd.Index:
    """Repaired matrix barcodes; refuse duplicates and barcodes absent from the positions."""
    barcodes = pd.Index(repair_barcodes(adata.obs_names))
    if barcodes.duplicated().any():
        dup = barcodes[barcodes.duplicated()]
        raise InputError(
            f"{len(dup)} duplicate barcode(s) in the count matrix (e.g. {_examples(dup)})",
            file=matrix_path,
            sample=sample_id,
            fix="give the matrix Space Ranger wrote, one column per barcode",
        )
    pos_idx = pd.Index(pos["barcode"])
    absent = barcodes[~barcodes.isin(pos_idx)]
    if len(absent):
        raise InputError(
            f"{len(absent)} of {len(barcodes)} matrix barcodes are absent from the positions file "
            f"'{pos_path}' (e.g. {_examples(absent)}; positions hold e.g. "
            f"{_examples(pos_idx)})",
            file=matrix_path,
            sample=sample_id,
            fix="use the matrix and spatial/ folder of the same Space Ranger run",
        )
    return barcodes


def _section_matrix(
    adata: ad.AnnData, barcodes: pd.Index, matrix_path: Path, sample_id: str
) -> ad.AnnData:
    """Build the float32 CSR matrix with unique gene names and the section's var columns."""
    var = adata.var
    gene_ids = (
        var["gene_ids"].astype(str).to_numpy()
        if "gene_ids" in var
        else np.asarray(adata.var_names, dtype=str)
    )
    ftypes = (
        var["feature_types"].astype(str).to_numpy()
        if "feature_types" in var
        else np.full(adata.n_vars, "Gene Expression")
    )
    names, shared = _unique_gene_names(
        [str(v) for v in adata.var_names], gene_ids, matrix_path, sample_id, "features"
    )
    return ad.AnnData(
        X=_csr_float32(adata.X),
        obs=pd.DataFrame(index=pd.Index(barcodes.astype(str), name=None)),
        var=pd.DataFrame(
            {
                "gene_ids": gene_ids.astype(str),
                "feature_types": ftypes.astype(str),
                "ambiguous": np.zeros(len(names), dtype=bool),
                "duplicate_symbol": shared,
            },
            index=names,
        ),
    )


def read_visium(
    outs_dir: PathLike,
    sample_id: str,
    patient_id: str,
    image: PathLike | None = None,
    annotation: PathLike | None = None,
    clusters: PathLike | None = None,
    mpp: float | None = None,
    mpp_tolerance: float = 0.1,
    bounds_check: bool = True,
) -> ad.AnnData:
    """Read a Space Ranger ``outs/`` folder into the section AnnData (docs/DESIGN.md).

    Parameters
    ----------
    outs_dir
        Space Ranger ``outs/`` folder: ``filtered_feature_bc_matrix.h5`` (or the
        ``filtered_feature_bc_matrix/`` mtx folder) and ``spatial/`` with
        ``tissue_positions.csv`` (SR >= 2, header) or ``tissue_positions_list.csv`` (SR 1.x, no
        header), optionally gzipped, ``scalefactors_json.json`` and the hires / lowres PNGs.
    sample_id, patient_id
        Section and patient ids.
    image
        Full-resolution H&E the ``pxl_*_in_fullres`` coordinates refer to. ``None``: no bounds
        check and µm/px from the spot pitch / scalefactors only (a warning is logged).
    annotation
        CSV ``barcode,label``; labels normalised like the ST reader's
        (:func:`normalise_annotation_label`: ``Tumor``, ``tumour``, ``cancer`` -> ``tumor``;
        ``Normal``, ``non-tumor`` -> ``non``; others kept).
    clusters
        CSV ``Barcode,Cluster``; default: ``analysis/clustering/(gene_expression_)graphclust/
        clusters.csv`` under ``outs_dir`` when present.
    mpp
        Known µm/px of ``image`` (sample sheet); cross-checked with the other estimates.
    mpp_tolerance
        Largest allowed relative disagreement between µm/px estimates.
    bounds_check
        Run :func:`stpredict.ingest.geometry.check_bounds` when an image is given.

    Returns
    -------
    anndata.AnnData
        Spots = the matrix's barcodes.
    """
    outs = Path(outs_dir)
    if not outs.is_dir():
        raise InputError(
            "Space Ranger outs folder does not exist",
            file=outs,
            sample=sample_id,
            fix="point the sample sheet's 'raw' column at Space Ranger's outs/ folder",
        )
    spatial = outs / "spatial"
    adata, matrix_path, meta = _read_10x_matrix(outs, sample_id)

    pos_candidates = [
        spatial / name
        for name in (
            "tissue_positions.csv",
            "tissue_positions.csv.gz",
            "tissue_positions_list.csv",
            "tissue_positions_list.csv.gz",
        )
    ]
    pos_path = _first_existing(pos_candidates)
    if pos_path is None:
        raise _missing(
            "spot positions file",
            pos_candidates,
            sample_id,
            "point 'raw' at a Space Ranger outs/ folder that contains spatial/",
        )
    pos = read_visium_positions(pos_path, sample_id)

    sf_path = spatial / "scalefactors_json.json"
    if not sf_path.is_file():
        raise _missing(
            "scale factors", [sf_path], sample_id, "copy Space Ranger's spatial/ folder completely"
        )
    scalefactors = _read_scalefactors(sf_path, sample_id)

    # --- matrix barcodes vs positions
    barcodes = _matrix_barcodes(adata, pos, matrix_path, pos_path, sample_id)
    adata.obs_names = barcodes
    p = pos.set_index("barcode").loc[barcodes]
    _check_matrix_in_tissue(
        barcodes, p["in_tissue"].to_numpy(bool), pos, matrix_path, pos_path, sample_id
    )

    # --- var
    adata = _section_matrix(adata, barcodes, matrix_path, sample_id)

    obs = adata.obs
    obs["sample_id"] = str(sample_id)
    obs["patient_id"] = str(patient_id)
    obs["in_tissue"] = p["in_tissue"].to_numpy(dtype=bool)
    obs["array_row"] = p["array_row"].to_numpy(dtype=np.int64)
    obs["array_col"] = p["array_col"].to_numpy(dtype=np.int64)
    obs["pxl_row_in_fullres"] = p["pxl_row_in_fullres"].to_numpy(dtype=np.float64)
    obs["pxl_col_in_fullres"] = p["pxl_col_in_fullres"].to_numpy(dtype=np.float64)
    obs["annotation"] = ""
    obs["cluster"] = ""
    adata.obsm["spatial"] = np.column_stack(
        [obs["pxl_col_in_fullres"].to_numpy(), obs["pxl_row_in_fullres"].to_numpy()]
    ).astype(np.float64)

    under = pd.Index(pos["barcode"][pos["in_tissue"].to_numpy()]).union(obs.index)
    under_what = f"spots under tissue in this section (positions file '{pos_path}')"
    if annotation:
        labels = _label_csv(Path(annotation), sample_id, "annotation")
        labels.index = pd.Index(repair_barcodes(labels.index))
        labels = pd.Series(normalise_annotation_labels(labels.tolist()), index=labels.index)
        # partial annotation is legitimate (unlabelled spots get ""); labels of spots that are
        # not under this section's tissue are not
        obs["annotation"] = _map_labels(
            obs.index,
            labels,
            Path(annotation),
            sample_id,
            "annotation",
            allowed=under,
            allowed_what=under_what,
            max_foreign=MAX_FOREIGN_LABELS,
        )
        _report_annotation_labels(
            obs["annotation"].to_numpy(), Path(annotation), sample_id, "Visium"
        )
    cl_path = (
        Path(clusters) if clusters else _first_existing([outs / c for c in GRAPHCLUST_CLUSTERS])
    )
    if cl_path is not None:
        labels = _label_csv(cl_path, sample_id, "clusters")
        labels.index = pd.Index(repair_barcodes(labels.index))
        obs["cluster"] = _map_labels(
            obs.index,
            labels,
            cl_path,
            sample_id,
            "clusters",
            allowed=under,
            allowed_what=under_what,
            max_foreign=MAX_FOREIGN_LABELS,
            min_coverage=MIN_GRAPHCLUST_COVERAGE,
            guarantee=" (Space Ranger's graphclust labels every spot of the filtered matrix)",
        )
    _finish_obs(adata)

    # --- pixel size
    img = _open_image(image, sample_id)
    try:
        pitch_mpp: float | None = estimate_mpp_from_pitch(
            pos["array_row"],
            pos["array_col"],
            pos["pxl_col_in_fullres"],
            pos["pxl_row_in_fullres"],
            "visium",
        )
    except Exception as exc:  # noqa: BLE001 - a missing pitch is just a missing estimate
        log.warning("sample %s: no spot-pitch estimate (%s)", sample_id, exc)
        pitch_mpp = None
    sdf = scalefactors.get("spot_diameter_fullres")
    estimates = {
        "image_tags": None if img is None else img.mpp_tags,
        "sheet": None if mpp is None else float(mpp),
        "microns_per_pixel": scalefactors.get("microns_per_pixel"),
        "pitch": pitch_mpp,
        "spot_diameter_fullres": VISIUM_SCALEFACTOR_SPOT_UM / sdf if sdf else None,
    }
    mpp_value, mpp_source = reconcile_mpp(
        estimates, mpp_tolerance, sample_id, file=image if image else sf_path
    )
    spot_px = VISIUM_SPOT_UM / mpp_value

    if img is None:
        log.warning(
            "sample %s: no full-resolution image given; no bounds check, µm/px %.4f from %s",
            sample_id,
            mpp_value,
            mpp_source,
        )
    elif bounds_check:
        in_t = pos["in_tissue"].to_numpy()
        xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float)
        check_bounds(
            img,
            xy[in_t],
            xy[~in_t],
            spot_px / 2,
            sample_id,
            pos_path,
            pitch_px=VISIUM_PITCH_UM / mpp_value,
        )

    # --- uns
    images: dict[str, np.ndarray] = {}
    for key, name in (("hires", "tissue_hires_image.png"), ("lowres", "tissue_lowres_image.png")):
        f = spatial / name
        if f.is_file():
            images[key] = _load_png_rgb(f, sample_id)
    _check_scalefactors_fit(images, scalefactors, img, pos, spatial, sf_path, sample_id)
    if "lowres" not in images and img is not None:
        thumb, scale = img.thumbnail(_LOWRES_MAX)
        images["lowres"] = np.ascontiguousarray(thumb)
        scalefactors.setdefault("tissue_lowres_scalef", float(scale))
    # scanpy / squidpy draw spots spot_diameter_fullres wide: when the file's value disagrees
    # with the chosen pixel size (reconcile_mpp overruled it), write the 10x definition
    # (65 µm in pixels) there and keep the file's value in uns["stpredict"]
    sdf_ok = VISIUM_SCALEFACTOR_SPOT_UM / mpp_value
    sdf_file: float | None = None
    if sdf and abs(sdf - sdf_ok) / min(sdf, sdf_ok) > mpp_tolerance:
        sdf_file = float(sdf)
        log.warning(
            "sample %s: spot_diameter_fullres %.4g px of '%s' disagrees with the pixel size "
            "%.4g µm/px (from %s), which puts the 65 µm it measures at %.4g px; "
            "uns['spatial']['%s']['scalefactors']['spot_diameter_fullres'] is set to %.4g "
            "(so scanpy / squidpy draw spots at their true size), the file's value is kept in "
            "uns['stpredict']['spot_diameter_fullres_file']",
            sample_id,
            sdf,
            sf_path,
            mpp_value,
            mpp_source,
            sdf_ok,
            sample_id,
            sdf_ok,
        )
    sf_out = {
        "tissue_hires_scalef": float(scalefactors.get("tissue_hires_scalef", 1.0)),
        "tissue_lowres_scalef": float(scalefactors.get("tissue_lowres_scalef", 1.0)),
        "spot_diameter_fullres": float(sdf if sdf and sdf_file is None else sdf_ok),
        "fiducial_diameter_fullres": float(scalefactors.get("fiducial_diameter_fullres", 0.0)),
    }
    for k, v in scalefactors.items():
        sf_out.setdefault(k, float(v))
    meta["source_image_path"] = "" if image is None else str(image)
    adata.uns["spatial"] = {sample_id: {"images": images, "scalefactors": sf_out, "metadata": meta}}
    adata.uns["stpredict"] = _stpredict_uns(
        sample_id,
        patient_id,
        "visium",
        "read_visium",
        outs,
        image,
        img,
        mpp_value,
        mpp_source,
        estimates,
        VISIUM_SPOT_UM,
        VISIUM_PITCH_UM,
    )
    if sdf_file is not None:
        adata.uns["stpredict"]["spot_diameter_fullres_file"] = sdf_file
    adata.uns["positions"] = _positions_uns(
        pos["barcode"],
        pos["in_tissue"],
        pos["array_row"],
        pos["array_col"],
        pos["pxl_col_in_fullres"],
        pos["pxl_row_in_fullres"],
    )
    return adata
