"""Readers of Space Ranger ``outs/`` folders and legacy ST files into one AnnData per section.

Every reader returns the section AnnData of docs/DESIGN.md: raw counts in a float32 CSR ``X``,
``obs`` with array / pixel coordinates, ``obsm["spatial"] = [x, y]`` in full-resolution pixels,
``uns["spatial"][sample_id]`` as scanpy / squidpy expect, ``uns["stpredict"]`` (provenance,
µm/px and its source) and ``uns["positions"]`` (every array position of the coordinate file).
Formats and pitfalls follow FORMATS.md; problems raise :class:`~stpredict.errors.InputError` /
:class:`~stpredict.errors.GeometryError` with one-line messages naming file, sample and fix.

What is checked, beyond parsing (thresholds are module constants, calibrated on the demo cohort
and the real fixtures):

- counts are raw: negative, fractional or non-finite values (normalised data) are refused, and
  so are integer-valued normalised ones (:func:`_check_not_normalised`: every spot totalling the
  same, counts per N; a largest value of at most 12 in a matrix of many detected genes, rounded
  log counts);
- gene names: a ``gene_map`` that maps none of a section's ids is refused, a partial one and
  symbols shared by several ids are reported (:func:`_apply_gene_map`,
  :func:`_unique_gene_names`; ``var["duplicate_symbol"]``);
- annotation labels are normalised to ``tumor`` / ``non`` (:func:`normalise_annotation_label`),
  with a warning for a section none of whose labels is either;
- an empty matrix, a header-only positions / count / spot file, a count file without gene
  columns or with a gene twice, are refused where they are (not later, elsewhere);
- truncated or corrupt files (gzip, HDF5, mtx, images) raise an InputError naming the file;
- Visium: every matrix barcode is in the positions file and marked in_tissue (up to
  :data:`MAX_MATRIX_OFF_TISSUE`; another section's positions file fails here), positions have
  finite pixels, non-negative array coordinates of the hexagonal parity, one barcode per array
  position; the scale factors are a JSON object of positive numbers and fit the hires / lowres
  PNGs; graphclust clusters label every spot and, like annotations, no spot off this section's
  tissue (:data:`MAX_FOREIGN_LABELS`, :data:`MIN_GRAPHCLUST_COVERAGE`);
- legacy ST: count rows have positions and the spots under tissue have count rows
  (:func:`_match_st_counts_spots`), annotations / clusters cover the section
  (:data:`MIN_ST_LABEL_COVERAGE`), no id carries two labels;
- geometry: the pixel size (:func:`~stpredict.geometry.reconcile_mpp`) and the bounds and
  orientation of the spots on the image (:func:`~stpredict.geometry.check_bounds`).

Partial coverage that real files legitimately have (a subset matrix, count rows off the tissue,
a partial annotation) is logged as a warning with numbers.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from stpredict.errors import InputError
from stpredict.geometry import (
    ST_PITCH_UM,
    ST_SPOT_UM,
    VISIUM_PITCH_UM,
    VISIUM_SCALEFACTOR_SPOT_UM,
    VISIUM_SPOT_UM,
    check_bounds,
    estimate_mpp_from_pitch,
    reconcile_mpp,
    st_um_per_unit,
)
from stpredict.images import SlideImage

__all__ = [
    "read_visium",
    "read_st",
    "read_section",
    "read_visium_positions",
    "read_st_counts",
    "read_st_spots",
    "read_st_annotation",
    "repair_barcodes",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]
_SPOT_ID = re.compile(r"^\s*(-?\d+(?:\.\d*)?)\s*x\s*(-?\d+(?:\.\d*)?)\s*$")
_R_BARCODE = re.compile(r"\.(\d+)$")
_LOWRES_MAX = 600
_HIRES_MAX = 2000


# --------------------------------------------------------------------------- small helpers
def _open_text(path: Path) -> Any:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


#: What reading a damaged text / gzip file raises (truncated gzip: EOFError; not gzip:
#: BadGzipFile, an OSError; corrupt deflate data: zlib.error).
_DAMAGED = (OSError, EOFError, zlib.error, UnicodeDecodeError)
_RECOPY_FIX = (
    "copy the file again from its source (Space Ranger outs/, the ST pipeline or the download); "
    "it is truncated or corrupt"
)


_RAW_COUNTS_FIX = (
    "give the raw UMI counts (Space Ranger's filtered_feature_bc_matrix, the ST pipeline's "
    "count table); stpredict normalises them itself, per fold"
)


def _damaged(path: Path, sample: str | None, exc: BaseException, what: str) -> InputError:
    """Build the InputError for a file that cannot be decoded (truncated gzip, bad bytes)."""
    if isinstance(exc, UnicodeDecodeError):
        problem = f"the {what} is not UTF-8 text ({exc})"
        fix = "give the text file as the software wrote it (UTF-8, optionally gzipped)"
    elif isinstance(exc, EOFError) or "end-of-stream" in str(exc):
        problem = f"the {what} is truncated (it ends inside the gzip stream: {exc})"
        fix = _RECOPY_FIX
    else:
        problem = f"cannot read the {what} ({type(exc).__name__}: {exc})"
        fix = (
            "give an uncompressed or gzipped text file (a name ending in .gz must be gzipped); "
            + _RECOPY_FIX
        )
    return InputError(problem, file=path, sample=sample, fix=fix)


def _first_lines(path: Path, n: int = 3, sample: str | None = None, what: str = "file") -> list[str]:
    try:
        with _open_text(path) as fh:
            out = []
            for line in fh:
                if line.strip():
                    out.append(line.rstrip("\r\n"))
                if len(out) >= n:
                    break
            return out
    except _DAMAGED as exc:
        raise _damaged(path, sample, exc, what) from exc


def _read_table(path: Path, sample: str | None, what: str, fix: str, **kw: Any) -> pd.DataFrame:
    """``pandas.read_csv`` with every decoding / parsing failure as a one-line InputError."""
    try:
        return pd.read_csv(path, **kw)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"the {what} holds no data", file=path, sample=sample, fix=fix) from exc
    except (pd.errors.ParserError, ValueError) as exc:
        if isinstance(exc, UnicodeDecodeError):
            raise _damaged(path, sample, exc, what) from exc
        raise InputError(
            f"cannot parse the {what} ({str(exc).strip()[:300]})", file=path, sample=sample, fix=fix
        ) from exc
    except _DAMAGED as exc:
        raise _damaged(path, sample, exc, what) from exc


def _check_raw_counts(
    values: np.ndarray, path: Path, sample: str | None, where: Any = None
) -> None:
    """Refuse negative or fractional values: the readers need raw UMI counts.

    Parameters
    ----------
    values
        The stored (non-zero) values of the matrix.
    where
        Optional callable ``i -> str`` naming the entry ``values[i]`` for the message.
    """
    v = np.asarray(values).ravel()
    if v.size == 0:
        return
    if v.dtype.kind in "iub":  # integer storage: only the sign can be wrong
        if v.dtype.kind == "i" and v.min() < 0:
            neg = v < 0
            i = int(np.flatnonzero(neg)[0])
            at = f" at {where(i)}" if where is not None else ""
            raise InputError(
                f"the count matrix holds negative values ({int(neg.sum())}, e.g. {v[i]}){at}: "
                "these are normalised or transformed values, not raw counts",
                file=path,
                sample=sample,
                fix=_RAW_COUNTS_FIX,
            )
        return
    fin = np.isfinite(v)
    bad_kind = None
    if not fin.all():
        i = int(np.flatnonzero(~fin)[0])
        bad_kind = f"non-finite values ({int((~fin).sum())}, e.g. {v[i]})"
    else:
        neg = v < 0
        frac = np.abs(v - np.rint(v)) > 1e-6
        if neg.any():
            i = int(np.flatnonzero(neg)[0])
            bad_kind = f"negative values ({int(neg.sum())}, e.g. {v[i]:.6g})"
        elif frac.any():
            i = int(np.flatnonzero(frac)[0])
            bad_kind = f"fractional values ({int(frac.sum())}, e.g. {v[i]:.6g})"
    if bad_kind is None:
        return
    at = f" at {where(i)}" if where is not None else ""
    raise InputError(
        f"the count matrix holds {bad_kind}{at}: these are normalised or transformed values, "
        "not raw counts",
        file=path,
        sample=sample,
        fix=_RAW_COUNTS_FIX,
    )


#: Normalised values rounded to integers pass the raw-counts check above; two cheap signs catch
#: them (:func:`_check_not_normalised`), over at least this many spots.
MIN_SPOTS_NORMALISED_CHECK = 50
#: Largest coefficient of variation of the per-spot totals that means "every spot totals the
#: same": counts per N, rounded. Rounding moves the totals off N with depth (a count of 1 in a
#: spot of 30,000 UMIs is 0.33 per 10k and rounds to 0), so round(counts per 10k) varies by
#: CV 0.005-0.016 on the real fixtures and the demo, and 0.02-0.08 on simulated deep Visium
#: spots (18k genes, 2k-60k UMIs); counts per million by < 0.001. Raw counts: demo 0.35-0.76,
#: real fixtures 0.31 (xfuse), 0.48 (Visium), 1.18 (MOB1) -- three times the threshold at least.
MAX_NORMALISED_TOTALS_CV = 0.1
#: A matrix whose largest value is at most this, while more than
#: :data:`LOG_MIN_SPOT_SHARE` of its spots detect :data:`LOG_MIN_GENES` genes or more, holds
#: log-transformed values (round(log1p(counts)) of 1e5 UMIs is 12). Raw counts: the largest
#: value of the demo sections is 528-3966, of the real MOB1 section (62 % of spots >= 100 genes)
#: 399; the real Visium fixture (max 9) has 100 genes, so no spot reaches 100 genes.
LOG_MAX_VALUE = 12.0
LOG_MIN_GENES = 100
LOG_MIN_SPOT_SHARE = 0.3


def _check_not_normalised(x: Any, path: Path, sample: str | None) -> None:
    """Refuse integer-valued normalised matrices: counts per N, or rounded log counts.

    Parameters
    ----------
    x
        Spots x genes matrix (dense or scipy sparse) of non-negative integer values (after
        :func:`_check_raw_counts`).
    path, sample
        For the message.

    Notes
    -----
    (a) every spot's total nearly the same (coefficient of variation below
    :data:`MAX_NORMALISED_TOTALS_CV` over at least :data:`MIN_SPOTS_NORMALISED_CHECK` spots with
    a total above 0): counts per N; (b) the largest value of the matrix at most
    :data:`LOG_MAX_VALUE` while more than :data:`LOG_MIN_SPOT_SHARE` of at least
    :data:`MIN_SPOTS_NORMALISED_CHECK` spots detect :data:`LOG_MIN_GENES` genes or more: log
    values. Raw UMI counts vary in depth from spot to spot by tens of per cent, and a spot that
    detects 100 genes has some gene far above 12 UMIs somewhere in the section.
    """
    if sp.issparse(x):
        m = sp.csr_matrix(x)
        if m.nnz and not (m.data != 0).all():  # explicitly stored zeros are no detected gene
            m = m.copy()
            m.eliminate_zeros()
        totals = np.asarray(m.sum(axis=1), dtype=np.float64).ravel()
        n_genes = np.diff(m.indptr)
        vmax = float(m.data.max()) if m.nnz else 0.0
    else:
        a = np.asarray(x, dtype=np.float64)
        if a.ndim != 2:
            return
        totals = a.sum(axis=1)
        n_genes = (a != 0).sum(axis=1)
        vmax = float(a.max()) if a.size else 0.0
    n_spots = totals.size
    if n_spots < MIN_SPOTS_NORMALISED_CHECK:
        return
    pos = totals[totals > 0]
    if pos.size >= MIN_SPOTS_NORMALISED_CHECK:
        cv = float(pos.std() / pos.mean())
        if cv < MAX_NORMALISED_TOTALS_CV:
            n = float(np.median(pos))
            nice = 10.0 ** round(math.log10(n))
            n_text = f"{nice:,.0f}" if abs(n / nice - 1) < 0.2 else f"{float(f'{n:.3g}'):,.0f}"
            raise InputError(
                f"every spot totals ≈ {n_text} (the per-spot totals vary by {100 * cv:.2g} % "
                f"over {pos.size} spots; raw counts vary by tens of per cent): these look like "
                f"normalised values (counts per {n_text}, rounded to integers), not raw counts",
                file=path,
                sample=sample,
                fix=_RAW_COUNTS_FIX,
            )
    share = float((n_genes >= LOG_MIN_GENES).mean())
    if vmax <= LOG_MAX_VALUE and share > LOG_MIN_SPOT_SHARE:
        raise InputError(
            f"the largest value of the count matrix is {vmax:g}, yet {100 * share:.0f} % of its "
            f"{n_spots} spots detect {LOG_MIN_GENES} genes or more: these look like "
            "log-transformed values (log-transformed? e.g. round(log1p(counts))), not raw counts",
            file=path,
            sample=sample,
            fix=_RAW_COUNTS_FIX,
        )


def _deduplicate_labels(labels: pd.Series, path: Path, sample: str | None, kind: str) -> pd.Series:
    """Drop repeated ids; refuse ids listed twice with different labels."""
    dup = labels.index.duplicated(keep=False)
    if dup.any():
        groups = labels[dup].groupby(level=0).nunique()
        conflict = groups[groups > 1]
        if len(conflict):
            ex = conflict.index[0]
            raise InputError(
                f"{len(conflict)} id(s) of the {kind} table have two different labels (e.g. "
                f"{ex}: {', '.join(sorted(set(labels.loc[[ex]].astype(str))))})",
                file=path,
                sample=sample,
                fix=f"give one row per spot in the {kind} table",
            )
        log.warning(
            "sample %s: %d repeated id(s) in the %s table '%s' (same label) read once",
            sample,
            int(labels.index.duplicated().sum()),
            kind,
            path,
        )
    return labels[~labels.index.duplicated(keep="first")]


def _check_distinct_pixels(
    x: np.ndarray, y: np.ndarray, ids: Sequence[Any], path: Path, sample: str | None
) -> None:
    """Refuse coordinate files where many spots share one pixel position (a broken export)."""
    px = pd.DataFrame({"x": np.round(np.asarray(x, float), 2), "y": np.round(np.asarray(y, float), 2)})
    dup = px.duplicated(keep=False).to_numpy()
    if dup.mean() > 0.01:
        first = int(np.flatnonzero(dup)[0])
        raise InputError(
            f"{int(dup.sum())} of {len(px)} spots share their pixel position with another spot "
            f"(e.g. {list(ids)[first]} at x={px['x'].iloc[first]:g}, y={px['y'].iloc[first]:g}): "
            "the pixel columns are constant, truncated to few values or copied",
            file=path,
            sample=sample,
            fix="give the coordinate file the alignment software wrote (one pixel position per "
            "spot)",
        )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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


def _examples(values: Sequence[Any], k: int = 3) -> str:
    vals = [str(v) for v in list(values)[:k]]
    return ", ".join(vals)


def _spot_ids(values: Sequence[Any], file: Path, sample: str | None) -> list[str]:
    """Normalise ``"{x}x{y}"`` ids (floats rounded) to integer ids."""
    out = []
    for v in values:
        m = _SPOT_ID.match(str(v))
        if m is None:
            raise InputError(
                f"spot id {str(v)!r} is not of the form '{{x}}x{{y}}' (e.g. '10x13')",
                file=file,
                sample=sample,
                fix="give the legacy ST count matrix with spots as rows and the 'XxY' id in the "
                "first column",
            )
        out.append(f"{int(round(float(m.group(1))))}x{int(round(float(m.group(2))))}")
    return out


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


def _label_csv(path: Path, sample: str | None, kind: str) -> pd.Series:
    """Read a two-column ``id,label`` CSV (``barcode,label`` / ``Barcode,Cluster``)."""
    if not path.is_file():
        raise InputError(
            f"{kind} file does not exist",
            file=path,
            sample=sample,
            fix=f"check the sample sheet's '{kind}' column",
        )
    fix = "give a CSV with a header and two columns, e.g. 'barcode,label'"
    df = _read_table(
        path,
        sample,
        f"{kind} table",
        fix,
        sep=None,
        engine="python",
        dtype=str,
        keep_default_na=False,
        compression="infer",
    )
    if df.shape[1] < 2:
        raise InputError(
            f"the {kind} table has {df.shape[1]} column(s); expected 2 (barcode, label)",
            file=path,
            sample=sample,
            fix=fix,
        )
    if len(df) == 0:
        raise InputError(
            f"the {kind} table has a header but no rows", file=path, sample=sample, fix=fix
        )
    return pd.Series(df.iloc[:, 1].astype(str).to_numpy(), index=df.iloc[:, 0].astype(str))


def _map_labels(
    obs_names: pd.Index,
    labels: pd.Series,
    path: Path,
    sample: str | None,
    kind: str,
    *,
    allowed: pd.Index | None = None,
    allowed_what: str = "",
    max_foreign: float | None = None,
    min_coverage: float = 0.0,
    guarantee: str = "",
) -> np.ndarray:
    """Labels of ``obs_names``; refuse a table that belongs to another section.

    Parameters
    ----------
    obs_names
        The section's spots.
    labels
        Label per id (repeated ids are refused when their labels differ).
    allowed
        Ids the table may hold (Visium: the barcodes under tissue in the positions file); a
        share above ``max_foreign`` outside them is refused: the table belongs elsewhere.
    allowed_what
        How to name ``allowed`` in the message.
    min_coverage
        Smallest share of the section's spots that must have a label (``guarantee`` says why).

    Returns
    -------
    numpy.ndarray
        One label per spot, ``""`` where the table has none.
    """
    labels = _deduplicate_labels(labels, path, sample, kind)
    mapped = labels.reindex(obs_names)
    n_obs, n_lab = len(obs_names), len(labels)
    n_cov = int(mapped.notna().sum())
    if n_cov == 0:
        raise InputError(
            f"none of the {n_lab} ids of the {kind} table match the section's {n_obs} spots "
            f"(table: {_examples(labels.index)}; section: {_examples(obs_names)})",
            file=path,
            sample=sample,
            fix=f"check that the {kind} file belongs to this section",
        )
    ref = obs_names if allowed is None else allowed
    foreign = labels.index[~labels.index.isin(ref)]
    share_foreign = len(foreign) / max(n_lab, 1)
    if max_foreign is not None and share_foreign > max_foreign:
        raise InputError(
            f"{len(foreign)} of the {n_lab} ids of the {kind} table ({100 * share_foreign:.1f}%) "
            f"are not {allowed_what or 'spots of this section'} (e.g. {_examples(foreign)}); "
            f"it labels {n_cov} of the section's {n_obs} spots: the table probably belongs to "
            "another section",
            file=path,
            sample=sample,
            fix=f"give the {kind} file of this section (of the same Space Ranger run as its "
            "matrix and positions)",
        )
    coverage = n_cov / max(n_obs, 1)
    if coverage < min_coverage:
        missing = obs_names[mapped.isna().to_numpy()]
        raise InputError(
            f"the {kind} table labels only {n_cov} of the section's {n_obs} spots "
            f"({100 * coverage:.1f}%, e.g. no label for {_examples(missing)}){guarantee}: it "
            "probably belongs to another section or was filtered",
            file=path,
            sample=sample,
            fix=f"give the complete {kind} file of this section",
        )
    if n_cov < n_obs or len(foreign):
        log.warning(
            "sample %s: %s table '%s' labels %d of %d spots (%.1f%%); %d of its %d ids are not "
            "%s",
            sample,
            kind,
            path,
            n_cov,
            n_obs,
            100 * coverage,
            len(foreign),
            n_lab,
            allowed_what or "spots of this section",
        )
    return mapped.fillna("").astype(str).to_numpy()


def _csr_float32(x: Any) -> sp.csr_matrix:
    m = sp.csr_matrix(x, dtype=np.float32)
    m.sort_indices()
    return m


def _finish_obs(adata: ad.AnnData) -> None:
    x = adata.X
    adata.obs["total_counts"] = np.asarray(x.sum(axis=1)).ravel().astype(np.float64)
    adata.obs["n_genes_by_counts"] = np.asarray((x > 0).sum(axis=1)).ravel().astype(np.int64)


def _positions_uns(
    barcode: Sequence[str], in_tissue: Any, rows: Any, cols: Any, x: Any, y: Any
) -> dict[str, np.ndarray]:
    return {
        "barcode": np.asarray([str(b) for b in barcode], dtype=object),
        "in_tissue": np.asarray(in_tissue, dtype=bool),
        "array_row": np.asarray(rows, dtype=np.int64),
        "array_col": np.asarray(cols, dtype=np.int64),
        "x": np.asarray(x, dtype=np.float64),
        "y": np.asarray(y, dtype=np.float64),
    }


def _open_image(image: PathLike | None, sample: str) -> SlideImage | None:
    if image is None or str(image) == "":
        return None
    return SlideImage(image, sample=sample)


def _clean(value: Any) -> Any:
    """Drop ``None`` from nested dicts (h5ad cannot store it)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items() if v is not None}
    return value


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
    if not path.is_file():
        raise InputError("positions file does not exist", file=path, sample=sample, fix=fix)
    lines = _first_lines(path, 2, sample, "positions file")
    if not lines:
        raise InputError("positions file is empty", file=path, sample=sample, fix=fix)
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
        Run :func:`stpredict.geometry.check_bounds` when an image is given.

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
    adata.obs_names = barcodes
    p = pos.set_index("barcode").loc[barcodes]
    _check_matrix_in_tissue(barcodes, p["in_tissue"].to_numpy(bool), pos, matrix_path, pos_path,
                            sample_id)

    # --- var
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
    new = ad.AnnData(
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
    adata = new

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
        Path(clusters)
        if clusters
        else _first_existing(
            [
                outs / "analysis/clustering/graphclust/clusters.csv",
                outs / "analysis/clustering/gene_expression_graphclust/clusters.csv",
            ]
        )
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


def _stpredict_uns(
    sample_id: str,
    patient_id: str,
    platform: str,
    reader: str,
    raw: PathLike,
    image: PathLike | None,
    img: SlideImage | None,
    mpp_value: float,
    mpp_source: str,
    estimates: Mapping[str, float | None],
    spot_um: float,
    pitch_um: float,
) -> dict[str, Any]:
    return {
        "sample_id": str(sample_id),
        "patient_id": str(patient_id),
        "platform": platform,
        "reader": reader,
        "raw": str(raw),
        "image": "" if image is None else str(image),
        "image_shape": np.asarray([0, 0] if img is None else list(img.shape), dtype=np.int64),
        "mpp": float(mpp_value),
        "mpp_source": mpp_source,
        "mpp_estimates": {k: float(v) for k, v in estimates.items() if v is not None},
        "spot_diameter_um": float(spot_um),
        "spot_pitch_um": float(pitch_um),
        "spot_diameter_px": float(spot_um / mpp_value),
        "units": "UMI counts",
        "series": "",
        "order": "",
        "ihc_image": "",
        "ihc_gene": "",
    }


# --------------------------------------------------------------------------- legacy ST
def _sniff_sep(line: str) -> str:
    if "\t" in line:
        return "\t"
    if "," in line:
        return ","
    return r"\s+"


def read_st_counts(path: PathLike, sample: str | None = None) -> pd.DataFrame:
    """Read a legacy ST count matrix (spots x genes TSV, gz or not, rows ``"{x}x{y}"``).

    A genes x spots file (spot ids in the header) is transposed. Float ids are rounded.

    Returns
    -------
    pandas.DataFrame
        Integer-valued counts indexed by the normalised spot id, one column per gene.
    """
    path = Path(path)
    fix = "give the ST count matrix: tab-separated, one row per spot, first column the 'XxY' id"
    if not path.is_file():
        raise InputError("count matrix does not exist", file=path, sample=sample, fix=fix)
    lines = _first_lines(path, 2, sample, "count matrix")
    if not lines:
        raise InputError(
            f"count matrix is empty ({path.stat().st_size} bytes, no text lines)",
            file=path,
            sample=sample,
            fix="copy the count matrix again (the ST pipeline writes one row per spot); " + fix,
        )
    if len(lines) < 2:
        raise InputError(
            "count matrix holds only a header line, no spot rows",
            file=path,
            sample=sample,
            fix=fix,
        )
    sep = _sniff_sep(lines[0])
    header = [h.strip().strip('"') for h in re.split(sep, lines[0].rstrip())]
    df = _read_table(
        path,
        sample,
        "count matrix",
        fix,
        sep=sep,
        index_col=0,
        compression="infer",
        engine="c" if len(sep) == 1 else "python",
    )
    if df.shape[1] == 0:
        raise InputError(
            f"count matrix has {len(df)} row(s) but no gene columns (is it separated by "
            f"{'tabs' if sep == chr(9) else repr(sep)}?)",
            file=path,
            sample=sample,
            fix=fix,
        )
    idx = df.index.astype(str)
    if not all(_SPOT_ID.match(v) for v in idx[:20]):
        cols = [str(c) for c in df.columns]
        if cols and all(_SPOT_ID.match(c) for c in cols[:20]):
            df = df.T
            idx = df.index.astype(str)
            names = [str(c) for c in df.columns]
        else:
            names = []  # not spot rows: _spot_ids below names the offending id
    else:
        names = header[1:] if len(header) == df.shape[1] + 1 else [str(c) for c in df.columns]
    dup_genes = pd.Index(names)[pd.Index(names).duplicated()]
    if len(dup_genes):
        raise InputError(
            f"{len(dup_genes)} gene column(s) appear twice in the count matrix (e.g. "
            f"{_examples(dup_genes)})",
            file=path,
            sample=sample,
            fix="give the count matrix the ST pipeline wrote (one column per gene)",
        )
    df.index = pd.Index(_spot_ids(idx, path, sample))
    df.columns = [str(c) for c in df.columns]
    vals = df.apply(pd.to_numeric, errors="coerce")
    if vals.isna().any().any():
        bad = [c for c in vals.columns if vals[c].isna().any()][:3]
        raise InputError(
            f"count matrix has missing or non-numeric values (columns e.g. {', '.join(bad)})",
            file=path,
            sample=sample,
            fix=fix,
        )
    if vals.index.duplicated().any():
        dup = vals.index[vals.index.duplicated()]
        raise InputError(
            f"{len(dup)} duplicate spot id(s) in the count matrix (e.g. {_examples(dup)})",
            file=path,
            sample=sample,
            fix=fix,
        )
    arr = vals.to_numpy(dtype=np.float64)

    def where(i: int) -> str:
        r, c = np.unravel_index(i, arr.shape)
        return f"spot {vals.index[r]}, gene {vals.columns[c]}"

    _check_raw_counts(arr, path, sample, where)
    _check_not_normalised(arr, path, sample)
    return vals


def read_st_spots(path: PathLike, sample: str | None = None) -> pd.DataFrame:
    """Read any legacy ST spot-coordinate file variant (FORMATS.md §2), sniffing the layout.

    Variants: ``x y pixel_x pixel_y`` (ST-Net ``spots.txt``, tab or comma); ``x y new_x new_y
    pixel_x pixel_y [selected]`` (HER2ST / STUtility tables, xfuse ``spots.tsv``); published
    ST-Net ``spots_*.csv(.gz)``: comma-separated, index ``"{x}x{y}"``, columns ``X, Y``.

    Returns
    -------
    pandas.DataFrame
        Indexed by the spot id ``"{x}x{y}"`` (rounded array coordinates); columns ``x, y``
        (int), ``fit_x, fit_y`` (float array coordinates: ``new_x/new_y`` when present),
        ``pixel_x, pixel_y`` (float), ``selected`` (bool; all True without the column).
    """
    path = Path(path)
    fix = (
        "give an ST spot file with columns 'x y pixel_x pixel_y' (optionally new_x new_y "
        "selected), or the published spots_*.csv with an 'XxY' index and columns X, Y"
    )
    if not path.is_file():
        raise InputError("spot-coordinate file does not exist", file=path, sample=sample, fix=fix)
    lines = _first_lines(path, 2, sample, "spot-coordinate file")
    if not lines:
        raise InputError("spot-coordinate file is empty", file=path, sample=sample, fix=fix)
    if len(lines) < 2:
        raise InputError(
            "spot-coordinate file holds only a header line, no spot rows",
            file=path,
            sample=sample,
            fix=fix,
        )
    sep = _sniff_sep(lines[0])
    df = _read_table(
        path,
        sample,
        "spot-coordinate file",
        fix,
        sep=sep,
        compression="infer",
        engine="c" if len(sep) == 1 else "python",
    )
    cols = {str(c).strip().lower(): c for c in df.columns}
    if {"x", "y", "pixel_x", "pixel_y"} <= set(cols):
        num = pd.DataFrame({k: pd.to_numeric(df[cols[k]], errors="coerce") for k in cols})
        need = ["x", "y", "pixel_x", "pixel_y"] + [
            c for c in ("new_x", "new_y", "selected") if c in cols
        ]
        bad = ~np.isfinite(num[need].to_numpy(dtype=float)).all(axis=1)
        if bad.any():
            raise InputError(
                f"{int(bad.sum())} row(s) of the spot file have missing, non-numeric or "
                "infinite coordinates",
                file=path,
                sample=sample,
                fix=fix,
            )
        x = np.rint(num["x"]).astype(np.int64).to_numpy()
        y = np.rint(num["y"]).astype(np.int64).to_numpy()
        out = pd.DataFrame(
            {
                "x": x,
                "y": y,
                "fit_x": (num["new_x"] if "new_x" in cols else num["x"]).astype(float).to_numpy(),
                "fit_y": (num["new_y"] if "new_y" in cols else num["y"]).astype(float).to_numpy(),
                "pixel_x": num["pixel_x"].astype(float).to_numpy(),
                "pixel_y": num["pixel_y"].astype(float).to_numpy(),
                "selected": (num["selected"] != 0).to_numpy()
                if "selected" in cols
                else np.ones(len(num), dtype=bool),
            },
            index=pd.Index([f"{a}x{b}" for a, b in zip(x, y, strict=True)]),
        )
    else:
        first = df.columns[0]
        ids = df[first].astype(str)
        if "X" in df.columns and "Y" in df.columns and all(_SPOT_ID.match(v) for v in ids[:20]):
            ids_n = _spot_ids(ids, path, sample)
            xy = [tuple(int(t) for t in s.split("x")) for s in ids_n]
            px = pd.to_numeric(df["X"], errors="coerce")
            py = pd.to_numeric(df["Y"], errors="coerce")
            if not (np.isfinite(px.to_numpy(float)).all() and np.isfinite(py.to_numpy(float)).all()):
                raise InputError(
                    "columns X / Y of the spot file have missing, non-numeric or infinite values",
                    file=path,
                    sample=sample,
                    fix=fix,
                )
            out = pd.DataFrame(
                {
                    "x": np.array([a for a, _ in xy], dtype=np.int64),
                    "y": np.array([b for _, b in xy], dtype=np.int64),
                    "fit_x": np.array([a for a, _ in xy], dtype=float),
                    "fit_y": np.array([b for _, b in xy], dtype=float),
                    "pixel_x": px.astype(float).to_numpy(),
                    "pixel_y": py.astype(float).to_numpy(),
                    "selected": np.ones(len(df), dtype=bool),
                },
                index=pd.Index(ids_n),
            )
        else:
            raise InputError(
                f"unrecognised spot-file columns {', '.join(map(str, df.columns))}",
                file=path,
                sample=sample,
                fix=fix,
            )
    _check_distinct_pixels(
        out["pixel_x"].to_numpy(), out["pixel_y"].to_numpy(), out.index, path, sample
    )
    if out.index.duplicated().any():
        dup = out.index[out.index.duplicated()]
        raise InputError(
            f"{len(dup)} duplicate spot position(s) after rounding x/y (e.g. {_examples(dup)})",
            file=path,
            sample=sample,
            fix=fix,
        )
    return out


#: Annotation labels read as ``tumor`` / ``non`` (case-insensitive, surrounding blanks ignored),
#: by the ST and the Visium readers alike; other labels are kept as written.
_TUMOR = {"tumor", "tumour", "cancer", "1", "true", "yes", "t"}
#: coded tokens: mapped only when a whole annotation column is two-valued in one of these codes
#: (a 0/1/2 region coding is not a tumour/normal annotation)
_BINARY_CODES = ({"1", "0"}, {"true", "false"}, {"yes", "no"}, {"t", "f"}, {"t", "n"}, {"y", "n"})
_CODED = {"1", "0", "true", "false", "yes", "no", "t", "f", "n", "y"}
_NON = {
    "non",
    "non-tumor",
    "non_tumor",
    "nontumor",
    "non tumor",
    "non-tumour",
    "non_tumour",
    "nontumour",
    "non tumour",
    "non-cancer",
    "non_cancer",
    "noncancer",
    "non cancer",
    "normal",
    "0",
    "false",
    "no",
    "n",
}


def normalise_annotation_label(label: str, coded: bool = False) -> str:
    """``tumor`` / ``non`` for the synonyms of :data:`_TUMOR` / :data:`_NON`, else the label.

    Case-insensitive (``Tumor``, ``TUMOUR``, ``Normal``, ``non-tumor`` ...); a label outside the
    vocabulary is returned as written (stripped of surrounding blanks). Coded tokens (``1``/``0``,
    ``yes``/``no`` ...) are mapped only with ``coded`` (see :func:`normalise_annotation_labels`).
    """
    text = str(label).strip()
    low = text.lower()
    if low in _CODED and not coded:
        return text
    return "tumor" if low in _TUMOR else "non" if low in _NON else text


def normalise_annotation_labels(labels: Sequence[str]) -> list[str]:
    """Normalise a whole annotation column (:func:`normalise_annotation_label`).

    Coded tokens count as tumour / normal only when the column holds exactly the two values of
    one binary code (``1``/``0``, ``true``/``false``, ``yes``/``no``, ``t``/``f``...): a column
    coding regions ``0, 1, 2`` keeps its labels as written.
    """
    values = {str(v).strip().lower() for v in labels if str(v).strip()}
    coded = any(values == code for code in _BINARY_CODES)
    return [normalise_annotation_label(v, coded=coded) for v in labels]


def _report_annotation_labels(
    labels: np.ndarray, path: Path, sample: str | None, platform: str
) -> None:
    """Say when an annotation's labels are not the ``tumor`` / ``non`` the strata need.

    None of them ``tumor`` / ``non``: a WARNING (the tumour / normal strata and the ``labels``
    baseline will find nothing in this section); some of them: an INFO line listing the others.
    """
    lab = pd.Series(np.asarray(labels, dtype=str))
    lab = lab[lab != ""]
    if lab.empty:
        return
    counts = lab.value_counts()
    known = counts.index.isin(["tumor", "non"])
    others = counts[~known]
    listing = ", ".join(f"{k!r} ({v})" for k, v in others.head(10).items())
    if len(others) > 10:
        listing += f", ... ({len(others)} labels)"
    if not known.any():
        log.warning(
            "sample %s: annotation '%s' (%s): none of its labels is tumor or non (or a synonym: "
            "tumour, cancer, normal, non-tumor, ...); found %s: the tumour / normal strata and "
            "the labels baseline will not use them (relabel the spots tumor / non to use them)",
            sample,
            path,
            platform,
            listing,
        )
    elif len(others):
        log.info(
            "sample %s: annotation '%s': %d spot(s) carry labels other than tumor / non (%s); "
            "the tumour / normal strata and the labels baseline leave them out",
            sample,
            path,
            int(others.sum()),
            listing,
        )


def read_st_annotation(
    path: PathLike, sample: str | None = None, with_coords: bool = False
) -> pd.Series | tuple[pd.Series, pd.DataFrame]:
    """Read an ST-Net ``*_Coords.tsv`` tumour annotation by position.

    Its header is shifted one column left of its data (``xcoord ycoord tumor`` above rows
    ``10x13 10.02 13.04 tumor``); repaired headers (four names) are accepted too. The first
    field of a row is the spot id, the last the label, normalised to ``tumor`` / ``non``.

    Returns
    -------
    pandas.Series
        Labels indexed by the normalised spot id; with ``with_coords`` also a DataFrame of the
        rows' array coordinates ``x``, ``y`` (float; NaN where a row has none), same index.
    """
    path = Path(path)
    fix = "give ST-Net's *_Coords.tsv (rows: spot id, x, y, tumor/non)"
    if not path.is_file():
        raise InputError("annotation file does not exist", file=path, sample=sample, fix=fix)
    try:
        with _open_text(path) as fh:
            rows = [ln.rstrip("\r\n") for ln in fh if ln.strip()]
    except _DAMAGED as exc:
        raise _damaged(path, sample, exc, "annotation file") from exc
    if len(rows) < 2:
        raise InputError(
            "annotation file is empty" if not rows else "annotation file holds only a header "
            "line, no spot rows",
            file=path,
            sample=sample,
            fix=fix,
        )
    sep = "\t" if "\t" in rows[1] else ("," if "," in rows[1] else None)
    ids, labels, xy = [], [], []
    for ln in rows[1:]:
        fields = [f.strip().strip('"') for f in (ln.split(sep) if sep else ln.split())]
        if len(fields) < 2:
            raise InputError(
                f"annotation row {ln!r} has {len(fields)} field(s); expected id, x, y, label",
                file=path,
                sample=sample,
                fix=fix,
            )
        ids.append(fields[0])
        labels.append(fields[-1])
        nums = [float(f) if _is_number(f) else np.nan for f in fields[1:3]] if len(fields) >= 4 else []
        xy.append(nums if len(nums) == 2 else [np.nan, np.nan])
    index = pd.Index(_spot_ids(ids, path, sample))
    s = pd.Series(normalise_annotation_labels(labels), index=index, dtype=str)
    labels_out = _deduplicate_labels(s, path, sample, "annotation")
    if not with_coords:
        return labels_out
    coords = pd.DataFrame(np.asarray(xy, dtype=float).reshape(-1, 2), index=index, columns=["x", "y"])
    return labels_out, coords[~coords.index.duplicated()]


#: array coordinates of an annotation and of the spot file "agree" within this (2-decimal files)
ANNOTATION_COORD_TOLERANCE = 0.011
#: below this share of agreeing shared spots, an annotation is another section's (demo: the same
#: section 100 %, other sections 8-14 %); below MAX, a warning
MIN_ANNOTATION_COORD_AGREEMENT = 0.5
WARN_ANNOTATION_COORD_AGREEMENT = 0.95


def _check_annotation_coords(coords: pd.DataFrame, spt: pd.DataFrame, annotation: Path,
                             spots_p: Path, sample_id: str) -> None:
    """Refuse an ST annotation whose fractional array coordinates are another section's.

    ST-Net's ``*_Coords.tsv`` repeats the spot detector's fractional array coordinates of its
    section (``10x13 10.02 13.04 tumor``); a spot file with fractional coordinates (``spots.txt``,
    ``new_x/new_y`` of selection tables) holds the same numbers for the same section, while
    another section of the same array layout shares most spot ids but not these fractions.
    Skipped when either file has integer coordinates only (nothing to compare).
    """
    common = coords.index.intersection(spt.index)
    if len(common) < 20:
        return
    a = coords.loc[common, ["x", "y"]].to_numpy(dtype=float)
    b = spt.loc[common, ["fit_x", "fit_y"]].to_numpy(dtype=float)
    ok = np.isfinite(a).all(axis=1)
    if ok.sum() < 20:
        return
    a, b = a[ok], b[ok]
    if np.allclose(a, np.rint(a)) or np.allclose(b, np.rint(b)):
        return
    agree = float((np.abs(a - b).max(axis=1) <= ANNOTATION_COORD_TOLERANCE).mean())
    msg = (f"the annotation's array coordinates agree with the spot file's for only "
           f"{100 * agree:.0f}% of the {len(a)} spots both list (the same section's files agree "
           f"on all of them)")
    if agree < MIN_ANNOTATION_COORD_AGREEMENT:
        raise InputError(
            msg + f": it looks like the annotation of another section (spot file '{spots_p}')",
            file=annotation, sample=sample_id,
            fix="give this section's *_Coords.tsv in the sheet's annotation column")
    if agree < WARN_ANNOTATION_COORD_AGREEMENT:
        log.warning("sample '%s': file '%s': %s", sample_id, annotation, msg)


#: Smallest share of count rows with a position in a spot file that lists the whole array
#: (selection tables; STUtility's MOB1: 99.4 %), and in one that lists only the spots under
#: tissue (ST-Net spots.txt; the count matrix may hold off-tissue rows; demo: 76-78 %).
MIN_COUNTS_WITH_POSITION_ARRAY = 0.95
MIN_COUNTS_WITH_POSITION_TISSUE = 0.5
#: Smallest share of the spots the spot file puts under tissue that must have a count row
#: (real fixtures and demo: 100 %; the ST pipeline counts every spot that holds transcripts).
MIN_TISSUE_SPOTS_WITH_COUNTS = 0.9
#: Smallest share of a legacy ST section's spots an annotation / clusters table must label.
MIN_ST_LABEL_COVERAGE = 0.5


def _match_st_counts_spots(
    cnt: pd.DataFrame, spt: pd.DataFrame, counts_p: Path, spots_p: Path, sample_id: str
) -> pd.Index:
    """Spots of the section: count rows selected in the spot file; refuse files of two sections.

    Two checks, with numbers: the count rows that have a position in the spot file (all of them
    when the spot file lists the whole array; at least half when it lists only the spots under
    tissue, since count matrices may hold off-tissue rows), and the spots the spot file puts
    under tissue that have a count row (nearly all: the ST pipeline counts every spot that
    holds transcripts). Partial coverage within those bounds is logged as a warning.
    """
    has_pos = cnt.index.isin(spt.index)
    common = cnt.index[has_pos]
    only_counts = cnt.index[~has_pos]
    whole_array = bool((~spt["selected"]).any())
    need = MIN_COUNTS_WITH_POSITION_ARRAY if whole_array else MIN_COUNTS_WITH_POSITION_TISSUE
    n_cnt = len(cnt)
    if len(common) == 0 or len(common) < need * n_cnt:
        listing = (
            "the spot file lists the whole array, so every count row needs a position"
            if whole_array
            else "at most half may be off-tissue rows the spot file leaves out"
        )
        raise InputError(
            f"only {len(common)} of {n_cnt} count-matrix spots have coordinates in "
            f"'{spots_p}' ({listing}; count ids e.g. {_examples(only_counts)}; spot-file ids e.g. "
            f"{_examples(spt.index)})",
            file=counts_p,
            sample=sample_id,
            fix="use the count matrix and spot file of the same section",
        )
    under = spt.index[spt["selected"].to_numpy()]
    under_counted = under.isin(cnt.index)
    n_under = len(under)
    if n_under == 0:
        raise InputError(
            "the spot file marks no spot as under tissue (selected == 1)",
            file=spots_p,
            sample=sample_id,
            fix="check the 'selected' column of the spot file",
        )
    if under_counted.sum() < MIN_TISSUE_SPOTS_WITH_COUNTS * n_under:
        missing = under[~under_counted]
        raise InputError(
            f"only {int(under_counted.sum())} of the {n_under} spots that '{spots_p}' puts under "
            f"tissue have a row in the count matrix ({len(missing)} missing, e.g. "
            f"{_examples(missing)}): the spot file probably belongs to another section, or the "
            "count matrix was filtered",
            file=spots_p,
            sample=sample_id,
            fix="use the count matrix and spot file of the same section, and the count matrix "
            "as the ST pipeline wrote it (unfiltered)",
        )
    if len(only_counts):
        log.warning(
            "sample %s: %d of %d count rows have no coordinates in '%s' and are dropped "
            "(e.g. %s)",
            sample_id,
            len(only_counts),
            n_cnt,
            spots_p,
            _examples(only_counts),
        )
    if not under_counted.all():
        log.warning(
            "sample %s: %d of the %d spots under tissue in '%s' have no count row (e.g. %s)",
            sample_id,
            int((~under_counted).sum()),
            n_under,
            spots_p,
            _examples(under[~under_counted]),
        )
    keep = common[spt.loc[common, "selected"].to_numpy()]
    if len(keep) == 0:
        raise InputError(
            "no count-matrix spot is selected (selected == 1) in the spot file",
            file=spots_p,
            sample=sample_id,
            fix="check the 'selected' column of the spot file",
        )
    return keep


_ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$", re.IGNORECASE)
_GENE_MAP_FIX = (
    "give a tab-separated gene map with a header and the columns gene_id (the ids of the count "
    "files, e.g. ENSG00000091831) and gene (the symbol, e.g. ESR1), or set reading.gene_map to "
    "an empty string to keep the ids"
)


def _gene_map_columns(gene_map: pd.DataFrame) -> tuple[Any, Any]:
    """Find the id and symbol columns of a gene map: by name, else the first and the last."""
    cols = {str(c).strip().lower(): c for c in gene_map.columns}
    id_col = cols.get("gene_id", cols.get("gene_ids", gene_map.columns[0]))
    sym_col = cols.get(
        "gene",
        cols.get("gene_name", cols.get("symbol", cols.get("gene_symbol", gene_map.columns[-1]))),
    )
    return id_col, sym_col


def _map_gene_ids(
    ids: Sequence[str], gene_map: pd.DataFrame | None
) -> tuple[list[str], np.ndarray]:
    """Symbols of ``ids`` (an id the map lacks is kept) and which ids the map mapped."""
    ids = [str(g) for g in ids]
    if gene_map is None or len(gene_map) == 0 or gene_map.shape[1] < 2:
        return list(ids), np.zeros(len(ids), dtype=bool)
    id_col, sym_col = _gene_map_columns(gene_map)
    m = dict(zip(gene_map[id_col].astype(str), gene_map[sym_col].astype(str), strict=True))
    m_nover = {k.split(".")[0]: v for k, v in m.items()}
    out, mapped = [], np.zeros(len(ids), dtype=bool)
    for i, g in enumerate(ids):
        sym = m.get(g) or m_nover.get(g.split(".")[0])
        ok = bool(sym) and sym != "nan"
        mapped[i] = ok
        out.append(sym if ok else g)
    return out, mapped


def _gene_symbols(ids: Sequence[str], gene_map: pd.DataFrame | None) -> list[str]:
    """Map gene ids to symbols with ``gene_map`` (``gene_id -> gene``); unmapped ids are kept."""
    return _map_gene_ids(ids, gene_map)[0]


def _apply_gene_map(
    ids: Sequence[str], gene_map: pd.DataFrame | None, file: Path, sample: str | None
) -> list[str]:
    """:func:`_gene_symbols`, checked: refuse a map that maps none of the ids, warn on a part.

    ST ``__ambiguous[...]`` columns are not counted (no map maps them). A section whose ids are
    already the map's symbols (a cohort that mixes Ensembl-id and symbol files under one map) is
    kept with an INFO line. The gene map's own path is named when the DataFrame carries it in
    ``gene_map.attrs["path"]``.
    """
    ids = [str(g) for g in ids]
    if gene_map is None or len(gene_map) == 0:
        return ids
    map_path = gene_map.attrs.get("path") if hasattr(gene_map, "attrs") else None
    map_name = f" '{map_path}'" if map_path else ""
    if gene_map.shape[1] < 2:
        raise InputError(
            f"the gene map{map_name} has {gene_map.shape[1]} column(s); it needs two "
            "(gene_id, gene)",
            file=map_path or file,
            sample=sample,
            fix=_GENE_MAP_FIX,
        )
    names, mapped = _map_gene_ids(ids, gene_map)
    id_col, sym_col = _gene_map_columns(gene_map)
    considered = np.array([not g.startswith("__ambiguous") for g in ids], dtype=bool)
    n = int(considered.sum())
    if n == 0:
        return names
    n_mapped = int((mapped & considered).sum())
    symbols = set(gene_map[sym_col].astype(str))
    is_symbol = np.array([g in symbols for g in ids], dtype=bool) & considered & ~mapped
    cons_ids = [g for g, c in zip(ids, considered, strict=True) if c]
    ensembl_like = float(np.mean([bool(_ENSEMBL_ID.match(g)) for g in cons_ids]))
    if n_mapped == 0:
        if is_symbol.sum() >= 0.5 * n and ensembl_like < 0.5:
            log.info(
                "sample %s: the gene ids of '%s' are already symbols of the gene map%s (%d of "
                "%d); kept as they are",
                sample,
                file,
                map_name,
                int(is_symbol.sum()),
                n,
            )
            return names
        swapped = (
            f"; the section's ids are in its '{sym_col}' column, so its columns are swapped"
            if is_symbol.sum() >= 0.5 * n
            else ""
        )
        raise InputError(
            f"the gene map{map_name} maps none of the {n} gene ids of this section (section: "
            f"e.g. {_examples(cons_ids)}; the map's '{id_col}' column: e.g. "
            f"{_examples(gene_map[id_col].astype(str))}){swapped}: are its columns gene_id, "
            "gene?",
            file=file,
            sample=sample,
            fix=_GENE_MAP_FIX,
        )
    other = considered & ~mapped & ~is_symbol
    n_other = int(other.sum())
    if n_other:
        already = (
            f", {int(is_symbol.sum())} are already symbols" if is_symbol.any() else ""
        )
        log.warning(
            "sample %s: the gene map%s maps %d of %d ids of '%s'%s; the other %d keep their ids "
            "(e.g. %s), so the section mixes symbols and ids",
            sample,
            map_name,
            n_mapped,
            n,
            file,
            already,
            n_other,
            _examples([g for g, o in zip(ids, other, strict=True) if o]),
        )
    return names


def _unique_gene_names(
    names: Sequence[str],
    gene_ids: Sequence[str],
    file: Path,
    sample: str | None,
    source: str,
) -> tuple[pd.Index, np.ndarray]:
    """Make gene names unique, saying so; return the names and which were shared.

    The rule is anndata's ``var_names_make_unique``: the first feature (in file order) keeps the
    symbol, the later ones get ``-1``, ``-2``, ... (``ESR1``, ``ESR1-1``); ``var["gene_ids"]``
    keeps their ids. A gene map that gives two ids one symbol is a WARNING (the map merges genes
    the count file keeps apart); a Space Ranger features file with repeated symbols (references
    have a few, e.g. ``TBCE``, ``MATR3``) an INFO line. The returned mask is
    ``var["duplicate_symbol"]``: every feature whose symbol another feature of the section shares.
    """
    idx = pd.Index([str(v) for v in names])
    shared = np.asarray(idx.duplicated(keep=False), dtype=bool)
    if not shared.any():
        return idx, shared
    ids = np.asarray([str(g) for g in gene_ids], dtype=object)
    groups = pd.Series(ids[shared], index=idx[shared]).groupby(level=0, sort=False)
    listing = "; ".join(
        f"{sym}: {', '.join(map(str, grp))}" for sym, grp in list(groups)[:5]
    )
    if groups.ngroups > 5:
        listing += f"; ... ({groups.ngroups} symbols)"
    level = logging.WARNING if source == "gene map" else logging.INFO
    what = (
        "the gene map gives one symbol to several gene ids"
        if source == "gene map"
        else "the features file repeats symbols"
    )
    log.log(
        level,
        "sample %s: '%s': %s (%d symbol(s), %d features: %s); the first in file order keeps "
        "the symbol, the others are named SYMBOL-1, SYMBOL-2, ... (var['gene_ids'] keeps "
        "their ids; var['duplicate_symbol'] marks all of them)",
        sample,
        file,
        what,
        groups.ngroups,
        int(shared.sum()),
        listing,
    )
    tmp = ad.AnnData(var=pd.DataFrame(index=idx))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmp.var_names_make_unique()
    return pd.Index([str(v) for v in tmp.var_names]), shared


def read_st(
    counts: PathLike,
    spots: PathLike,
    sample_id: str,
    patient_id: str,
    image: PathLike,
    annotation: PathLike | None = None,
    clusters: PathLike | None = None,
    mpp: float | None = None,
    mpp_tolerance: float = 0.1,
    bounds_check: bool = True,
    gene_map: pd.DataFrame | None = None,
) -> ad.AnnData:
    """Read a legacy ST section (count matrix + spot file + H&E) into the section AnnData.

    Parameters
    ----------
    counts
        Spots x genes TSV (gz or not), rows ``"{x}x{y}"``.
    spots
        Spot-coordinate file, any variant of :func:`read_st_spots`; with a ``selected`` column
        only selected spots are kept (the others are off-tissue references for the bounds check).
    sample_id, patient_id
        Section and patient ids.
    image
        Full-resolution H&E the pixel coordinates refer to.
    annotation
        ST-Net ``*_Coords.tsv`` (shifted header), labels ``tumor`` / ``non``.
    clusters
        CSV ``Barcode,Cluster`` keyed by spot id.
    mpp
        Known µm/px of ``image``; cross-checked with the image tags and the spot pitch.
    mpp_tolerance
        Largest allowed relative disagreement between µm/px estimates.
    bounds_check
        Run :func:`stpredict.geometry.check_bounds`.
    gene_map
        Optional table ``gene_id -> gene`` mapping Ensembl ids to symbols (unmapped ids kept);
        checked by :func:`_apply_gene_map` (its path, for messages, in ``gene_map.attrs["path"]``).

    Returns
    -------
    anndata.AnnData
        Spots = count rows that have (selected) coordinates; ``array_row = y``,
        ``array_col = x``.
    """
    counts_p, spots_p = Path(counts), Path(spots)
    if image is None or str(image) == "":
        raise InputError(
            "no image given for a legacy ST section",
            sample=sample_id,
            fix="fill the sample sheet's 'image' column with the full-resolution H&E",
        )
    cnt = read_st_counts(counts_p, sample_id)
    spt = read_st_spots(spots_p, sample_id)

    keep = _match_st_counts_spots(cnt, spt, counts_p, spots_p, sample_id)
    c = cnt.loc[keep]
    s = spt.loc[keep]

    gene_ids = [str(g) for g in c.columns]
    ambiguous = np.array([g.startswith("__ambiguous") for g in gene_ids], dtype=bool)
    names = _apply_gene_map(gene_ids, gene_map, counts_p, sample_id)
    names_u, shared = _unique_gene_names(
        names, gene_ids, counts_p, sample_id, "gene map" if gene_map is not None else "counts"
    )
    adata = ad.AnnData(
        X=_csr_float32(c.to_numpy(dtype=np.float32)),
        obs=pd.DataFrame(index=pd.Index(list(keep))),
        var=pd.DataFrame(
            {
                "gene_ids": np.asarray(gene_ids, dtype=str),
                "feature_types": np.full(len(gene_ids), "Gene Expression"),
                "ambiguous": ambiguous,
                "duplicate_symbol": shared,
            },
            index=names_u,
        ),
    )
    obs = adata.obs
    obs["sample_id"] = str(sample_id)
    obs["patient_id"] = str(patient_id)
    obs["in_tissue"] = True
    obs["array_row"] = s["y"].to_numpy(dtype=np.int64)
    obs["array_col"] = s["x"].to_numpy(dtype=np.int64)
    obs["pxl_row_in_fullres"] = s["pixel_y"].to_numpy(dtype=np.float64)
    obs["pxl_col_in_fullres"] = s["pixel_x"].to_numpy(dtype=np.float64)
    obs["annotation"] = ""
    obs["cluster"] = ""
    adata.obsm["spatial"] = s[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    in_file = f"positions of the spot file '{spots_p}'"
    if annotation:
        labels, ann_xy = read_st_annotation(annotation, sample_id, with_coords=True)
        _check_annotation_coords(ann_xy, spt, Path(annotation), spots_p, sample_id)
        obs["annotation"] = _map_labels(
            obs.index,
            labels,
            Path(annotation),
            sample_id,
            "annotation",
            allowed=spt.index,
            allowed_what=in_file,
            min_coverage=MIN_ST_LABEL_COVERAGE,
            guarantee=" (an annotation labels the spots under tissue; ST-Net drops the few "
            "it misses)",
        )
        _report_annotation_labels(
            obs["annotation"].to_numpy(), Path(annotation), sample_id, "legacy ST"
        )
    if clusters:
        labels = _label_csv(Path(clusters), sample_id, "clusters")
        labels.index = pd.Index(_spot_ids(labels.index, Path(clusters), sample_id))
        obs["cluster"] = _map_labels(
            obs.index,
            labels,
            Path(clusters),
            sample_id,
            "clusters",
            allowed=spt.index,
            allowed_what=in_file,
            min_coverage=MIN_ST_LABEL_COVERAGE,
            guarantee=" (a clustering labels every spot)",
        )
    _finish_obs(adata)

    # --- pixel size (fit on every position of the spot file, off-tissue ones too)
    img = SlideImage(image, sample=sample_id)
    try:
        pitch_mpp: float | None = estimate_mpp_from_pitch(
            spt["fit_y"], spt["fit_x"], spt["pixel_x"], spt["pixel_y"], "st"
        )
    except Exception as exc:  # noqa: BLE001
        log.warning("sample %s: no spot-pitch estimate (%s)", sample_id, exc)
        pitch_mpp = None
    estimates = {
        "image_tags": img.mpp_tags,
        "sheet": None if mpp is None else float(mpp),
        "pitch": pitch_mpp,
    }
    mpp_value, mpp_source = reconcile_mpp(estimates, mpp_tolerance, sample_id, file=image)
    spot_px = ST_SPOT_UM / mpp_value
    unit_um = st_um_per_unit(spt["x"], spt["y"])
    if bounds_check:
        sel = spt["selected"].to_numpy()
        xy = spt[["pixel_x", "pixel_y"]].to_numpy(dtype=float)
        in_mask = spt.index.isin(keep)
        off = xy[~sel] if (~sel).any() else None
        check_bounds(
            img,
            xy[in_mask],
            off,
            spot_px / 2,
            sample_id,
            spots_p,
            pitch_px=unit_um / mpp_value,
        )

    thumb, lscale = img.thumbnail(_LOWRES_MAX)
    images = {"lowres": np.ascontiguousarray(thumb)}
    hscale = lscale
    if max(img.shape) > _LOWRES_MAX:
        hires, hscale = img.thumbnail(_HIRES_MAX)
        images["hires"] = np.ascontiguousarray(hires)
    adata.uns["spatial"] = {
        sample_id: {
            "images": images,
            "scalefactors": {
                "tissue_hires_scalef": float(hscale),
                "tissue_lowres_scalef": float(lscale),
                "spot_diameter_fullres": float(spot_px),
                "fiducial_diameter_fullres": float(spot_px),
            },
            "metadata": {"source_image_path": str(image), "platform": "legacy ST"},
        }
    }
    adata.uns["stpredict"] = _stpredict_uns(
        sample_id,
        patient_id,
        "st",
        "read_st",
        counts_p,
        image,
        img,
        mpp_value,
        mpp_source,
        estimates,
        ST_SPOT_UM,
        ST_PITCH_UM,
    )
    adata.uns["stpredict"]["spots"] = str(spots_p)
    adata.uns["stpredict"]["array_unit_um"] = float(unit_um)
    adata.uns["positions"] = _positions_uns(
        list(spt.index), spt["selected"], spt["y"], spt["x"], spt["pixel_x"], spt["pixel_y"]
    )
    return adata


# --------------------------------------------------------------------------- dispatch
def _field(row: Mapping[str, Any], key: str) -> str:
    v = row.get(key, "")
    if v is None:
        return ""
    if isinstance(v, float) and math.isnan(v):
        return ""
    return str(v).strip()


def read_section(
    row: Mapping[str, Any],
    mpp_tolerance: float = 0.1,
    bounds_check: bool = True,
    gene_map: pd.DataFrame | None = None,
) -> ad.AnnData:
    """Read one sample-sheet row (docs/DESIGN.md columns) into the section AnnData.

    Empty strings, ``None`` and NaN mean "absent". Dispatches on ``row["platform"]``
    (``visium`` / ``st``) and fills ``uns["stpredict"]`` with ``series``, ``order``,
    ``ihc_image`` and ``ihc_gene`` from the row.
    """
    sample = _field(row, "sample_id")
    patient = _field(row, "patient_id")
    platform = _field(row, "platform").lower()
    raw = _field(row, "raw")
    mpp_text = _field(row, "mpp")
    try:
        mpp = float(mpp_text) if mpp_text else None
    except ValueError as exc:
        raise InputError(
            f"mpp {mpp_text!r} is not a number",
            sample=sample,
            fix="give the image's µm per pixel in the sample sheet's mpp column, or leave it empty",
        ) from exc
    opt = {k: (_field(row, k) or None) for k in ("image", "annotation", "clusters")}
    if not raw:
        raise InputError(
            "the sample sheet's 'raw' column is empty",
            sample=sample,
            fix="give the Space Ranger outs/ folder (Visium) or the count matrix (ST)",
        )
    if platform == "visium":
        adata = read_visium(
            raw,
            sample,
            patient,
            image=opt["image"],
            annotation=opt["annotation"],
            clusters=opt["clusters"],
            mpp=mpp,
            mpp_tolerance=mpp_tolerance,
            bounds_check=bounds_check,
        )
    elif platform == "st":
        spots = _field(row, "spots")
        if not spots:
            raise InputError(
                "the sample sheet's 'spots' column is empty for a legacy ST section",
                sample=sample,
                fix="give the ST spot-coordinate file",
            )
        adata = read_st(
            raw,
            spots,
            sample,
            patient,
            image=opt["image"] or "",
            annotation=opt["annotation"],
            clusters=opt["clusters"],
            mpp=mpp,
            mpp_tolerance=mpp_tolerance,
            bounds_check=bounds_check,
            gene_map=gene_map,
        )
    else:
        raise InputError(
            f"unknown platform {platform!r}",
            sample=sample,
            fix="set the sample sheet's platform column to 'visium' or 'st'",
        )
    info = adata.uns["stpredict"]
    info["series"] = _field(row, "series")
    order = _field(row, "order")
    try:
        info["order"] = int(float(order)) if order else ""
    except ValueError:
        info["order"] = order
    info["ihc_image"] = _field(row, "ihc_image")
    info["ihc_gene"] = _field(row, "ihc_gene")
    adata.uns["stpredict"] = _clean(info)
    return adata
