"""The demo gene panel: symbols, Ensembl-like ids, planted roles and expression parameters.

The panel is fixed (independent of the demo seed) so that gene ids never change between runs.
Expected expression of a spot is a vector of shares (summing to 1) built from

- *fixed* genes (``housekeeping``, ``filler``): a constant share;
- ``noise`` genes: a constant share times an independent per-spot log-normal factor;
- *variable* genes, sharing the remaining mass in proportion to their weight:
  ``morphology`` genes driven by a tissue class (weight ``b * (eps + fraction)``) or by the
  nuclear density (``b * (density / ref) ** gamma``), and ``hidden_spatial`` genes following a
  smooth field invisible in the image (``b * exp(a * field)``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["Panel", "make_panel", "expected_shares", "CLASS_DRIVERS", "ND_REF"]

#: class drivers, in the column order of the tissue-normalised fractions (tumour..fat)
CLASS_DRIVERS = ("tumour", "stroma", "immune", "fat")
#: reference nuclear density (nuclei per 1000 µm²)
ND_REF = 6.0

NAMED = {
    "tumour": ["ESR1", "ERBB2"],
    "nuclear_density": ["MKI67"],
    "stroma": [
        "SPARC",
        "COL1A1",
        "COL1A2",
        "COL3A1",
        "COL5A2",
        "FN1",
        "POSTN",
        "CTHRC1",
        "THBS2",
        "PDGFRB",
        "COL8A1",
        "SULF1",
        "MMP14",
        "MXRA5",
        "LUM",
        "DPYSL3",
        "CTSK",
        "COL10A1",
    ],  # fmt: skip
    "immune": ["IL32", "ISG15", "IFI27", "PTPRC", "CD74"],
    "fat": ["ADIPOQ", "PLIN1", "FABP4"],
}
GENERIC_PREFIX = {
    "tumour": "TUMG",
    "stroma": "STRG",
    "immune": "IMMG",
    "fat": "FATG",
    "nuclear_density": "NUCG",
}
HOUSEKEEPING = [
    "ACTB", "GAPDH", "RPLP0", "EEF1A1", "TPT1", "RPS18", "RPL13A", "PPIA", "HPRT1", "TBP",
    "UBC", "YWHAZ", "SDHA", "PGK1", "GUSB", "RPL19", "RPS27A", "HSP90AB1", "PSMB2", "POLR2A",
    "TFRC", "LDHA", "ALDOA", "TUBB", "RPL32",
]  # fmt: skip


@dataclass(frozen=True)
class Panel:
    """Gene panel with planted parameters (arrays aligned with ``symbols``).

    Attributes
    ----------
    symbols, ids : np.ndarray
        Gene symbols and Ensembl-like ids (``ENSG00000xxxxxx``).
    role, driver : np.ndarray
        Planted role (morphology | noise | housekeeping | hidden_spatial | filler) and driver.
    kind : np.ndarray
        0 fixed share, 1 noise, 2 class-driven, 3 nuclear-density-driven, 4 hidden spatial.
    share : np.ndarray
        Share of fixed and noise genes (0 for variable genes).
    base, eps, expo : np.ndarray
        Weight parameters of variable genes.
    theta : np.ndarray
        Negative-binomial size (inverse over-dispersion) per gene.
    class_idx : np.ndarray
        Column of the class fraction driving a class-driven gene (-1 otherwise).
    """

    symbols: np.ndarray
    ids: np.ndarray
    role: np.ndarray
    driver: np.ndarray
    kind: np.ndarray
    share: np.ndarray
    base: np.ndarray
    eps: np.ndarray
    expo: np.ndarray
    theta: np.ndarray
    class_idx: np.ndarray

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return len(self.symbols)

    def roles_table(self) -> pd.DataFrame:
        """Return the ``gene_roles.tsv`` table (gene, gene_id, role, driver)."""
        return pd.DataFrame(
            {"gene": self.symbols, "gene_id": self.ids, "role": self.role, "driver": self.driver}
        )


def make_panel(small: bool = False) -> Panel:
    """Build the fixed demo gene panel.

    Parameters
    ----------
    small
        Fewer generic / filler genes (about 500 instead of 1,800).
    """
    rng = np.random.default_rng(np.random.SeedSequence([20240601, zlib.crc32(b"panel")]))
    n_generic = 3 if small else 10
    n_hidden = 5 if small else 12
    n_noise = 50 if small else 60
    n_hk = 10 if small else len(HOUSEKEEPING)
    n_total = 500 if small else 1800
    rows: list[tuple[str, str, str]] = []  # symbol, role, driver
    for drv in ("tumour", "stroma", "immune", "fat", "nuclear_density"):
        for sym in NAMED[drv]:
            rows.append((sym, "morphology", drv))
        n_gen = n_generic if drv != "fat" else max(2, n_generic // 2)
        for i in range(1, n_gen + 1):
            rows.append((f"{GENERIC_PREFIX[drv]}{i}", "morphology", drv))
    for i in range(1, n_hidden + 1):
        rows.append((f"SPAT{i}", "hidden_spatial", "none"))
    for i in range(1, n_noise + 1):
        rows.append((f"NOISE{i}", "noise", "none"))
    for sym in HOUSEKEEPING[:n_hk]:
        rows.append((sym, "housekeeping", "none"))
    n_fill = n_total - len(rows)
    for i in range(1, n_fill + 1):
        rows.append((f"FLR{i:04d}", "filler", "none"))
    g = len(rows)
    symbols = np.array([r[0] for r in rows])
    role = np.array([r[1] for r in rows])
    driver = np.array([r[2] for r in rows])
    nums = rng.choice(np.arange(1000, 290000), size=g, replace=False)
    ids = np.array([f"ENSG00000{n:06d}" for n in nums])

    kind = np.zeros(g, dtype=np.int64)
    share = np.zeros(g)
    base = np.zeros(g)
    eps = np.zeros(g)
    expo = np.zeros(g)
    theta = np.full(g, 8.0)
    class_idx = np.full(g, -1, dtype=np.int64)

    is_fill = role == "filler"
    is_hk = role == "housekeeping"
    is_noise = role == "noise"
    is_morph = role == "morphology"
    is_hid = role == "hidden_spatial"

    # fixed shares: housekeeping 12 %, fillers 38.5 % (20 'rare' fillers nearly never seen),
    # noise 13 % (as highly expressed as the morphology genes, so that top-by-mean gene sets
    # contain unpredictable genes too); the variable genes share the rest (~36.5 %).
    hk = rng.lognormal(0.0, 0.6, is_hk.sum())
    share[is_hk] = 0.12 * hk / hk.sum()
    fl = rng.lognormal(0.0, 0.5, is_fill.sum())
    n_rare = min(20, int(is_fill.sum()) // 10)
    if n_rare:
        fl[-n_rare:] = 2e-4 * fl[-n_rare:]
    share[is_fill] = 0.385 * fl / fl.sum()
    nz = rng.lognormal(0.0, 0.3, is_noise.sum())
    share[is_noise] = 0.13 * nz / nz.sum()
    kind[is_noise] = 1
    theta[is_hk] = 30.0
    theta[is_noise] = 4.0

    for k, drv in enumerate(CLASS_DRIVERS):
        sel = is_morph & (driver == drv)
        kind[sel] = 2
        class_idx[sel] = k
    sel_nd = is_morph & (driver == "nuclear_density")
    kind[sel_nd] = 3
    kind[is_hid] = 4
    var = kind >= 2
    base[var] = rng.lognormal(0.0, 0.5, var.sum())
    named = np.isin(symbols, sum(NAMED.values(), []))
    base[named] *= 1.8
    eps[kind == 2] = rng.uniform(0.04, 0.15, (kind == 2).sum())
    expo[kind == 3] = rng.uniform(1.3, 2.0, (kind == 3).sum())
    expo[kind == 4] = rng.uniform(0.7, 1.0, (kind == 4).sum())
    theta[var] = rng.uniform(5.0, 12.0, var.sum())
    return Panel(symbols, ids, role, driver, kind, share, base, eps, expo, theta, class_idx)


def expected_shares(
    panel: Panel, fractions: np.ndarray, density: np.ndarray, hidden: np.ndarray
) -> np.ndarray:
    """Compute expected expression shares per spot (rows sum to 1, before noise-gene jitter).

    Parameters
    ----------
    panel
        The gene panel.
    fractions
        ``(n, 4)`` tissue-normalised fractions of tumour, stroma, immune, fat.
    density
        ``(n,)`` nuclear density (nuclei per 1000 µm²).
    hidden
        ``(n,)`` standardised hidden spatial field.
    """
    n = fractions.shape[0]
    w = np.zeros((n, panel.n_genes))
    k2 = np.flatnonzero(panel.kind == 2)
    w[:, k2] = panel.base[k2] * (panel.eps[k2] + fractions[:, panel.class_idx[k2]])
    k3 = np.flatnonzero(panel.kind == 3)
    rel = np.clip(density / ND_REF, 0.02, None)[:, None]
    w[:, k3] = panel.base[k3] * (0.05 + rel ** panel.expo[k3])
    k4 = np.flatnonzero(panel.kind == 4)
    w[:, k4] = panel.base[k4] * np.exp(panel.expo[k4] * hidden[:, None])
    var_mass = 1.0 - panel.share.sum()
    tot = w.sum(axis=1, keepdims=True)
    tot[tot == 0] = 1.0
    p = w / tot * var_mass
    p += panel.share[None, :]
    return p
