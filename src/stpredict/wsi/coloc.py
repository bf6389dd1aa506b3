"""Co-localisation of marker sets within a slide (e.g. tumour vs immune) against a permutation null.

Scores
------
A marker set (``wsi.colocalisation.markers``: name -> genes) scores each tile by the mean over
its genes of the predicted values, each gene z-scored within the slide (genes the experiment
does not predict are dropped, with a log line; a set left without a gene is skipped).

Statistic (:func:`neighbourhood_r`)
-----------------------------------
Tiles are neighbours when their centres are at most 1.5 tile sides apart (the 8 surrounding
tiles of the grid). For sets A and B, ``r`` is the mean of Pearson(A, lag B) and
Pearson(lag A, B), where ``lag`` is the mean score of a tile's neighbours (tiles without a
neighbour are left out): how much a tile's A goes with the B *around* it, symmetric in A and B.
Positive r: the two sets occupy the same neighbourhoods (co-localisation); negative: they avoid
each other (segregation). The tile itself is not its own neighbour, so r is not the trivial
same-tile correlation of two outputs of one model on one patch.

Null (:func:`colocalisation`)
-----------------------------
B's scores are permuted across the slide's tiles (``n_perm`` seeded permutations: positions
shuffled, A and the neighbour graph kept) and r recomputed: ``null_mean, null_sd``, ``z``, and
the two-sided empirical ``p = (1 + #{|r_null - null_mean| >= |r - null_mean|}) / (n_perm + 1)``.
``q``: Benjamini-Hochberg across slides, per pair of sets.

Table (``results/wsi/colocalisation.tsv``): one row per slide and pair of sets: ``slide_id,
set_a, set_b, genes_a, genes_b, n_tiles, r, null_mean, null_sd, z, p, q, n_perm``.
"""

from __future__ import annotations

import itertools
import logging
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree

from stpredict.wsi.bulk import bh

__all__ = [
    "set_scores",
    "neighbour_graph",
    "neighbourhood_r",
    "colocalisation",
    "slide_rows",
    "finish",
]

log = logging.getLogger(__name__)

COLUMNS = [
    "slide_id",
    "set_a",
    "set_b",
    "genes_a",
    "genes_b",
    "n_tiles",
    "r",
    "null_mean",
    "null_sd",
    "z",
    "p",
    "q",
    "n_perm",
]


def set_scores(
    pred: np.ndarray, genes: Sequence[str], markers: Mapping[str, Sequence[str]], slide: str = ""
) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per-tile score of each marker set: the mean of its genes z-scored within the slide."""
    index = {g: i for i, g in enumerate(genes)}
    out = {}
    for name, wanted in markers.items():
        have = [g for g in wanted if g in index]
        missing = [g for g in wanted if g not in index]
        if missing:
            log.info("%s: marker set %s: %s not predicted, left out", slide, name, missing)
        if not have:
            log.warning("%s: marker set %s has no predicted gene: skipped", slide, name)
            continue
        x = pred[:, [index[g] for g in have]].astype(np.float64)
        sd = x.std(axis=0)
        z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        out[name] = (z.mean(axis=1), have)
    return out


def neighbour_graph(xy: np.ndarray, side: float) -> sparse.csr_matrix:
    """Row-normalised neighbour matrix: centres within 1.5 ``side``, the tile itself excluded."""
    n = len(xy)
    pairs = cKDTree(xy).query_pairs(1.5 * float(side), output_type="ndarray")
    i = np.concatenate([pairs[:, 0], pairs[:, 1]]) if len(pairs) else np.zeros(0, int)
    j = np.concatenate([pairs[:, 1], pairs[:, 0]]) if len(pairs) else np.zeros(0, int)
    w = sparse.csr_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    deg = np.asarray(w.sum(axis=1)).ravel()
    return sparse.diags(np.where(deg > 0, 1.0 / np.maximum(deg, 1), 0.0)) @ w


def _corr_cols(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of ``x`` (n,) with every column of ``y`` (n, k), or column-wise when both 2-D."""
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    num = (xc * yc).sum(axis=0)
    den = np.sqrt((xc**2).sum(axis=0) * (yc**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def neighbourhood_r(a: np.ndarray, b: np.ndarray, w: sparse.csr_matrix) -> np.ndarray:
    """Symmetric neighbourhood correlation of A and B (module notes); ``b`` may be ``(n, k)``."""
    has = np.asarray(w.sum(axis=1)).ravel() > 0
    b2 = b.reshape(len(b), -1)
    a2 = np.repeat(a.reshape(-1, 1), b2.shape[1], axis=1)
    lag_a, lag_b = w @ a2, w @ b2
    r1 = _corr_cols(a2[has], lag_b[has])
    r2 = _corr_cols(lag_a[has], b2[has])
    return (r1 + r2) / 2


def colocalisation(
    a: np.ndarray, b: np.ndarray, w: sparse.csr_matrix, n_perm: int, rng: np.random.Generator
) -> dict[str, float]:
    """Observed r, its permutation null (B shuffled across tiles) and the empirical p."""
    obs = float(neighbourhood_r(a, b, w)[0])
    perms = np.stack([b[rng.permutation(len(b))] for _ in range(int(n_perm))], axis=1)
    null = neighbourhood_r(a, perms, w)
    null = null[np.isfinite(null)]
    if not np.isfinite(obs) or len(null) == 0:
        return {"r": obs, "null_mean": np.nan, "null_sd": np.nan, "z": np.nan, "p": np.nan}
    mu, sd = float(null.mean()), float(null.std(ddof=1)) if len(null) > 1 else np.nan
    extreme = int((np.abs(null - mu) >= abs(obs - mu)).sum())
    return {
        "r": obs,
        "null_mean": mu,
        "null_sd": sd,
        "z": (obs - mu) / sd if sd and np.isfinite(sd) and sd > 0 else np.nan,
        "p": (1 + extreme) / (len(null) + 1),
    }


def slide_rows(
    slide: str,
    pred: np.ndarray,
    genes: Sequence[str],
    xy: np.ndarray,
    side: float,
    markers: Mapping[str, Sequence[str]],
    n_perm: int,
    seed: int,
) -> list[dict]:
    """Return the table rows of one slide: every pair of scorable marker sets (module notes)."""
    scores = set_scores(pred, genes, markers, slide)
    w = neighbour_graph(xy, side)
    rows = []
    for sa, sb in itertools.combinations(scores, 2):
        key = zlib.crc32(f"coloc:{slide}:{sa}:{sb}".encode())
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), key]))
        (a, ga), (b, gb) = scores[sa], scores[sb]
        res = colocalisation(a, b, w, n_perm, rng)
        rows.append(
            {
                "slide_id": slide,
                "set_a": sa,
                "set_b": sb,
                "genes_a": ",".join(ga),
                "genes_b": ",".join(gb),
                "n_tiles": len(a),
            }
            | res
            | {"n_perm": int(n_perm)}
        )
    return rows


def finish(rows: list[dict]) -> pd.DataFrame:
    """Return the colocalisation table: rows of every slide, BH q across slides per pair of sets."""
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS])
    if df.empty:
        return df
    df["q"] = np.nan
    for _, idx in df.groupby(["set_a", "set_b"]).groups.items():
        df.loc[idx, "q"] = bh(df.loc[idx, "p"].to_numpy())
    return df[COLUMNS]
