"""Raw-file helpers shared by the Visium and the legacy ST readers, and the checks they share.

Text and gzip decoding, tables and two-column label tables (annotation, clusters) with every
failure as a one-line :class:`~stpredict.errors.InputError` naming file, sample and fix, and the
checks both readers run (thresholds are module constants, calibrated on the demo cohort and the
real fixtures):

- counts are raw: negative, fractional or non-finite values (normalised data) are refused, and
  so are integer-valued normalised ones (:func:`_check_not_normalised`: every spot totalling the
  same, counts per N; a largest value of at most 12 in a matrix of many detected genes, rounded
  log counts);
- truncated or corrupt files (gzip, text) raise an InputError naming the file
  (:func:`_damaged`);
- label tables belong to the section (:func:`_map_labels`), repeated ids agree
  (:func:`_deduplicate_labels`), annotation labels that are not ``tumor`` / ``non`` are
  reported (:func:`_report_annotation_labels`; the vocabulary is :mod:`stpredict.vocab`);
- gene names are unique (:func:`_unique_gene_names`; ``var["duplicate_symbol"]``); spots do not
  share a pixel position (:func:`_check_distinct_pixels`).
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from stpredict.errors import InputError
from stpredict.vocab import ANNOTATION_LABELS

__all__ = ["PathLike"]  # the helpers are private to the readers

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


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


def _first_lines(
    path: Path, n: int = 3, sample: str | None = None, what: str = "file"
) -> list[str]:
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


def _head_lines(
    path: Path,
    sample: str | None,
    what: str,
    fix: str,
    *,
    need_rows: bool = True,
    empty_fix: str | None = None,
) -> list[str]:
    """Return the first two non-blank lines of a raw text file, refusing a missing or empty one.

    With ``need_rows`` a file of one line (a header without spot rows) is refused too.
    """
    if not path.is_file():
        raise InputError(f"{what} does not exist", file=path, sample=sample, fix=fix)
    lines = _first_lines(path, 2, sample, what)
    if not lines:
        raise InputError(
            f"{what} is empty ({path.stat().st_size} bytes, no text lines)",
            file=path,
            sample=sample,
            fix=empty_fix or fix,
        )
    if need_rows and len(lines) < 2:
        raise InputError(
            f"{what} holds only a header line, no spot rows", file=path, sample=sample, fix=fix
        )
    return lines


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
    fin = np.isfinite(v)
    bad_kind = None
    if v.dtype.kind in "iub":  # integer storage: only the sign can be wrong
        if v.dtype.kind != "i" or v.min() >= 0:
            return
        neg = v < 0
        i = int(np.flatnonzero(neg)[0])
        bad_kind = f"negative values ({int(neg.sum())}, e.g. {v[i]})"
    elif not fin.all():
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
    px = pd.DataFrame(
        {"x": np.round(np.asarray(x, float), 2), "y": np.round(np.asarray(y, float), 2)}
    )
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


def _examples(values: Sequence[Any], k: int = 3) -> str:
    vals = [str(v) for v in list(values)[:k]]
    return ", ".join(vals)


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
            "sample %s: %s table '%s' labels %d of %d spots (%.1f%%); %d of its %d ids are not %s",
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
    known = counts.index.isin(ANNOTATION_LABELS)
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
    listing = "; ".join(f"{sym}: {', '.join(map(str, grp))}" for sym, grp in list(groups)[:5])
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
