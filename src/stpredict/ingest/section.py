"""The section AnnData of docs/DESIGN.md: the helpers both readers build it with, and its entry points.

:func:`read_section` reads one sample-sheet row (dispatching to
:func:`stpredict.ingest.visium.read_visium` or :func:`stpredict.ingest.st.read_st`);
:func:`read_section_light` / :func:`load_sections` read a written section (or QC) file without
its images, as training, prediction and the figures need it. The private helpers fill the parts
of the contract both platforms share: the float32 CSR ``X``, ``obs`` totals,
``uns["positions"]`` and ``uns["stpredict"]``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from stpredict.errors import InputError
from stpredict.ingest.files import PathLike
from stpredict.ingest.images import SlideImage
from stpredict.io import checked_read
from stpredict.vocab import COUNT_UNITS, UNITS_KEY

__all__ = [
    "read_section",
    "read_section_light",
    "read_var",
    "load_sections",
    "sample_id_of",
]

#: largest side of the lowres / hires copies of the H&E kept in ``uns["spatial"]``
_LOWRES_MAX = 600
_HIRES_MAX = 2000


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
        UNITS_KEY: COUNT_UNITS,
        "series": "",
        "order": "",
        "ihc_image": "",
        "ihc_gene": "",
    }


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
    # the readers build on this module's helpers, so they are imported when needed
    from stpredict.ingest.st import read_st
    from stpredict.ingest.visium import read_visium

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


def read_section_light(path: str | os.PathLike[str]) -> ad.AnnData:
    """Read a section AnnData without its images: ``X``, ``obs``, ``var``, ``obsm`` and ``uns["stpredict"]``.

    The H&E copies in ``uns["spatial"]`` make up most of a section file; training and prediction
    never need them, so they are not decoded.
    """
    import h5py
    from anndata.io import read_elem

    with checked_read(path) as p, h5py.File(p, "r") as f:
        a = ad.AnnData(
            X=read_elem(f["X"]),
            obs=read_elem(f["obs"]),
            var=read_elem(f["var"]),
            obsm=read_elem(f["obsm"]) if "obsm" in f else None,
        )
        uns = f.get("uns")
        if uns is not None:
            for key in ("stpredict", "qc"):
                if key in uns:
                    a.uns[key] = read_elem(uns[key])
    return a


def read_var(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read only the ``var`` of a written section (or QC) file (gene names and ``gene_ids``)."""
    import h5py
    from anndata.io import read_elem

    with checked_read(path) as p, h5py.File(p, "r") as f:
        return read_elem(f["var"])


def load_sections(paths: Mapping[str, str]) -> dict[str, ad.AnnData]:
    """Read QC'd section AnnData files (without images) keyed by sample id."""
    return {s: read_section_light(p) for s, p in paths.items()}


def sample_id_of(adata: Any) -> str:
    """Sample id of a section, QC or prediction AnnData (``uns["stpredict"]``, else ``obs``); ``""`` if none."""
    meta = adata.uns.get("stpredict", {})
    if isinstance(meta, Mapping) and meta.get("sample_id"):
        return str(meta["sample_id"])
    if "sample_id" in adata.obs and adata.n_obs:
        return str(adata.obs["sample_id"].iloc[0])
    return ""
