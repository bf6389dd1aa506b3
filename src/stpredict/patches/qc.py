"""Spot quality control: UMI and gene thresholds and the DeepSpaCE whiteness filter.

Nothing is dropped: :func:`apply_qc` adds boolean ``obs`` columns ``pass_umi``, ``pass_genes``,
``pass_white`` and ``keep`` (all three pass) and records the thresholds and the counts in
``uns["qc"]`` (docs/DESIGN.md, "QC"). Later stages select ``adata[adata.obs["keep"]]``.
A spot passes a threshold when its value is at least the threshold (``>=``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from stpredict.errors import ConfigError, InputError
from stpredict.ingest.section import sample_id_of
from stpredict.io import read_json, read_table

__all__ = [
    "QCConfig",
    "QC_PRESETS",
    "qc_flags",
    "apply_qc",
    "qc_summary",
    "qc_table",
    "spot_totals",
    "qc_failed",
]

log = logging.getLogger(__name__)

FLAG_COLUMNS = ["pass_umi", "pass_genes", "pass_white", "keep"]
#: below this share of kept spots, QC warns (every spot removed is an error)
LOW_KEPT_SHARE = 0.2


@dataclass(frozen=True)
class QCConfig:
    """QC thresholds (the workflow builds them from the config's ``qc`` section: no defaults here).

    Parameters
    ----------
    min_umi
        Minimum total UMI count per spot.
    min_genes
        Minimum number of genes with a non-zero count per spot.
    whiteness
        Apply the whiteness flag of the patch table (column ``white``).
    """

    min_umi: float
    min_genes: int
    whiteness: bool

    @classmethod
    def from_config(cls, cfg: QCConfig | Mapping[str, Any] | str | None) -> QCConfig:
        """Build from a preset name, a mapping (optionally ``{"preset": name, ...overrides}``)."""
        if cfg is None:
            return QC_PRESETS["none"]
        if isinstance(cfg, QCConfig):
            return cfg
        if isinstance(cfg, str):
            cfg = {"preset": cfg}
        cfg = dict(cfg)
        preset = cfg.pop("preset", None)
        base = QC_PRESETS["none"]
        if preset is not None:
            if preset not in QC_PRESETS:
                raise ConfigError(
                    f"unknown QC preset '{preset}'", fix=f"use one of {sorted(QC_PRESETS)}"
                )
            base = QC_PRESETS[preset]
        unknown = set(cfg) - set(asdict(base))
        if unknown:
            raise ConfigError(
                f"unknown QC setting(s) {sorted(unknown)}",
                fix=f"use {sorted(asdict(base))} or 'preset'",
            )
        out = replace(base, **cfg)
        if out.min_umi < 0 or out.min_genes < 0:
            raise ConfigError(f"QC thresholds must be >= 0, got {asdict(out)}")
        return out


QC_PRESETS: dict[str, QCConfig] = {
    # DeepSpaCE: spots with fewer than 1,000 UMI or 1,000 detected genes removed, white crops removed
    "deepspace": QCConfig(min_umi=1000, min_genes=1000, whiteness=True),
    # ST-Net: no spot filter
    "stnet": QCConfig(min_umi=0, min_genes=0, whiteness=False),
    "none": QCConfig(min_umi=0, min_genes=0, whiteness=False),
}


def spot_totals(adata: Any) -> tuple[np.ndarray, np.ndarray]:
    """Total UMI and number of detected genes per spot, computed from ``X``."""
    X = adata.X
    X = X.tocsr() if sp.issparse(X) else sp.csr_matrix(np.asarray(X))
    umi = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    genes = np.diff((X > 0).tocsr().indptr).astype(np.int64)
    return umi, genes


def qc_failed(adata: Any) -> np.ndarray:
    """Spots on tissue whose measurement failed QC: ``pass_white`` but not ``keep``.

    They failed the UMI or gene threshold (the demo's permeabilisation-failure region), yet their
    patch shows tissue, so a model can impute them; white patches (glass) are left out. A
    section without QC flags has none.
    """
    obs = adata.obs
    if "keep" not in obs:
        return np.zeros(adata.n_obs, dtype=bool)
    keep = obs["keep"].to_numpy(dtype=bool)
    on_tissue = (
        obs["pass_white"].to_numpy(dtype=bool) if "pass_white" in obs else np.ones_like(keep)
    )
    return on_tissue & ~keep


def qc_flags(
    adata: Any, min_umi: float, min_genes: int, white: np.ndarray | None = None
) -> pd.DataFrame:
    """Per-spot QC flags.

    Parameters
    ----------
    adata
        Section AnnData with raw counts in ``X``.
    min_umi, min_genes
        Thresholds (a spot passes with ``>=``).
    white
        Boolean per spot in ``obs`` order, ``True`` when the patch fails the whiteness filter;
        ``None`` = no whiteness filter.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``obs_names``, columns ``pass_umi, pass_genes, pass_white, keep`` (bool).
    """
    umi, genes = spot_totals(adata)
    if white is None:
        pass_white = np.ones(adata.n_obs, dtype=bool)
    else:
        white = np.asarray(white, dtype=bool)
        if white.shape != (adata.n_obs,):
            raise InputError(f"whiteness flags have shape {white.shape}, expected ({adata.n_obs},)")
        pass_white = ~white
    df = pd.DataFrame(
        {"pass_umi": umi >= min_umi, "pass_genes": genes >= min_genes, "pass_white": pass_white},
        index=adata.obs_names.copy(),
    )
    df["keep"] = df["pass_umi"] & df["pass_genes"] & df["pass_white"]
    return df


def _read_white(adata: Any, patch_tsv: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    table = read_table(patch_tsv, sample=sample_id_of(adata) or None, dtype={"id": str})
    if "id" not in table or "white" not in table:
        raise InputError(
            "patch table lacks the 'id' or 'white' column",
            file=patch_tsv,
            sample=sample_id_of(adata),
            fix="re-run the patch extraction rule",
        )
    flags = table.set_index("id")["white"].astype(bool)
    missing = adata.obs_names.difference(flags.index)
    if len(missing):
        raise InputError(
            f"{len(missing)} spot(s) of the section have no patch (e.g. {list(missing[:3])})",
            file=patch_tsv,
            sample=sample_id_of(adata),
            fix="re-run the patch extraction for this section (its spots changed)",
        )
    meta: dict[str, Any] = {}
    side = Path(patch_tsv).with_suffix(".json")
    if side.is_file():
        meta = read_json(side, sample=sample_id_of(adata) or None).get("whiteness", {})
    return flags.reindex(adata.obs_names).to_numpy(dtype=bool), meta


def apply_qc(
    adata: Any,
    patch_tsv: str | os.PathLike[str] | None,
    cfg: QCConfig | Mapping[str, Any] | str | None,
    section_file: str | os.PathLike[str] | None = None,
) -> Any:
    """Return a copy of ``adata`` with the QC flags in ``obs`` and the record in ``uns["qc"]``.

    Parameters
    ----------
    adata
        Section AnnData (docs/DESIGN.md).
    patch_tsv
        The section's patch table (``id`` = ``obs_names``, ``white``); needed when the
        whiteness filter is on, ignored otherwise.
    cfg
        :class:`QCConfig`, a preset name (``"deepspace"``) or a mapping of its fields
        (optionally with ``preset``).
    section_file
        The file ``adata`` was read from, named in the error below.

    Raises
    ------
    InputError
        When the thresholds remove every spot of the section (nothing would be left to train
        or test on): the message gives how many spots each criterion removes, the section's
        median UMI and genes per spot, and what to change.
    """
    cfg = QCConfig.from_config(cfg)
    white = None
    white_meta: dict[str, Any] = {}
    if cfg.whiteness:
        if patch_tsv is None:
            raise ConfigError(
                "the whiteness filter needs the section's patch table",
                sample=sample_id_of(adata),
                fix="give the patch .tsv or set qc.whiteness: false",
            )
        white, white_meta = _read_white(adata, patch_tsv)
    flags = qc_flags(adata, cfg.min_umi, cfg.min_genes, white)
    out = adata.copy()
    for col in FLAG_COLUMNS:
        out.obs[col] = flags[col].to_numpy()
    removed = {
        "umi": int((~flags["pass_umi"]).sum()),
        "genes": int((~flags["pass_genes"]).sum()),
        "white": int((~flags["pass_white"]).sum()),
    }
    n_kept = int(flags["keep"].sum())
    if adata.n_obs and n_kept == 0:
        raise _all_removed(adata, cfg, removed, white_meta, section_file, patch_tsv)
    out.uns["qc"] = {
        "min_umi": float(cfg.min_umi),
        "min_genes": int(cfg.min_genes),
        "whiteness": bool(cfg.whiteness),
        "whiteness_params": {k: v for k, v in white_meta.items() if v is not None},
        "patch_table": "" if patch_tsv is None else str(patch_tsv),
        "n_spots": int(adata.n_obs),
        "n_kept": n_kept,
        "n_removed": int(adata.n_obs - n_kept),
        "removed": removed,
    }
    log.info(
        "%s: QC keeps %d of %d spots (failing: %s)",
        sample_id_of(adata),
        n_kept,
        adata.n_obs,
        removed,
    )
    if adata.n_obs and n_kept < LOW_KEPT_SHARE * adata.n_obs:
        log.warning(
            "%s: QC keeps only %d of %d spots (%.0f%%; failing: %s): check the thresholds "
            "(qc.min_umi %g, qc.min_genes %d) against the section's depth",
            sample_id_of(adata),
            n_kept,
            adata.n_obs,
            100 * n_kept / adata.n_obs,
            removed,
            cfg.min_umi,
            cfg.min_genes,
        )
    return out


def _all_removed(
    adata: Any,
    cfg: QCConfig,
    removed: Mapping[str, int],
    white_meta: Mapping[str, Any],
    section_file: str | os.PathLike[str] | None,
    patch_tsv: str | os.PathLike[str] | None,
) -> InputError:
    """Build the error for a section whose every spot fails QC (see :func:`apply_qc`)."""
    umi, genes = spot_totals(adata)
    n = int(adata.n_obs)
    parts = [
        f"min_umi {cfg.min_umi:g} removes {removed['umi']}",
        f"min_genes {cfg.min_genes} removes {removed['genes']}",
    ]
    if cfg.whiteness:
        parts.append(f"the whiteness filter removes {removed['white']}")
    fixes = []
    if removed["umi"] == n:
        fixes.append(f"lower qc.min_umi below the median ({np.median(umi):g})")
    if removed["genes"] == n:
        fixes.append(f"lower qc.min_genes below the median ({np.median(genes):g})")
    if cfg.whiteness and removed["white"] == n:
        fixes.append(
            "check the section's image (blank or not the H&E of these spots?) or set "
            "qc.whiteness.enabled: false"
        )
    if not fixes:
        fixes.append("lower qc.min_umi / qc.min_genes or turn the whiteness filter off")
    fixes.append("or leave the section out of the sample sheet")
    return InputError(
        f"QC removes all {n} spots of the section ({'; '.join(parts)} of {n}); its median UMI per "
        f"spot is {np.median(umi):g} and median genes per spot {np.median(genes):g}, so nothing is "
        "left to train or test on",
        file=section_file if section_file is not None else patch_tsv,
        sample=sample_id_of(adata) or None,
        fix="; ".join(fixes[:-1]) + ", " + fixes[-1],
    )


def qc_summary(adata: Any) -> dict[str, Any]:
    """One summary row for a QC'd section (for the cohort QC table).

    Returns
    -------
    dict
        ``sample_id, n_spots, n_kept, removed_umi, removed_genes, removed_white, median_umi,
        median_genes, median_umi_kept, median_genes_kept, mpp, min_umi, min_genes, whiteness``.
        ``removed_*`` count the spots failing each criterion (a spot can fail several).
    """
    if "qc" not in adata.uns:
        raise InputError(
            "section has no QC record",
            sample=sample_id_of(adata),
            fix="run stpredict.patches.qc.apply_qc first",
        )
    qc = adata.uns["qc"]
    umi, genes = spot_totals(adata)
    keep = adata.obs["keep"].to_numpy(dtype=bool)
    meta = adata.uns.get("stpredict", {})
    mpp = meta.get("mpp") if isinstance(meta, Mapping) else None

    def med(v: np.ndarray) -> float:
        return float(np.median(v)) if len(v) else float("nan")

    return {
        "sample_id": sample_id_of(adata),
        "n_spots": int(adata.n_obs),
        "n_kept": int(keep.sum()),
        "removed_umi": int(qc["removed"]["umi"]),
        "removed_genes": int(qc["removed"]["genes"]),
        "removed_white": int(qc["removed"]["white"]),
        "median_umi": med(umi),
        "median_genes": med(genes),
        "median_umi_kept": med(umi[keep]),
        "median_genes_kept": med(genes[keep]),
        "mpp": float(mpp) if mpp is not None else float("nan"),
        "min_umi": float(qc["min_umi"]),
        "min_genes": int(qc["min_genes"]),
        "whiteness": bool(qc["whiteness"]),
    }


def qc_table(adata: Any) -> pd.DataFrame:
    """Per-spot table ``barcode, total_counts, n_genes_by_counts, pass_umi, pass_genes, pass_white, keep``."""
    umi, genes = spot_totals(adata)
    df = pd.DataFrame(
        {"barcode": adata.obs_names.to_numpy(), "total_counts": umi, "n_genes_by_counts": genes}
    )
    for col in FLAG_COLUMNS:
        df[col] = adata.obs[col].to_numpy(dtype=bool)
    return df
