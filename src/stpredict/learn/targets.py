"""Prediction targets: gene selection and expression transforms, fitted on training sections only.

Every class here follows the "fitted things" contract of docs/DESIGN.md:

- ``fit(adatas)`` learns its state from a list of section AnnData objects (raw UMI counts in
  ``X``) and records ``fitted_on = {"samples": sorted sample ids, "n_spots": int}``;
- ``transform(adata)`` returns a float32 ``(spots, genes)`` array for the genes chosen at fit time;
- ``to_dict()`` / ``from_dict()`` round-trip the parameters and the fitted state through JSON.

Genes are matched by ``var_names``. Sections may hold different genes (ST count files omit genes
without counts): the gene universe is the union over the sections, and a gene absent from a
section's file counts as zero there. Library sizes (totals per spot) are always the sum over all
genes of the section's own matrix, whatever genes are selected.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from stpredict.errors import ConfigError, InputError

__all__ = [
    "LogProportion",
    "Log1pNormalized",
    "PearsonResidualsMinMax",
    "GeneSelector",
    "TRANSFORMS",
    "make_transform",
    "from_dict",
    "load_panel",
    "available_panels",
    "gene_union",
    "section_counts",
    "library_size",
    "sample_ids",
    "fitted_on_record",
    "TRANSFORM_NAMES",
]

log = logging.getLogger(__name__)

PANEL_DIR = Path(__file__).resolve().parents[3] / "resources" / "gene_panels"
_CHUNK = 2048  # spots held densely at once


# ---------------------------------------------------------------------------- helpers
def sample_ids(adata: Any) -> list[str]:
    """Sample id(s) of a section: ``uns["stpredict"]["sample_id"]`` or the ``obs`` column."""
    meta = adata.uns.get("stpredict", {}) if hasattr(adata, "uns") else {}
    if "sample_id" in adata.obs:
        return sorted({str(s) for s in adata.obs["sample_id"].unique()})
    if isinstance(meta, dict) and meta.get("sample_id"):
        return [str(meta["sample_id"])]
    raise InputError(
        "section has no sample id (neither obs['sample_id'] nor uns['stpredict']['sample_id'])",
        fix="build sections with stpredict.ingest.section.read_section, which records the sample id",
    )


def fitted_on_record(adatas: Sequence[Any]) -> dict[str, Any]:
    """Return ``{"samples": sorted sample ids, "n_spots": total spots}`` of the fitting data."""
    samples: set[str] = set()
    for a in adatas:
        samples.update(sample_ids(a))
    return {"samples": sorted(samples), "n_spots": int(sum(a.n_obs for a in adatas))}


def _is_ambiguous(adata: Any) -> np.ndarray:
    names = np.asarray(adata.var_names, dtype=str)
    flag = np.char.startswith(names, "__ambiguous")
    if "ambiguous" in adata.var:
        flag |= adata.var["ambiguous"].to_numpy(dtype=bool)
    return flag


def gene_union(adatas: Sequence[Any], exclude_ambiguous: bool = False) -> list[str]:
    """Union of the sections' genes, in order of first appearance."""
    seen: dict[str, None] = {}
    for a in adatas:
        amb = _is_ambiguous(a) if exclude_ambiguous else np.zeros(a.n_vars, bool)
        for g, bad in zip(a.var_names, amb, strict=True):
            if not bad:
                seen.setdefault(str(g), None)
    return list(seen)


def _csr(adata: Any) -> sp.csr_matrix:
    X = adata.X
    return X.tocsr() if sp.issparse(X) else sp.csr_matrix(np.asarray(X))


def library_size(adata: Any) -> np.ndarray:
    """Total counts per spot over all genes of the section's matrix, float64 ``(n,)``."""
    return np.asarray(_csr(adata).sum(axis=1), dtype=np.float64).ravel()


def _gene_index(adata: Any, genes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``genes`` in ``adata`` (``-1`` when absent) and the mask of present ones."""
    idx = adata.var_names.get_indexer(list(genes))
    return idx, idx >= 0


def section_counts(adata: Any, genes: Sequence[str], rows: slice | None = None) -> np.ndarray:
    """Dense float64 counts ``(spots, genes)``; genes absent from the section are zero."""
    X = _csr(adata)
    if rows is not None:
        X = X[rows]
    idx, present = _gene_index(adata, genes)
    out = np.zeros((X.shape[0], len(genes)), dtype=np.float64)
    if present.any():
        out[:, present] = X[:, idx[present]].toarray()
    return out


def _chunks(adata: Any, genes: Sequence[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(counts, library sizes)`` over row chunks of a section."""
    lib = library_size(adata)
    for a in range(0, adata.n_obs, _CHUNK):
        rows = slice(a, min(a + _CHUNK, adata.n_obs))
        yield section_counts(adata, genes, rows), lib[rows]


def _as_list(adatas: Any) -> list[Any]:
    if hasattr(adatas, "n_obs"):
        return [adatas]
    out = list(adatas)
    if not out:
        raise ConfigError(
            "nothing to fit on: the list of training sections is empty",
            fix="check the fold definition (every fold needs training sections)",
        )
    return out


# ---------------------------------------------------------------------------- base class
class _Fitted:
    """Common machinery: parameters, fitted state, JSON round trip."""

    kind: ClassVar[str] = ""
    _params: ClassVar[tuple[str, ...]] = ()
    _state: ClassVar[tuple[str, ...]] = ()
    _arrays: ClassVar[tuple[str, ...]] = ()  # state entries restored as float64 arrays

    fitted_on: dict[str, Any] | None = None

    def _check_fitted(self) -> None:
        if self.fitted_on is None:
            raise ConfigError(
                f"{type(self).__name__} is not fitted",
                fix="call .fit(training_sections) first (or load a fitted one)",
            )

    def to_dict(self) -> dict[str, Any]:
        """Return parameters, fitted state and ``fitted_on`` as JSON-serialisable data."""

        def conv(v: Any) -> Any:
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, np.generic):
                return v.item()
            return v

        return {
            "kind": self.kind,
            "params": {k: conv(getattr(self, k)) for k in self._params},
            "state": {k: conv(getattr(self, k, None)) for k in self._state},
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Rebuild an object written by :meth:`to_dict`."""
        if d.get("kind") != cls.kind:
            raise ConfigError(f"cannot load a '{d.get('kind')}' as {cls.__name__}")
        obj = cls(**d.get("params", {}))
        for k, v in d.get("state", {}).items():
            if v is not None and k in cls._arrays:
                v = np.asarray(v, dtype=np.float64)
            setattr(obj, k, v)
        obj.fitted_on = d.get("fitted_on")
        return obj

    def fit_transform(self, adatas: Sequence[Any]) -> list[np.ndarray]:
        """Fit on ``adatas`` and transform each of them."""
        self.fit(adatas)  # type: ignore[attr-defined]
        return [self.transform(a) for a in _as_list(adatas)]  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._params if k != "genes")
        fitted = "unfitted" if self.fitted_on is None else f"fitted_on={self.fitted_on['samples']}"
        return f"{type(self).__name__}({params}; {fitted})"


# ---------------------------------------------------------------------------- transforms
class LogProportion(_Fitted):
    """ST-Net target: ``log((c_g + 1) / sum_over_all_genes(c + 1))`` (natural log).

    Parameters
    ----------
    genes
        Output genes (usually ``GeneSelector.genes_``); ``None`` = the union of the training genes.
    pseudocount
        Added to every count before normalising (ST-Net: 1).

    Notes
    -----
    The denominator is ``library size + pseudocount * G`` where ``G`` is the number of genes of
    the union over the training sections (ST-Net pads every section to the union with zeros).
    ``G`` is the only fitted quantity; ``fitted_on`` is recorded for auditing.
    """

    kind = "log_proportion"
    _params = ("genes", "pseudocount")
    _state = ("genes_", "n_genes_")

    def __init__(self, genes: Sequence[str] | None = None, pseudocount: float = 1.0) -> None:
        self.genes = None if genes is None else [str(g) for g in genes]
        self.pseudocount = float(pseudocount)
        self.genes_: list[str] | None = None
        self.n_genes_: int | None = None
        self.fitted_on = None

    def fit(self, adatas: Sequence[Any]) -> LogProportion:
        """Record the gene universe size and the output genes."""
        adatas = _as_list(adatas)
        universe = gene_union(adatas)
        self.n_genes_ = len(universe)
        self.genes_ = list(self.genes) if self.genes is not None else universe
        self.fitted_on = fitted_on_record(adatas)
        return self

    def transform(self, adata: Any) -> np.ndarray:
        """Return float32 ``(spots, genes_)`` log proportions."""
        self._check_fitted()
        assert self.genes_ is not None and self.n_genes_ is not None
        out = np.empty((adata.n_obs, len(self.genes_)), dtype=np.float32)
        a = 0
        for counts, lib in _chunks(adata, self.genes_):
            denom = lib + self.pseudocount * self.n_genes_
            out[a : a + len(lib)] = np.log((counts + self.pseudocount) / denom[:, None])
            a += len(lib)
        return out


class Log1pNormalized(_Fitted):
    """``log1p(c_g / library_size * target_sum)`` (scanpy ``normalize_total`` + ``log1p``).

    Parameters
    ----------
    genes
        Output genes; ``None`` = the union of the training genes.
    target_sum
        Counts per spot after normalisation (default 10,000). Spots without counts stay zero.
    """

    kind = "log1p_normalized"
    _params = ("genes", "target_sum")
    _state = ("genes_",)

    def __init__(self, genes: Sequence[str] | None = None, target_sum: float = 1e4) -> None:
        self.genes = None if genes is None else [str(g) for g in genes]
        if not target_sum > 0:
            raise ConfigError(f"target_sum must be > 0, got {target_sum}")
        self.target_sum = float(target_sum)
        self.genes_: list[str] | None = None
        self.fitted_on = None

    def fit(self, adatas: Sequence[Any]) -> Log1pNormalized:
        """Stateless apart from the output genes; records ``fitted_on``."""
        adatas = _as_list(adatas)
        self.genes_ = list(self.genes) if self.genes is not None else gene_union(adatas)
        self.fitted_on = fitted_on_record(adatas)
        return self

    def transform(self, adata: Any) -> np.ndarray:
        """Return float32 ``(spots, genes_)``."""
        self._check_fitted()
        assert self.genes_ is not None
        out = np.empty((adata.n_obs, len(self.genes_)), dtype=np.float32)
        a = 0
        for counts, lib in _chunks(adata, self.genes_):
            scale = np.divide(self.target_sum, lib, out=np.zeros_like(lib), where=lib > 0)
            out[a : a + len(lib)] = np.log1p(counts * scale[:, None])
            a += len(lib)
        return out


class PearsonResidualsMinMax(_Fitted):
    """Analytic Pearson residuals (Lause et al. 2021) then min-max scaling, both fitted.

    DeepSpaCE variance-stabilised its targets with SCTransform and min-max scaled them; this is
    the analytic equivalent without per-gene regression.

    Parameters
    ----------
    genes
        Output genes; ``None`` = the union of the training genes.
    theta
        Negative-binomial overdispersion shared by all genes (default 100).
    clip
        Residuals are clipped to ``[-clip, clip]``; ``None`` = ``sqrt(number of training spots)``
        (scanpy's default when fitting and transforming the same data).
    minmax
        Apply the min-max scaling (``False`` returns the residuals).

    Notes
    -----
    Fitted on the training spots: the gene proportions ``p_g = sum_c x_cg / sum_cg x_cg``, the
    clip value, and the per-gene minimum and maximum of the clipped residuals. A new spot ``c``
    gets ``mu_cg = n_c p_g`` from its own library size ``n_c`` and the fitted ``p_g``, then
    ``(r - min_g) / (max_g - min_g)``. Training values lie in ``[0, 1]``; values of other
    sections **may fall outside [0, 1]** (by design: no information flows back from them).
    Genes without counts in the training data (``p_g = 0``) and genes with ``max_g == min_g``
    are returned as 0.
    """

    kind = "pearson_residuals_minmax"
    _params = ("genes", "theta", "clip", "minmax")
    _state = ("genes_", "p_", "clip_", "min_", "max_")
    _arrays = ("p_", "min_", "max_")

    def __init__(
        self,
        genes: Sequence[str] | None = None,
        theta: float = 100.0,
        clip: float | None = None,
        minmax: bool = True,
    ) -> None:
        if not theta > 0:
            raise ConfigError(f"Pearson residuals need theta > 0, got {theta}")
        if clip is not None and clip < 0:
            raise ConfigError(f"clip must be >= 0 or None, got {clip}")
        self.genes = None if genes is None else [str(g) for g in genes]
        self.theta = float(theta)
        self.clip = None if clip is None else float(clip)
        self.minmax = bool(minmax)
        self.genes_: list[str] | None = None
        self.p_: np.ndarray | None = None
        self.clip_: float | None = None
        self.min_: np.ndarray | None = None
        self.max_: np.ndarray | None = None
        self.fitted_on = None

    def _residuals(self, counts: np.ndarray, lib: np.ndarray) -> np.ndarray:
        assert self.p_ is not None and self.clip_ is not None
        mu = lib[:, None] * self.p_[None, :]
        sd = np.sqrt(mu + mu**2 / self.theta)
        r = np.divide(counts - mu, sd, out=np.zeros_like(mu), where=sd > 0)
        return np.clip(r, -self.clip_, self.clip_)

    def fit(self, adatas: Sequence[Any]) -> PearsonResidualsMinMax:
        """Fit ``p_g``, the clip value and the per-gene min/max on the training sections."""
        adatas = _as_list(adatas)
        self.genes_ = list(self.genes) if self.genes is not None else gene_union(adatas)
        gene_sums = np.zeros(len(self.genes_))
        total = 0.0
        for a in adatas:
            idx, present = _gene_index(a, self.genes_)
            X = _csr(a)
            col = np.asarray(X.sum(axis=0), dtype=np.float64).ravel()
            gene_sums[present] += col[idx[present]]
            total += float(col.sum())
        if total <= 0:
            raise InputError(
                "training sections hold no counts at all",
                fix="check the count matrices of the training sections",
            )
        self.p_ = gene_sums / total
        n = int(sum(a.n_obs for a in adatas))
        self.clip_ = float(self.clip) if self.clip is not None else math.sqrt(n)
        lo = np.full(len(self.genes_), np.inf)
        hi = np.full(len(self.genes_), -np.inf)
        at_clip = np.zeros(len(self.genes_))
        for a in adatas:
            for counts, lib in _chunks(a, self.genes_):
                r = self._residuals(counts, lib)
                lo = np.minimum(lo, r.min(axis=0, initial=np.inf))
                hi = np.maximum(hi, r.max(axis=0, initial=-np.inf))
                at_clip += (np.abs(r) >= self.clip_).sum(axis=0)
        self.min_, self.max_ = lo, hi
        share = at_clip / max(n, 1)
        if len(share) and share.max() > 0.01:
            # few training spots make a low clip (sqrt(n)): saturated targets compress the top
            log.warning(
                "pearson_minmax: residuals clipped at +-%.2f (sqrt of %d training spots); in %d "
                "of %d genes more than 1%% of training spots sit at the clip (worst %.1f%%, %s): "
                "their extreme values are flattened (more training spots, or transform log1p, "
                "avoid it)",
                self.clip_,
                n,
                int((share > 0.01).sum()),
                len(share),
                100 * float(share.max()),
                self.genes_[int(share.argmax())],
            )
        self.fitted_on = fitted_on_record(adatas)
        return self

    def residuals(self, adata: Any) -> np.ndarray:
        """Clipped Pearson residuals with the fitted ``p_g`` (before min-max), float64."""
        self._check_fitted()
        assert self.genes_ is not None
        out = np.empty((adata.n_obs, len(self.genes_)), dtype=np.float64)
        a = 0
        for counts, lib in _chunks(adata, self.genes_):
            out[a : a + len(lib)] = self._residuals(counts, lib)
            a += len(lib)
        return out

    def transform(self, adata: Any) -> np.ndarray:
        """Return float32 ``(spots, genes_)`` min-max scaled residuals (see Notes)."""
        r = self.residuals(adata)
        if not self.minmax:
            return r.astype(np.float32)
        assert self.min_ is not None and self.max_ is not None
        rng = self.max_ - self.min_
        scaled = np.divide(r - self.min_, rng, out=np.zeros_like(r), where=rng > 0)
        return scaled.astype(np.float32)


TRANSFORMS: dict[str, type[_Fitted]] = {
    LogProportion.kind: LogProportion,
    Log1pNormalized.kind: Log1pNormalized,
    PearsonResidualsMinMax.kind: PearsonResidualsMinMax,
}


def make_transform(name: str, genes: Sequence[str] | None = None, **params: Any) -> Any:
    """Build a transform by config name (``log_proportion``, ``log1p_normalized``, ...)."""
    try:
        cls = TRANSFORMS[name]
    except KeyError:
        raise ConfigError(
            f"unknown target transform '{name}'", fix=f"use one of {sorted(TRANSFORMS)}"
        ) from None
    return cls(genes=genes, **params)


# ---------------------------------------------------------------------------- gene selection
class GeneSelector(_Fitted):
    """Choose the genes to predict, from training sections only.

    Parameters
    ----------
    mode
        ``"top_mean"``: the ``n`` genes with the highest mean normalised expression over all
        training spots (ST-Net: 250); ``"panel"``: a fixed list; ``"expressed"``: every gene
        detected (count > 0) in at least ``min_frac`` of the training spots.
    n
        Number of genes for ``top_mean``.
    panel
        Gene symbols for ``panel`` (a list, or a name/path for :func:`load_panel`).
    min_frac
        Detection fraction for ``expressed``.
    exclude_ambiguous
        Leave out ST ``__ambiguous[...]`` columns (``var["ambiguous"]``).
    allow_missing
        ``panel``: drop (with a warning) panel genes found in no training section instead of
        raising.
    normalization
        Expression averaged by ``top_mean``: ``"log1p"`` (normalize_total to ``target_sum`` +
        log1p), ``"log_proportion"`` (ST-Net's target) or ``"counts"`` (raw).
    target_sum
        For ``normalization="log1p"``.

    Notes
    -----
    Genes are pooled over the training sections (union; absent = zero; every spot weighs the
    same). Ties are broken by gene name. After ``fit``, ``genes_`` holds the chosen genes (for
    ``top_mean`` in decreasing order of mean) and ``scores_`` their mean (``top_mean``),
    detection fraction (``expressed``) or mean log1p expression (``panel``).
    ``transform(adata)`` returns the raw counts of ``genes_`` (float32, absent genes zero).
    """

    kind = "gene_selector"
    _params = (
        "mode",
        "n",
        "panel",
        "min_frac",
        "exclude_ambiguous",
        "allow_missing",
        "normalization",
        "target_sum",
    )
    _state = ("genes_", "scores_", "dropped_")
    _arrays = ("scores_",)
    MODES = ("top_mean", "panel", "expressed")
    NORMALIZATIONS = ("log1p", "log_proportion", "counts")

    def __init__(
        self,
        mode: str = "top_mean",
        n: int = 250,
        panel: Sequence[str] | str | None = None,
        min_frac: float = 0.1,
        exclude_ambiguous: bool = True,
        allow_missing: bool = False,
        normalization: str = "log1p",
        target_sum: float = 1e4,
    ) -> None:
        if mode not in self.MODES:
            raise ConfigError(
                f"unknown gene selection mode '{mode}'", fix=f"use one of {self.MODES}"
            )
        if normalization not in self.NORMALIZATIONS:
            raise ConfigError(
                f"unknown normalization '{normalization}'", fix=f"use one of {self.NORMALIZATIONS}"
            )
        if mode == "panel" and panel is None:
            raise ConfigError(
                "gene selection mode 'panel' needs a panel",
                fix="set genes.panel to a list of symbols or a panel name such as 'deepspace_21'",
            )
        if mode == "top_mean" and int(n) < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        if not 0 <= min_frac <= 1:
            raise ConfigError(f"min_frac must be in [0, 1], got {min_frac}")
        self.mode = mode
        self.n = int(n)
        self.panel = (
            load_panel(panel)
            if isinstance(panel, str)
            else (None if panel is None else [str(g) for g in panel])
        )
        self.min_frac = float(min_frac)
        self.exclude_ambiguous = bool(exclude_ambiguous)
        self.allow_missing = bool(allow_missing)
        self.normalization = normalization
        self.target_sum = float(target_sum)
        self.genes_: list[str] | None = None
        self.scores_: np.ndarray | None = None
        self.dropped_: list[str] = []
        self.fitted_on = None

    # per-gene sums over spots of the normalised expression, gene detection counts
    def _pooled(self, adatas: list[Any], universe: list[str], what: str) -> np.ndarray:
        acc = np.zeros(len(universe))
        G = len(gene_union(adatas))
        for a in tqdm(
            adatas, desc=f"genes ({what})", unit="section", leave=False, disable=len(adatas) < 4
        ):
            X = _csr(a).astype(np.float64)
            lib = np.asarray(X.sum(axis=1)).ravel()
            if what == "detected":
                M = (X > 0).astype(np.float64)
                extra = 0.0
            elif what == "counts":
                M, extra = X, 0.0
            elif what == "log1p":
                scale = np.divide(self.target_sum, lib, out=np.zeros_like(lib), where=lib > 0)
                M = sp.diags(scale) @ X
                M.data = np.log1p(M.data)
                extra = 0.0
            else:  # log_proportion: log(c + 1) - log(lib + G); absent genes contribute -log(lib+G)
                M = X.copy()
                M.data = np.log1p(M.data)
                extra = -float(np.log(lib + G).sum())
            col = np.asarray(M.sum(axis=0)).ravel()
            idx = pd.Index(universe).get_indexer(list(map(str, a.var_names)))
            ok = idx >= 0
            acc += extra
            np.add.at(acc, idx[ok], col[ok])
        return acc

    def fit(self, adatas: Sequence[Any]) -> GeneSelector:
        """Choose ``genes_`` from the training sections."""
        adatas = _as_list(adatas)
        universe = gene_union(adatas, exclude_ambiguous=self.exclude_ambiguous)
        n_spots = sum(a.n_obs for a in adatas)
        self.dropped_ = []
        if self.mode == "panel":
            assert self.panel is not None
            known = set(gene_union(adatas))
            missing = [g for g in self.panel if g not in known]
            if missing:
                samples = fitted_on_record(adatas)["samples"]
                msg = (
                    f"{len(missing)} panel gene(s) are in none of the training sections "
                    f"{samples}: {', '.join(missing)}"
                )
                if not self.allow_missing:
                    raise InputError(
                        msg,
                        fix="check the symbols (the sections may use Ensembl ids or other "
                        "aliases), edit the panel, or set genes.allow_missing: true to drop them",
                    )
                warnings.warn(msg + "; dropped (allow_missing)", UserWarning, stacklevel=2)
                log.warning("%s; dropped", msg)
            self.dropped_ = missing
            genes = list(dict.fromkeys(g for g in self.panel if g in known))
            if not genes:
                raise InputError(
                    "no panel gene is present in the training sections",
                    fix="check the panel against the sections' gene names",
                )
            sums = self._pooled(adatas, genes, "log1p")
            self.genes_, self.scores_ = genes, sums / n_spots
        elif self.mode == "expressed":
            frac = self._pooled(adatas, universe, "detected") / n_spots
            keep = frac >= self.min_frac
            self.genes_ = [g for g, k in zip(universe, keep, strict=True) if k]
            self.scores_ = frac[keep]
            if not self.genes_:
                raise InputError(
                    f"no gene is detected in >= {self.min_frac:.0%} of the training spots",
                    fix="lower genes.min_frac",
                )
        else:
            mean = self._pooled(adatas, universe, self.normalization) / n_spots
            order = np.lexsort((np.asarray(universe, dtype=object).astype(str), -mean))
            top = order[: self.n]
            if len(universe) < self.n:
                log.warning("only %d genes available, fewer than n=%d", len(universe), self.n)
            self.genes_ = [universe[i] for i in top]
            self.scores_ = mean[top]
        self.fitted_on = fitted_on_record(adatas)
        log.info(
            "gene selection %s: %d genes from %s",
            self.mode,
            len(self.genes_),
            self.fitted_on["samples"],
        )
        return self

    def transform(self, adata: Any) -> np.ndarray:
        """Return the raw counts of ``genes_`` as float32 ``(spots, genes)``."""
        self._check_fitted()
        assert self.genes_ is not None
        return section_counts(adata, self.genes_).astype(np.float32)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneSelector:
        """Rebuild a selector written by :meth:`to_dict`."""
        obj = super().from_dict(d)
        obj.dropped_ = list(obj.dropped_ or [])
        return obj


def from_dict(d: dict[str, Any]) -> Any:
    """Rebuild any fitted object of this module from its :meth:`to_dict` output."""
    classes = {**TRANSFORMS, GeneSelector.kind: GeneSelector}
    try:
        return classes[d["kind"]].from_dict(d)
    except KeyError:
        raise ConfigError(
            f"unknown fitted object kind {d.get('kind')!r}",
            fix=f"expected one of {sorted(classes)}",
        ) from None


# ---------------------------------------------------------------------------- gene panels
def available_panels() -> list[str]:
    """Names of the panels shipped in ``resources/gene_panels``."""
    return sorted(p.stem for p in PANEL_DIR.glob("*.txt"))


def load_panel(name_or_path: str | os.PathLike[str]) -> list[str]:
    """Read a gene panel: one symbol per line, ``#`` starts a comment, blank lines ignored.

    Parameters
    ----------
    name_or_path
        A file path, or the name of a shipped panel (``deepspace_3``, ``deepspace_21``).
    """
    path = Path(name_or_path)
    if not path.is_file():
        cand = PANEL_DIR / f"{name_or_path}.txt"
        if not cand.is_file():
            raise ConfigError(
                f"gene panel '{name_or_path}' is neither a file nor a shipped panel",
                fix=f"give a path or one of {available_panels()}",
            )
        path = cand
    genes: list[str] = []
    for line in path.read_text().splitlines():
        g = line.split("#", 1)[0].strip()
        if g and g not in genes:
            genes.append(g)
    if not genes:
        raise ConfigError("gene panel is empty", file=path, fix="list one gene symbol per line")
    return genes


#: config name -> :mod:`stpredict.learn.targets` transform kind
TRANSFORM_NAMES = {
    "log1p": "log1p_normalized",
    "log_proportion": "log_proportion",
    "pearson_minmax": "pearson_residuals_minmax",
}
