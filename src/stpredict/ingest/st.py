"""Reader of legacy Spatial Transcriptomics sections: count matrix, spot file, annotation.

:func:`read_st` returns the section AnnData of docs/DESIGN.md (built with the helpers of
:mod:`stpredict.ingest.section`). Formats and pitfalls follow FORMATS.md; problems raise
:class:`~stpredict.errors.InputError` / :class:`~stpredict.errors.GeometryError` with one-line
messages naming file, sample and fix. The checks shared with the Visium reader (raw counts,
damaged files, label tables) are in :mod:`stpredict.ingest.files`. Beyond them:

- count rows have positions and the spots under tissue have count rows
  (:func:`_match_st_counts_spots`), annotations / clusters cover the section
  (:data:`MIN_ST_LABEL_COVERAGE`) and agree with the spot file's array coordinates
  (:func:`_check_annotation_coords`), no id carries two labels;
- a header-only count / spot file, a count file without gene columns or with a gene twice are
  refused where they are;
- gene names: a ``gene_map`` that maps none of a section's ids is refused, a partial one and
  symbols shared by several ids are reported (:func:`_apply_gene_map`);
- geometry: the pixel size (:func:`~stpredict.ingest.geometry.reconcile_mpp`, from the spot pitch
  in array units) and the bounds and orientation of the spots on the image
  (:func:`~stpredict.ingest.geometry.check_bounds`).

Partial coverage that real files legitimately have (count rows off the tissue, a partial
annotation) is logged as a warning with numbers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from stpredict.errors import InputError
from stpredict.ingest.files import (
    _DAMAGED,
    PathLike,
    _check_distinct_pixels,
    _check_not_normalised,
    _check_raw_counts,
    _damaged,
    _deduplicate_labels,
    _examples,
    _head_lines,
    _is_number,
    _label_csv,
    _map_labels,
    _open_text,
    _read_table,
    _report_annotation_labels,
    _unique_gene_names,
)
from stpredict.ingest.geometry import (
    ST_PITCH_UM,
    ST_SPOT_UM,
    check_bounds,
    estimate_mpp_from_pitch,
    reconcile_mpp,
    st_um_per_unit,
)
from stpredict.ingest.images import SlideImage
from stpredict.ingest.section import (
    _HIRES_MAX,
    _LOWRES_MAX,
    _csr_float32,
    _finish_obs,
    _positions_uns,
    _stpredict_uns,
)
from stpredict.vocab import normalise_annotation_labels

log = logging.getLogger(__name__)

__all__ = [
    "read_st",
    "read_st_counts",
    "read_st_spots",
    "read_st_annotation",
]


_SPOT_ID = re.compile(r"^\s*(-?\d+(?:\.\d*)?)\s*x\s*(-?\d+(?:\.\d*)?)\s*$")


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
    lines = _head_lines(
        path,
        sample,
        "count matrix",
        fix,
        empty_fix="copy the count matrix again (the ST pipeline writes one row per spot); " + fix,
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
    lines = _head_lines(path, sample, "spot-coordinate file", fix)
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
            if not (
                np.isfinite(px.to_numpy(float)).all() and np.isfinite(py.to_numpy(float)).all()
            ):
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
            "annotation file is empty"
            if not rows
            else "annotation file holds only a header line, no spot rows",
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
        nums = (
            [float(f) if _is_number(f) else np.nan for f in fields[1:3]] if len(fields) >= 4 else []
        )
        xy.append(nums if len(nums) == 2 else [np.nan, np.nan])
    index = pd.Index(_spot_ids(ids, path, sample))
    s = pd.Series(normalise_annotation_labels(labels), index=index, dtype=str)
    labels_out = _deduplicate_labels(s, path, sample, "annotation")
    if not with_coords:
        return labels_out
    coords = pd.DataFrame(
        np.asarray(xy, dtype=float).reshape(-1, 2), index=index, columns=["x", "y"]
    )
    return labels_out, coords[~coords.index.duplicated()]


#: array coordinates of an annotation and of the spot file "agree" within this (2-decimal files)
ANNOTATION_COORD_TOLERANCE = 0.011
#: below this share of agreeing shared spots, an annotation is another section's (demo: the same
#: section 100 %, other sections 8-14 %); below MAX, a warning
MIN_ANNOTATION_COORD_AGREEMENT = 0.5
WARN_ANNOTATION_COORD_AGREEMENT = 0.95


def _check_annotation_coords(
    coords: pd.DataFrame, spt: pd.DataFrame, annotation: Path, spots_p: Path, sample_id: str
) -> None:
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
    msg = (
        f"the annotation's array coordinates agree with the spot file's for only "
        f"{100 * agree:.0f}% of the {len(a)} spots both list (the same section's files agree "
        f"on all of them)"
    )
    if agree < MIN_ANNOTATION_COORD_AGREEMENT:
        raise InputError(
            msg + f": it looks like the annotation of another section (spot file '{spots_p}')",
            file=annotation,
            sample=sample_id,
            fix="give this section's *_Coords.tsv in the sheet's annotation column",
        )
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
            "sample %s: %d of %d count rows have no coordinates in '%s' and are dropped (e.g. %s)",
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
        already = f", {int(is_symbol.sum())} are already symbols" if is_symbol.any() else ""
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
        Run :func:`stpredict.ingest.geometry.check_bounds`.
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
