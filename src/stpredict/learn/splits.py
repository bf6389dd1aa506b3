"""Cross-validation: the fold ids of an experiment, its split manifests and their leakage audits.

Fold ids are known at parse time, from the config and the sheet alone (:func:`outer_folds`,
:func:`inner_folds`, :func:`fold_ids`, :func:`fold_test_samples`), so Snakemake knows every
``train_fold`` / ``predict_fold`` job up front; the manifest built from the sections
(:func:`stpredict.learn.folds.build_manifest`) must produce exactly these folds.
Leave-one-patient-out: outer fold ``k`` holds out the k-th patient in sorted order; inner folds
are ``k.i``.

A *manifest* is a :class:`pandas.DataFrame` with one row per (fold, spot)::

    sample_id, spot_id, patient_id, fold, role, scheme, outer_fold, inner_fold

``fold`` is a string (``"3"`` for an outer fold, ``"3.1"`` for inner fold 1 of outer fold 3),
``role`` is one of ``train``, ``val``, ``test`` (and ``unlabelled``: training-side spots whose
measurements are not used, ``split.labelled_frac``), ``scheme`` names the split design
(``patient``, ``random``, ``spatial_blocks``, ``section_imputation``), ``outer_fold`` is the
integer outer fold and ``inner_fold`` is ``-1`` on outer-fold rows. Every function is
deterministic given its ``seed``: the same input rows (in any order) give the same manifest.

The audits (:func:`audit`, :func:`audit_fitted`) raise :class:`LeakageError` when held-out data
can reach training.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from stpredict.errors import ConfigError, InputError, LeakageError
from stpredict.learn.experiments import _patients, experiment_samples, series_sections

__all__ = [
    "MANIFEST_COLUMNS",
    "ROLES",
    "leave_one_patient_out",
    "random_within_section",
    "spatial_blocks_within_section",
    "section_imputation",
    "leave_one_section_out",
    "fold_rows",
    "audit",
    "audit_fitted",
    "outer_folds",
    "inner_folds",
    "fold_ids",
    "fold_test_samples",
]

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "sample_id",
    "spot_id",
    "patient_id",
    "fold",
    "role",
    "scheme",
    "outer_fold",
    "inner_fold",
]
#: ``unlabelled``: a training-side spot whose measurement is not used (``split.labelled_frac``;
#: :func:`stpredict.learn.pool.mask_labels`); its image may be pseudo-labelled
ROLES = ("train", "val", "test", "unlabelled")
_PATIENT_SCHEMES = {"patient"}
_IMPUTATION_SCHEMES = {"section_imputation"}


# --------------------------------------------------------------------------------------------
# helpers


def _spots(spots_df: pd.DataFrame) -> pd.DataFrame:
    """Check the spot table and return a canonical, sorted copy with string ids."""
    need = {"sample_id", "spot_id", "patient_id"}
    missing = sorted(need - set(spots_df.columns))
    if missing:
        raise InputError(
            f"spot table lacks column(s) {missing}",
            fix="pass one row per spot with columns sample_id, spot_id, patient_id",
        )
    df = spots_df[["sample_id", "spot_id", "patient_id"]].astype(str).copy()
    df["_pos"] = np.arange(len(df))
    dup = df.duplicated(["sample_id", "spot_id"])
    if dup.any():
        first = df.loc[dup].iloc[0]
        raise LeakageError(
            f"{int(dup.sum())} spot(s) occur more than once in the spot table "
            f"(first: sample '{first.sample_id}', spot '{first.spot_id}')",
            fix="deduplicate the spot table before splitting",
        )
    return df.sort_values(["sample_id", "spot_id"], kind="mergesort").reset_index(drop=True)


def _frame(
    df: pd.DataFrame, role: np.ndarray, fold: str, scheme: str, outer: int, inner: int = -1
) -> pd.DataFrame:
    out = df[["sample_id", "spot_id", "patient_id"]].copy()
    out["fold"] = fold
    out["role"] = role
    out["scheme"] = scheme
    out["outer_fold"] = outer
    out["inner_fold"] = inner
    return out


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in MANIFEST_COLUMNS})
    out = pd.concat(frames, ignore_index=True)
    out = out[out["role"].isin(ROLES)].reset_index(drop=True)
    out["outer_fold"] = out["outer_fold"].astype(int)
    out["inner_fold"] = out["inner_fold"].astype(int)
    return out[MANIFEST_COLUMNS]


def _chunks(items: Sequence[Any], k: int, rng: np.random.Generator) -> list[list[Any]]:
    """Shuffle ``items`` and deal them into ``k`` near-equal groups."""
    order = rng.permutation(len(items))
    return [[items[j] for j in order[i::k]] for i in range(k)]


def fold_rows(manifest: pd.DataFrame, fold: str | int, role: str) -> pd.DataFrame:
    """Rows of ``manifest`` for one fold and role (``train``, ``val`` or ``test``)."""
    m = manifest[(manifest["fold"].astype(str) == str(fold)) & (manifest["role"] == role)]
    return m.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# split designs


def leave_one_patient_out(
    spots_df: pd.DataFrame, inner_folds: int = 4, seed: int = 0, inner_assignment: str = "stride"
) -> pd.DataFrame:
    """Leave-one-patient-out outer folds with an inner K-fold over the training patients.

    Outer fold ``k`` (``fold == "k"``) holds out the ``k``-th patient (sorted ids) as ``test``;
    all other patients are ``train``: this is the final retrain on all training patients (ST-Net
    then trains for the epoch count chosen on the inner folds). Inner fold ``k.i`` keeps the same
    test patient and splits the training patients into ``inner_folds`` groups of whole patients;
    group ``i`` is ``val`` and the rest ``train``.

    Parameters
    ----------
    spots_df
        One row per spot with ``sample_id``, ``spot_id``, ``patient_id``.
    inner_folds
        Number of inner folds over patients (capped at the number of training patients;
        ``0`` or ``1`` gives no inner folds).
    seed
        Seed of the assignment of training patients to inner folds (``inner_assignment="random"``).
    inner_assignment
        ``"stride"`` (ST-Net's ``cross_validate.py``): with the training patients in sorted
        order, inner fold ``i`` validates ``patients[i::inner_folds]``; ``"random"``: patients
        are shuffled (``seed``) and dealt into the folds.

    Returns
    -------
    pandas.DataFrame
        The manifest (see the module docstring), ``scheme == "patient"``.
    """
    if inner_assignment not in ("stride", "random"):
        raise ConfigError(
            f"unknown inner_assignment '{inner_assignment}'",
            fix="use 'stride' (ST-Net) or 'random'",
        )
    df = _spots(spots_df)
    patients = sorted(df["patient_id"].unique())
    if len(patients) < 2:
        raise ConfigError(
            f"leave-one-patient-out needs at least 2 patients, found {len(patients)}",
            fix="add patients or use a within-section split",
        )
    frames = []
    for k, held in enumerate(patients):
        is_test = (df["patient_id"] == held).to_numpy()
        role = np.where(is_test, "test", "train")
        frames.append(_frame(df, role, str(k), "patient", k))
        rest = [p for p in patients if p != held]
        n_inner = min(int(inner_folds), len(rest))
        if n_inner < 2:
            continue
        if inner_assignment == "stride":
            groups = [rest[i::n_inner] for i in range(n_inner)]
        else:
            groups = _chunks(rest, n_inner, np.random.default_rng([int(seed), k]))
        for i, group in enumerate(groups):
            is_val = df["patient_id"].isin(group).to_numpy()
            r = np.where(is_test, "test", np.where(is_val, "val", "train"))
            frames.append(_frame(df, r, f"{k}.{i}", "patient", k, i))
    man = _concat(frames)
    log.info(
        "leave-one-patient-out: %d patients, %d outer folds, %d manifests",
        len(patients),
        len(patients),
        man["fold"].nunique(),
    )
    return man


def random_within_section(
    spots_df: pd.DataFrame, n_folds: int = 5, val_frac: float = 0.2, seed: int = 0
) -> pd.DataFrame:
    """Random spot-level K-fold inside every section (DeepSpaCE's 64/16/20 design).

    Within each section the spots are shuffled and dealt into ``n_folds`` groups; in fold ``k``
    group ``k`` is ``test`` and ``val_frac`` of the remaining spots (drawn at random) are
    ``val``. With the defaults this gives 64 % train, 16 % validation, 20 % test.

    Parameters
    ----------
    spots_df
        One row per spot with ``sample_id``, ``spot_id``, ``patient_id``.
    n_folds
        Number of folds (at least 2).
    val_frac
        Share of the non-test spots used for validation.
    seed
        Seed of the shuffles.

    Returns
    -------
    pandas.DataFrame
        The manifest, ``scheme == "random"``.
    """
    if n_folds < 2:
        raise ConfigError(f"n_folds must be at least 2, got {n_folds}")
    if not 0.0 <= val_frac < 1.0:
        raise ConfigError(f"val_frac must be in [0, 1), got {val_frac}")
    df = _spots(spots_df)
    test_group = np.empty(len(df), dtype=int)
    val_key = np.empty(len(df), dtype=float)
    for s_idx, (_, idx) in enumerate(df.groupby("sample_id", sort=True).indices.items()):
        rng = np.random.default_rng([int(seed), s_idx])
        order = rng.permutation(len(idx))
        groups = np.empty(len(idx), dtype=int)
        groups[order] = np.arange(len(idx)) % n_folds
        test_group[idx] = groups
        val_key[idx] = rng.random(len(idx))
    frames = []
    for k in range(n_folds):
        is_test = test_group == k
        role = np.full(len(df), "train", dtype=object)
        role[is_test] = "test"
        # val: val_frac of the non-test spots per section, chosen by a per-fold random rank
        rng = np.random.default_rng([int(seed), 10_000 + k])
        key = rng.random(len(df))
        for idx in df.groupby("sample_id", sort=True).indices.values():
            rest = idx[~is_test[idx]]
            n_val = int(round(val_frac * len(rest)))
            if n_val:
                role[rest[np.argsort(key[rest], kind="stable")[:n_val]]] = "val"
        frames.append(_frame(df, role, str(k), "random", k))
    return _concat(frames)


def _um_per_px(spots_df: pd.DataFrame, mpp: float | Mapping[str, float] | np.ndarray) -> np.ndarray:
    """Per-spot µm/px from one number, a ``{sample_id: mpp}`` mapping or a per-spot array."""
    if isinstance(mpp, Mapping):
        um_per_px = (
            spots_df["sample_id"].astype(str).map({str(k): float(v) for k, v in mpp.items()})
        )
        if um_per_px.isna().any():
            missing = sorted(set(spots_df["sample_id"].astype(str)) - {str(k) for k in mpp})
            raise InputError(f"mpp has no value for sample(s) {missing}")
        return um_per_px.to_numpy(float)
    return np.broadcast_to(np.asarray(mpp, dtype=float), (len(spots_df),)).copy()


def _buffered(role: np.ndarray, pts_um: np.ndarray, buffer_um: float) -> np.ndarray:
    """Mark training / validation spots within ``buffer_um`` of a held-out spot as ``buffer``.

    Training and validation spots near a test spot, and training spots near a validation spot,
    of one section (``pts_um``: its spots' positions in µm).
    """
    from scipy.spatial import cKDTree

    r = role.copy()
    for held, victims in (("test", ("train", "val")), ("val", ("train",))):
        hmask = r == held
        vmask = np.isin(r, victims)
        if not hmask.any() or not vmask.any():
            continue
        dist, _ = cKDTree(pts_um[hmask]).query(pts_um[vmask], k=1)
        r[np.flatnonzero(vmask)[dist < buffer_um]] = "buffer"
    return r


def spatial_blocks_within_section(
    spots_df: pd.DataFrame,
    xy: np.ndarray,
    block_um: float,
    mpp: float | Mapping[str, float] | np.ndarray,
    n_folds: int = 5,
    seed: int = 0,
    buffer_um: float = 0.0,
    val_frac: float = 0.0,
) -> pd.DataFrame:
    """Spatially blocked folds inside every section.

    Each section is tiled into square blocks of ``block_um`` µm; whole blocks are dealt to
    ``n_folds`` folds so that neighbouring spots are mostly on the same side. With
    ``buffer_um > 0`` training (and validation) spots closer than ``buffer_um`` to a test spot
    of the same section are dropped from that fold, and training spots closer than that to a
    validation spot too.

    Parameters
    ----------
    spots_df
        One row per spot with ``sample_id``, ``spot_id``, ``patient_id``.
    xy
        ``(n, 2)`` full-resolution pixel coordinates ``[x, y]``, row-aligned with ``spots_df``.
    block_um
        Side of a block in µm.
    mpp
        µm per full-resolution pixel: one number, a ``{sample_id: mpp}`` mapping, or a per-spot
        array aligned with ``spots_df``.
    n_folds
        Number of folds (at least 2).
    seed
        Seed of the block assignment.
    buffer_um
        Exclusion distance (µm) around held-out spots; ``0`` keeps every spot.
    val_frac
        Share of each section's non-test blocks used for validation (whole blocks).

    Returns
    -------
    pandas.DataFrame
        The manifest, ``scheme == "spatial_blocks"`` (buffered spots are absent from a fold).
    """
    if n_folds < 2:
        raise ConfigError(f"n_folds must be at least 2, got {n_folds}")
    if block_um <= 0:
        raise ConfigError(f"block_um must be positive, got {block_um}")
    xy = np.asarray(xy, dtype=float)
    if xy.shape != (len(spots_df), 2):
        raise InputError(f"xy must have shape ({len(spots_df)}, 2), got {xy.shape}")
    um_per_px = _um_per_px(spots_df, mpp)
    df = _spots(spots_df)
    um = xy[df["_pos"].to_numpy()] * um_per_px[df["_pos"].to_numpy()][:, None]
    fold_of = np.empty(len(df), dtype=int)
    is_val_block = np.zeros((n_folds, len(df)), dtype=bool)
    sections = df.groupby("sample_id", sort=True).indices
    for s_idx, idx in enumerate(sections.values()):
        rng = np.random.default_rng([int(seed), s_idx])
        bx = np.floor(um[idx, 0] / block_um).astype(np.int64)
        by = np.floor(um[idx, 1] / block_um).astype(np.int64)
        blocks, inv = np.unique(np.stack([bx, by], 1), axis=0, return_inverse=True)
        inv = inv.ravel()
        order = rng.permutation(len(blocks))
        block_fold = np.empty(len(blocks), dtype=int)
        block_fold[order] = np.arange(len(blocks)) % n_folds
        fold_of[idx] = block_fold[inv]
        if len(blocks) < n_folds:
            log.warning(
                "section %s has %d blocks of %g µm for %d folds: some folds test nothing there",
                df["sample_id"].iloc[idx[0]],
                len(blocks),
                block_um,
                n_folds,
            )
        for k in range(n_folds):
            rest = np.flatnonzero(block_fold != k)
            n_val = int(round(val_frac * len(rest)))
            if n_val:
                val_blocks = rng.permutation(rest)[:n_val]
                is_val_block[k, idx] = np.isin(inv, val_blocks)
    frames = []
    n_dropped = 0
    for k in range(n_folds):
        is_test = fold_of == k
        role = np.where(is_test, "test", np.where(is_val_block[k], "val", "train")).astype(object)
        if buffer_um > 0:
            for idx in sections.values():
                role[idx] = _buffered(role[idx], um[idx], buffer_um)
            n_dropped += int((role == "buffer").sum())
        frames.append(_frame(df, role, str(k), "spatial_blocks", k))
    if buffer_um > 0:
        log.info(
            "spatial blocks: dropped %d spot-fold rows inside the %g µm buffer",
            n_dropped,
            buffer_um,
        )
    return _concat(frames)


def section_imputation(
    spots_df: pd.DataFrame,
    train_sections: Iterable[str],
    test_section: str | Iterable[str],
    val_frac: float = 0.2,
    seed: int = 0,
) -> pd.DataFrame:
    """Train on some sections and predict a held-out one (e.g. D1 + D3 → D2).

    Spots of ``train_sections`` are ``train`` except a random ``val_frac`` of them (per section)
    that are ``val``; spots of ``test_section`` are ``test``; other sections are left out.
    The result has one fold, ``"0"``.

    Parameters
    ----------
    spots_df
        One row per spot with ``sample_id``, ``spot_id``, ``patient_id``.
    train_sections
        Sample ids to train (and validate) on.
    test_section
        Sample id (or ids) to hold out.
    val_frac
        Share of the training sections' spots used for validation.
    seed
        Seed of the validation draw.

    Returns
    -------
    pandas.DataFrame
        The manifest, ``scheme == "section_imputation"``.
    """
    train_s = sorted({str(s) for s in train_sections})
    test_s = sorted(
        {str(test_section)} if isinstance(test_section, str) else {str(s) for s in test_section}
    )
    both = set(train_s) & set(test_s)
    if both:
        raise LeakageError(f"section(s) {sorted(both)} are both training and test sections")
    df = _spots(spots_df)
    return _concat([_imputation_frame(df, train_s, test_s, val_frac, [int(seed)], 0)])


def _imputation_frame(
    df: pd.DataFrame,
    train_s: list[str],
    test_s: list[str],
    val_frac: float,
    seed: list[int],
    fold: int,
) -> pd.DataFrame:
    """Fold ``fold`` of a section imputation: roles of the canonical spot table ``df``."""
    known = set(df["sample_id"])
    unknown = sorted((set(train_s) | set(test_s)) - known)
    if unknown:
        raise InputError(f"section(s) {unknown} have no spots in the spot table")
    role = np.full(len(df), "drop", dtype=object)
    role[df["sample_id"].isin(test_s).to_numpy()] = "test"
    for s_idx, s in enumerate(train_s):
        idx = np.flatnonzero((df["sample_id"] == s).to_numpy())
        rng = np.random.default_rng([*seed, s_idx])
        n_val = int(round(val_frac * len(idx)))
        r = np.full(len(idx), "train", dtype=object)
        r[rng.permutation(len(idx))[:n_val]] = "val"
        role[idx] = r
    return _frame(df, role, str(fold), "section_imputation", fold)


def leave_one_section_out(
    spots_df: pd.DataFrame,
    sections: Sequence[str],
    val_frac: float = 0.2,
    seed: int = 0,
) -> pd.DataFrame:
    """Section imputation over a whole series: fold ``k`` imputes ``sections[k]`` from the others.

    Each fold is a :func:`section_imputation` (``val_frac`` of each training section's spots
    drawn at random for validation, seeded by ``seed`` and the fold) with the k-th section as
    the test section; sections outside ``sections`` are left out.

    Parameters
    ----------
    spots_df
        One row per spot with ``sample_id``, ``spot_id``, ``patient_id``.
    sections
        The series' sample ids in their order (:func:`stpredict.learn.experiments.series_sections`).
    val_frac
        Share of the training sections' spots used for validation.
    seed
        Seed of the validation draws.

    Returns
    -------
    pandas.DataFrame
        The manifest, ``scheme == "section_imputation"``, folds ``"0"`` .. ``"n-1"``.
    """
    sections = [str(s) for s in sections]
    if len(sections) < 2 or len(set(sections)) != len(sections):
        raise ConfigError(
            f"leave-one-section-out needs at least 2 distinct sections, got {sections}",
            fix="name a series of 2 or more sections",
        )
    df = _spots(spots_df)
    frames = [
        _imputation_frame(df, [s for s in sections if s != test], [test], val_frac, [seed, k], k)
        for k, test in enumerate(sections)
    ]
    return _concat(frames)


# --------------------------------------------------------------------------------------------
# audits


def _side(role: pd.Series) -> pd.Series:
    """Map roles to the two sides that must not share information: fit (train/val) vs test."""
    return role.map({"train": "fit", "val": "fit", "unlabelled": "fit", "test": "test"})


def audit(
    manifest: pd.DataFrame,
    sections_meta: pd.DataFrame | None = None,
    allow_series_split: bool | None = None,
) -> None:
    """Check a manifest for leakage; raise :class:`LeakageError` on the first problem found.

    Checks, per fold:

    * every role is ``train``, ``val`` or ``test`` and no spot appears twice;
    * no spot is in ``train`` of a fold whose ``val``/``test`` hold it (implied by the above);
    * patient-level splits (``scheme == "patient"``): no patient on both the fit side
      (train + val) and the test side, and no patient in both train and val of an inner fold.
      Patients are taken from ``sections_meta`` when given, so a manifest that mislabels a
      section's patient is still caught;
    * patient-level and section-imputation splits: no section on both sides; and, unless
      ``allow_series_split``, no ``series`` (consecutive sections of one block) on both sides.
      By default series splitting is allowed for ``section_imputation`` (its intent, e.g.
      D1 + D3 → D2) and forbidden for patient-level splits.

    Parameters
    ----------
    manifest
        A manifest from this module (columns of :data:`MANIFEST_COLUMNS`; ``scheme`` optional,
        default ``patient``).
    sections_meta
        Sample sheet rows with ``sample_id`` and optionally ``patient_id`` and ``series``.
    allow_series_split
        Override the default series rule described above.

    Raises
    ------
    LeakageError
        With the fold, the offending patient/series/spot and what to do.
    """
    m = manifest.copy()
    for col in ("sample_id", "spot_id", "fold", "role"):
        if col not in m.columns:
            raise InputError(f"manifest lacks column '{col}'")
    m["fold"] = m["fold"].astype(str)
    m["sample_id"] = m["sample_id"].astype(str)
    m["spot_id"] = m["spot_id"].astype(str)
    bad_roles = sorted(set(m["role"]) - set(ROLES))
    if bad_roles:
        raise LeakageError(
            f"manifest has unknown role(s) {bad_roles}", fix="use train/val/test/unlabelled"
        )
    dup = m.duplicated(["fold", "sample_id", "spot_id"], keep=False)
    if dup.any():
        r = m.loc[dup].iloc[0]
        roles = sorted(
            set(
                m.loc[
                    dup
                    & (m["fold"] == r.fold)
                    & (m["sample_id"] == r.sample_id)
                    & (m["spot_id"] == r.spot_id),
                    "role",
                ]
            )
        )
        raise LeakageError(
            f"fold {r.fold}: spot '{r.spot_id}' of sample '{r.sample_id}' appears more than once "
            f"(roles {roles}); {int(dup.sum())} duplicated rows in all",
            fix="give every spot exactly one role per fold",
        )
    if "scheme" not in m.columns:
        m["scheme"] = "patient"
    meta = None
    if sections_meta is not None:
        meta = sections_meta.copy()
        meta["sample_id"] = meta["sample_id"].astype(str)
        meta = meta.drop_duplicates("sample_id").set_index("sample_id")
        unknown = sorted(set(m["sample_id"]) - set(meta.index))
        if unknown:
            raise InputError(f"manifest samples {unknown[:5]} are not in the sections table")
        if "patient_id" in meta.columns:
            m["patient_id"] = m["sample_id"].map(meta["patient_id"].astype(str))
        if "series" in meta.columns:
            ser = meta["series"]
            ser = ser.where(ser.notna() & (ser.astype(str) != ""), None)
            m["series"] = m["sample_id"].map(ser)
    m["side"] = _side(m["role"])
    for fold, g in m.groupby("fold", sort=True):
        scheme = str(g["scheme"].iloc[0])
        patient_level = scheme in _PATIENT_SCHEMES
        section_level = patient_level or scheme in _IMPUTATION_SCHEMES
        if patient_level and "patient_id" in g.columns:
            _no_shared(
                g,
                "patient_id",
                "side",
                fold,
                "patient",
                "keep all of a patient's sections on one side",
            )
            _no_shared(
                g[g["side"] == "fit"],
                "patient_id",
                "role",
                fold,
                "patient",
                "keep all of a patient's sections in train or in val",
            )
        if section_level:
            _no_shared(
                g,
                "sample_id",
                "side",
                fold,
                "section",
                "hold out whole sections in a section-level split",
            )
            allow = (
                (scheme in _IMPUTATION_SCHEMES)
                if allow_series_split is None
                else allow_series_split
            )
            if not allow and "series" in g.columns:
                _no_shared(
                    g[g["series"].notna()],
                    "series",
                    "side",
                    fold,
                    "series",
                    "keep consecutive sections of one block on one side, "
                    "or check the series column of the sample sheet",
                )


def _no_shared(g: pd.DataFrame, key: str, side: str, fold: str, what: str, fix: str) -> None:
    sides = g.groupby(key, sort=True)[side].nunique()
    shared = sides[sides > 1]
    if len(shared):
        first = shared.index[0]
        where = sorted(set(g.loc[g[key] == first, side]))
        raise LeakageError(
            f"fold {fold}: {what} '{first}' is on both sides of the split ({' and '.join(where)})"
            + (f"; {len(shared)} {what}s in all" if len(shared) > 1 else ""),
            fix=fix,
        )


def audit_fitted(
    fitted_on: Mapping[str, Any] | Sequence[Any],
    manifest: pd.DataFrame,
    fold: str | int,
    name: str = "fitted object",
) -> None:
    """Fail if a fitted object's ``fitted_on`` record includes validation or test data of a fold.

    Parameters
    ----------
    fitted_on
        Either ``{"samples": [...], "n_spots": int}`` (optionally with ``"spots"``: a list as
        below), or a list of spots: ``(sample_id, spot_id)`` pairs, or plain spot ids (checked
        against held-out spot ids; an id that is both training and held-out in different
        sections cannot be resolved and is reported).
    manifest
        The split manifest.
    fold
        The fold the object was fitted for.
    name
        What the object is, for the message.

    Raises
    ------
    LeakageError
        If a held-out section, held-out spots, or more spots than the fold's training spots of
        the listed samples were used.
    """
    fold = str(fold)
    m = manifest[manifest["fold"].astype(str) == fold]
    if m.empty:
        raise InputError(f"fold {fold} is not in the manifest")
    m = m.assign(sample_id=m["sample_id"].astype(str), spot_id=m["spot_id"].astype(str))
    train = m[m["role"] == "train"]
    held = m[m["role"] != "train"]
    if isinstance(fitted_on, Mapping):
        samples = [str(s) for s in fitted_on.get("samples", [])]
        train_samples = set(train["sample_id"])
        bad = sorted((set(samples) - train_samples) & set(held["sample_id"]))
        if bad:
            raise LeakageError(
                f"fold {fold}: {name} was fitted on held-out section(s) {bad}",
                fix="fit it on the fold's training sections only",
            )
        n_spots = fitted_on.get("n_spots")
        if n_spots is not None and samples:
            n_train = int(train["sample_id"].isin(samples).sum())
            if int(n_spots) > n_train:
                raise LeakageError(
                    f"fold {fold}: {name} was fitted on {int(n_spots)} spots of {samples}, but "
                    f"only {n_train} of their spots are training spots in this fold",
                    fix="fit it on the fold's training spots only",
                )
        if "spots" in fitted_on:
            audit_fitted(list(fitted_on["spots"]), manifest, fold, name)
        return
    items = list(fitted_on)
    if not items:
        return
    if all(isinstance(s, (tuple, list)) and len(s) == 2 for s in items):
        keys = pd.MultiIndex.from_tuples([(str(a), str(b)) for a, b in items])
        held_keys = pd.MultiIndex.from_frame(held[["sample_id", "spot_id"]])
        hit = keys[keys.isin(held_keys)]
        if len(hit):
            raise LeakageError(
                f"fold {fold}: {name} was fitted on {len(hit)} held-out spot(s) "
                f"(first: sample '{hit[0][0]}', spot '{hit[0][1]}')",
                fix="fit it on the fold's training spots only",
            )
        return
    ids = pd.Index([str(s) for s in items])
    held_ids = set(held["spot_id"])
    train_ids = set(train["spot_id"])
    leaked = [s for s in ids if s in held_ids and s not in train_ids]
    if leaked:
        raise LeakageError(
            f"fold {fold}: {name} was fitted on {len(leaked)} held-out spot(s) "
            f"(first: '{leaked[0]}')",
            fix="fit it on the fold's training spots only",
        )
    ambiguous = [s for s in ids if s in held_ids and s in train_ids]
    if ambiguous:
        raise LeakageError(
            f"fold {fold}: {name}'s fitted_on lists spot id '{ambiguous[0]}' which is a "
            f"training spot in one section and held out in another ({len(ambiguous)} such ids)",
            fix="record fitted_on as (sample_id, spot_id) pairs",
        )


def outer_folds(exp: Mapping[str, Any], sheet: pd.DataFrame) -> list[str]:
    """Folds whose test predictions are reported (``"0"``, ``"1"``, ...)."""
    scheme = exp["split"]["scheme"]
    if scheme == "leave_one_patient_out":
        return [str(k) for k in range(len(_patients(exp, sheet)))]
    if scheme in ("random_within_section", "spatial_blocks"):
        return [str(k) for k in range(int(exp["split"]["n_folds"]))]
    if scheme == "section_imputation" and exp["split"].get("series"):
        return [str(k) for k in range(len(series_sections(exp, sheet)))]
    return ["0"]


def inner_folds(exp: Mapping[str, Any], sheet: pd.DataFrame, fold: str) -> list[str]:
    """Inner folds of an outer fold (ST-Net's epoch selection); empty when there are none."""
    if exp["split"]["scheme"] != "leave_one_patient_out" or "." in str(fold):
        return []
    n = min(int(exp["split"]["inner_folds"]), len(_patients(exp, sheet)) - 1)
    return [f"{fold}.{i}" for i in range(n)] if n >= 2 else []


def fold_ids(exp: Mapping[str, Any], sheet: pd.DataFrame) -> list[str]:
    """Every fold that trains a model (inner folds first)."""
    out = []
    for k in outer_folds(exp, sheet):
        out += inner_folds(exp, sheet, k) + [k]
    return out


def fold_test_samples(exp: Mapping[str, Any], sheet: pd.DataFrame, fold: str) -> list[str]:
    """Sections with test spots in an outer fold."""
    samples = experiment_samples(exp, sheet)
    scheme = exp["split"]["scheme"]
    if scheme == "leave_one_patient_out":
        held = _patients(exp, sheet)[int(str(fold).split(".")[0])]
        return [s for s in samples if str(sheet.loc[s, "patient_id"]) == held]
    if scheme == "section_imputation" and exp["split"].get("series"):
        return [series_sections(exp, sheet)[int(str(fold).split(".")[0])]]
    if scheme == "section_imputation":
        return [exp["split"]["test_section"]]
    return samples
