"""Latent-space analyses of ST-Net (He et al. 2020): UMAP, purity, neighbours, typical spots.

The latent space is the penultimate layer of the patch CNN, stored per spot in
``obsm["embedding"]`` of the prediction AnnData objects (one per held-out section; see
:mod:`stpredict.evaluate.metrics` for the other fields). The analyses:

* :func:`umap_embedding` -- 2-D UMAP of the embeddings (ST-Net Fig. 4a).
* :func:`purity`, :func:`kmeans_purity`, :func:`purity_table`, :func:`purity_summary` -- how
  well k-means (k = 2) on the embeddings separates tumour from normal spots, per patient
  (ST-Net reports a purity of 0.89 +/- 0.07 across patients).
* :func:`neighbour_test` -- the similar-versus-distinct neighbour test: the measured
  expression of a spot's most similar adjacent spot (in the latent space) predicts the spot's
  expression better than that of its most distinct adjacent spot.
* :func:`latent_vs_physical` -- the share of latent nearest neighbours that are physically
  adjacent, against chance (ST-Net Supp. Fig. 9b).
* :func:`label_agreement`, :func:`typical_atypical` -- representative and atypical tumour and
  normal spots (ST-Net Fig. 4b).

Integrated-gradients attributions are in :mod:`stpredict.evaluate.attributions`.

Conventions
-----------
* Annotations are ``"tumor"``, ``"non"`` (normal; the synonyms of :mod:`stpredict.vocab` are accepted) or
  ``""`` (absent); only annotated spots enter the purity and typical/atypical analyses.
* Correlations are NaN (never 0, no warnings) when either vector is constant or fewer than
  3 spots are available.
* Everything is deterministic for a given ``seed``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from stpredict.errors import InputError
from stpredict.evaluate.metrics import dense_2d, pearson_columns, scored_spots
from stpredict.ingest.geometry import spot_neighbors
from stpredict.vocab import NORMAL, TUMOR, UNANNOTATED, annotations, normalise_annotation_labels

__all__ = [
    "MIN_PURITY_SPOTS",
    "umap_embedding",
    "purity",
    "kmeans_purity",
    "purity_table",
    "purity_summary",
    "neighbour_test",
    "latent_vs_physical",
    "label_agreement",
    "typical_atypical",
]

log = logging.getLogger(__name__)

#: Smallest number of annotated spots for a unit's purity to be computed.
MIN_PURITY_SPOTS = 10

_KINDS = ("representative_tumor", "atypical_tumor", "representative_normal", "atypical_normal")


# --------------------------------------------------------------------------- helpers
_dense = dense_2d


def _as_matrix(emb: Any, name: str = "emb", sample: str | None = None) -> np.ndarray:
    arr = _dense(emb)
    if arr.ndim != 2:
        raise InputError(
            f"{name} must be a 2-D (spots x features) array, got shape {arr.shape}", sample=sample
        )
    if not np.all(np.isfinite(arr)):
        raise InputError(
            f"{name} holds NaN or infinite values",
            sample=sample,
            fix="recompute the embeddings; they must be finite",
        )
    return arr


def _sample_name(adata: Any) -> str | None:
    if "sample_id" in adata.obs and adata.n_obs:
        values = pd.unique(adata.obs["sample_id"].astype(str))
        return ",".join(values[:3])
    return None


def _embedding(adata: Any) -> np.ndarray:
    sample = _sample_name(adata)
    if "embedding" not in adata.obsm:
        raise InputError(
            "the prediction AnnData has no obsm['embedding']",
            sample=sample,
            fix="re-run prediction with embeddings saved",
        )
    emb = _as_matrix(adata.obsm["embedding"], "obsm['embedding']", sample)
    if emb.shape[0] != adata.n_obs:
        raise InputError(
            f"obsm['embedding'] has {emb.shape[0]} rows for {adata.n_obs} spots", sample=sample
        )
    return emb


def _neighbours(adata: Any, platform: str) -> list[np.ndarray]:
    sample = _sample_name(adata)
    for col in ("array_row", "array_col"):
        if col not in adata.obs:
            raise InputError(f"obs has no '{col}' column", sample=sample)
    try:
        return spot_neighbors(
            adata.obs["array_row"].to_numpy(),
            adata.obs["array_col"].to_numpy(),
            platform,
            connectivity=4,
        )
    except ValueError as exc:
        raise InputError(str(exc), sample=sample) from None


def _normalise_labels(labels: Any) -> np.ndarray:
    arr = pd.Series(np.asarray(labels, dtype=object).ravel()).fillna(UNANNOTATED).astype(str)
    return np.asarray(normalise_annotation_labels(arr.tolist()), dtype=object)


def _annotations(adata: Any) -> np.ndarray:
    return _normalise_labels(annotations(adata))


# --------------------------------------------------------------------------- UMAP
def umap_embedding(
    emb: Any, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1
) -> np.ndarray:
    """Two-dimensional UMAP of the embeddings (umap-learn).

    Parameters
    ----------
    emb
        ``(n, d)`` embeddings, e.g. ``obsm["embedding"]`` of one or more sections.
    seed
        ``random_state`` of UMAP; the result is deterministic for a given seed (umap-learn then
        runs single-threaded).
    n_neighbors
        UMAP neighbourhood size, capped at ``n - 1``.
    min_dist
        UMAP ``min_dist``.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` float32 coordinates.

    Raises
    ------
    StpredictError
        Fewer than 3 points, a non-2-D array, or non-finite values.

    Notes
    -----
    Below 10 points the spectral initialisation is replaced by a random one (the spectral one
    fails on tiny graphs). umap-learn's warnings (seed forcing one thread, TensorFlow absent)
    are silenced.
    """
    x = _as_matrix(emb)
    n = x.shape[0]
    if n < 3:
        raise InputError(f"UMAP needs at least 3 points, got {n}", fix="embed more spots at once")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap

        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=max(2, min(int(n_neighbors), n - 1)),
            min_dist=float(min_dist),
            random_state=int(seed),
            init="spectral" if n >= 10 else "random",
        )
        out = reducer.fit_transform(x.astype(np.float32))
    return np.asarray(out, dtype=np.float32)


# --------------------------------------------------------------------------- purity
def purity(labels_true: Any, clusters: Any) -> float:
    """Cluster purity: sum over clusters of the count of its commonest class, divided by ``n``.

    Parameters
    ----------
    labels_true
        ``(n,)`` true classes (any hashable values).
    clusters
        ``(n,)`` cluster assignments.

    Returns
    -------
    float
        Purity in ``(0, 1]``; 1 when every cluster holds a single class.

    Raises
    ------
    StpredictError
        Empty input or lengths that differ.
    """
    t = np.asarray(labels_true, dtype=object).ravel()
    c = np.asarray(clusters, dtype=object).ravel()
    if t.size != c.size:
        raise InputError(f"labels ({t.size}) and clusters ({c.size}) differ in length")
    if t.size == 0:
        raise InputError("purity of an empty set of points is undefined")
    table = pd.crosstab(pd.Series(c, dtype=object), pd.Series(t, dtype=object))
    return float(table.max(axis=1).sum() / t.size)


def kmeans_purity(emb: Any, labels: Any, k: int = 2, seed: int = 0) -> float:
    """Purity of k-means clusters of the embeddings with respect to ``labels``.

    Parameters
    ----------
    emb
        ``(n, d)`` embeddings (used as they are, not standardised).
    labels
        ``(n,)`` true classes.
    k
        Number of clusters.
    seed
        ``random_state`` of :class:`sklearn.cluster.KMeans` (``n_init=10``).

    Returns
    -------
    float
        :func:`purity` of the clusters.

    Raises
    ------
    StpredictError
        Fewer points than clusters, or lengths that differ.
    """
    from sklearn.cluster import KMeans

    x = _as_matrix(emb)
    lab = np.asarray(labels, dtype=object).ravel()
    if lab.size != x.shape[0]:
        raise InputError(f"emb has {x.shape[0]} rows but labels has {lab.size} entries")
    if x.shape[0] < k:
        raise InputError(f"k-means with k={k} needs at least {k} points, got {x.shape[0]}")
    with warnings.catch_warnings():
        # few distinct points: sklearn warns that it found fewer clusters than k
        warnings.simplefilter("ignore")
        clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    return purity(lab, clusters)


def purity_table(adatas_by_unit: Mapping[str, Sequence[Any]], seed: int = 0) -> pd.DataFrame:
    """K-means (k = 2) tumour/normal purity of the latent space, per unit (patient).

    Parameters
    ----------
    adatas_by_unit
        Unit name -> prediction AnnData objects of its sections; the annotated spots of all
        of a unit's sections are pooled.
    seed
        Seed of k-means.

    Returns
    -------
    pandas.DataFrame
        One row per unit with columns ``unit``, ``n_spots`` (annotated spots), ``n_tumor``,
        ``n_normal``, ``purity`` and ``note``. ``purity`` is NaN when the unit has fewer than
        :data:`MIN_PURITY_SPOTS` annotated spots or only one class; ``note`` then says why
        (it is ``""`` otherwise).
    """
    rows = []
    for unit, adatas in adatas_by_unit.items():
        embs, labs = [], []
        for ad in map(scored_spots, adatas):  # QC-failed spots are left out of every score
            lab = _annotations(ad)
            keep = np.isin(lab, [TUMOR, NORMAL])
            if keep.any():
                embs.append(_embedding(ad)[keep])
                labs.append(lab[keep])
        lab = np.concatenate(labs) if labs else np.zeros(0, dtype=object)
        n_t = int(np.sum(lab == TUMOR))
        n_n = int(np.sum(lab == NORMAL))
        value, note = np.nan, ""
        if lab.size < MIN_PURITY_SPOTS:
            note = f"fewer than {MIN_PURITY_SPOTS} annotated spots"
        elif n_t == 0 or n_n == 0:
            note = "only one class annotated (tumor or non)"
        else:
            value = kmeans_purity(np.concatenate(embs), lab, k=2, seed=seed)
        rows.append(
            {
                "unit": str(unit),
                "n_spots": int(lab.size),
                "n_tumor": n_t,
                "n_normal": n_n,
                "purity": value,
                "note": note,
            }
        )
    cols = ["unit", "n_spots", "n_tumor", "n_normal", "purity", "note"]
    return pd.DataFrame(rows, columns=cols)


def purity_summary(table: pd.DataFrame) -> dict[str, float | int]:
    """Mean and standard deviation of the purities of :func:`purity_table`, ignoring NaN.

    Parameters
    ----------
    table
        Output of :func:`purity_table`.

    Returns
    -------
    dict
        ``mean``, ``sd`` (sample s.d., ``ddof=1``; NaN with fewer than 2 units) and
        ``n_units`` (units with a purity).
    """
    v = pd.to_numeric(table["purity"], errors="coerce").dropna().to_numpy(dtype=float)
    mean = float(v.mean()) if v.size else float("nan")
    sd = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return {"mean": mean, "sd": sd, "n_units": int(v.size)}


# --------------------------------------------------------------------------- neighbours
def neighbour_test(adata: Any, platform: str) -> pd.DataFrame:
    """ST-Net's similar-versus-distinct neighbour test on one section.

    For every spot with at least two adjacent spots present (4-neighbourhood on ST, the six
    hexagonal neighbours on Visium), the adjacent spot nearest in ``obsm["embedding"]``
    (Euclidean; "similar") and the farthest ("distinct") are found; their *measured* values
    (``X``) are used as predictions of the spot's measured values, and each gene's Pearson
    correlation over those spots is computed.

    Parameters
    ----------
    adata
        Prediction AnnData of one section (``X``, ``obsm["embedding"]``, ``obs`` columns
        ``array_row`` and ``array_col``).
    platform
        ``"st"`` or ``"visium"``.

    Returns
    -------
    pandas.DataFrame
        One row per gene (``adata.var_names``) with columns ``gene``, ``r_similar``,
        ``r_distinct`` and ``n_spots`` (spots with at least two neighbours). Correlations are
        NaN for constant genes or fewer than 3 spots. Ties in distance go to the lower index.
    """
    adata = scored_spots(adata)
    emb = _embedding(adata)
    nbrs = _neighbours(adata, platform)
    x = _dense(adata.X)
    spots, similar, distinct = [], [], []
    for i, nb in enumerate(nbrs):
        if len(nb) < 2:
            continue
        d = np.linalg.norm(emb[nb] - emb[i], axis=1)
        spots.append(i)
        similar.append(int(nb[np.argmin(d)]))
        distinct.append(int(nb[np.argmax(d)]))
    idx = np.asarray(spots, dtype=np.int64)
    truth = x[idx]
    r_sim = pearson_columns(x[np.asarray(similar, dtype=np.int64)], truth)
    r_dis = pearson_columns(x[np.asarray(distinct, dtype=np.int64)], truth)
    return pd.DataFrame(
        {
            "gene": np.asarray(adata.var_names, dtype=object),
            "r_similar": r_sim,
            "r_distinct": r_dis,
            "n_spots": int(idx.size),
        }
    )


def latent_vs_physical(adata: Any, platform: str, k: int = 4) -> dict[str, float | int]:
    """How often latent nearest neighbours are physically adjacent (ST-Net Supp. Fig. 9b).

    Parameters
    ----------
    adata
        Prediction AnnData of one section.
    platform
        ``"st"`` (4-neighbourhood) or ``"visium"`` (hexagonal).
    k
        Latent neighbours per spot (capped at ``n - 1``), the spot itself excluded.

    Returns
    -------
    dict
        ``share_adjacent``: mean over spots of the share of the ``k`` nearest latent
        neighbours (Euclidean, within the section) that are physically adjacent;
        ``chance``: the share expected if latent neighbours were random spots,
        ``mean degree / (n - 1)``; ``enrichment``: their ratio; plus ``k``, ``n_spots`` and
        ``mean_degree``.

    Raises
    ------
    StpredictError
        Fewer than 2 spots or a malformed AnnData.
    """
    from sklearn.neighbors import NearestNeighbors

    adata = scored_spots(adata)
    emb = _embedding(adata)
    n = emb.shape[0]
    if n < 2:
        raise InputError(f"need at least 2 spots, got {n}", sample=_sample_name(adata))
    nbrs = _neighbours(adata, platform)
    k_eff = max(1, min(int(k), n - 1))
    # kneighbors() without X leaves each point out of its own neighbour list
    knn = NearestNeighbors(n_neighbors=k_eff).fit(emb).kneighbors(return_distance=False)
    shares = np.array([np.isin(knn[i], nb).mean() for i, nb in enumerate(nbrs)])
    degree = float(np.mean([len(nb) for nb in nbrs]))
    share = float(shares.mean())
    chance = degree / (n - 1)
    return {
        "share_adjacent": share,
        "chance": chance,
        "enrichment": share / chance if chance > 0 else float("nan"),
        "k": k_eff,
        "n_spots": n,
        "mean_degree": degree,
    }


# --------------------------------------------------------------------------- typical spots
def label_agreement(emb: Any, labels: Any, k: int = 10) -> np.ndarray:
    """Per spot, the share of its ``k`` nearest latent neighbours with the same annotation.

    Parameters
    ----------
    emb
        ``(n, d)`` embeddings.
    labels
        ``(n,)`` annotations; only ``"tumor"`` and ``"non"`` (or ``"normal"``) spots take
        part (as spots and as neighbours).
    k
        Neighbours per spot (Euclidean, the spot itself excluded), capped at the number of
        annotated spots minus one.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float shares; NaN for unannotated spots (or when fewer than 2 spots are
        annotated).
    """
    from sklearn.neighbors import NearestNeighbors

    x = _as_matrix(emb)
    lab = _normalise_labels(labels)
    if lab.size != x.shape[0]:
        raise InputError(f"emb has {x.shape[0]} rows but labels has {lab.size} entries")
    out = np.full(lab.size, np.nan)
    keep = np.flatnonzero(np.isin(lab, [TUMOR, NORMAL]))
    if keep.size < 2:
        return out
    k_eff = max(1, min(int(k), keep.size - 1))
    knn = NearestNeighbors(n_neighbors=k_eff).fit(x[keep]).kneighbors(return_distance=False)
    sub = lab[keep]
    out[keep] = (sub[knn] == sub[:, None]).mean(axis=1)
    return out


def typical_atypical(emb: Any, labels: Any, k: int = 10) -> pd.DataFrame:
    """Find representative and atypical tumour and normal spots (ST-Net Fig. 4b).

    Parameters
    ----------
    emb
        ``(n, d)`` embeddings.
    labels
        ``(n,)`` annotations (``"tumor"``, ``"non"``/``"normal"``, or anything else for
        unannotated spots, which are ignored).
    k
        Neighbours used by :func:`label_agreement`.

    Returns
    -------
    pandas.DataFrame
        Columns ``kind`` (``representative_tumor``, ``atypical_tumor``,
        ``representative_normal``, ``atypical_normal``), ``index`` (row in the input) and
        ``share`` (its :func:`label_agreement`). The representative spot of a class has the
        highest share, the atypical one the lowest; ties go to the spot nearest to
        (representative) or farthest from (atypical) the class centroid in the latent space,
        then to the lower index. Kinds of an absent class are left out.
    """
    x = _as_matrix(emb)
    lab = _normalise_labels(labels)
    share = label_agreement(x, lab, k=k)
    rows = []
    for cls, name in ((TUMOR, "tumor"), (NORMAL, "normal")):
        idx = np.flatnonzero((lab == cls) & np.isfinite(share))
        if idx.size == 0:
            continue
        dist = np.linalg.norm(x[idx] - x[idx].mean(0), axis=1)
        s = share[idx]
        # lexsort: last key is primary
        best = idx[np.lexsort((idx, dist, -s))[0]]
        worst = idx[np.lexsort((idx, -dist, s))[0]]
        rows.append(
            {"kind": f"representative_{name}", "index": int(best), "share": float(share[best])}
        )
        rows.append({"kind": f"atypical_{name}", "index": int(worst), "share": float(share[worst])})
    return pd.DataFrame(rows, columns=["kind", "index", "share"])
