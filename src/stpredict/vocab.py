"""The shared words: tumour / normal annotation labels, strata, and the units of every target.

One vocabulary for every stage: the readers normalise annotation labels with
:func:`normalise_annotation_labels`, the metrics score the :data:`STRATA`, the ``labels``
baseline, the latent-space analyses and the figures read :func:`annotations`, and
:data:`TARGET_UNITS` names the units of each target transform both in the written AnnData
(one key for every file, :data:`UNITS_KEY`: ``uns["stpredict"]["units"]``, :func:`target_units`;
sections hold :data:`COUNT_UNITS`, cluster predictions :data:`CLUSTER_UNITS`) and on figure
axes (:func:`units_label`). :data:`SMOOTHNESS_NOTE` is the caution every prediction file carries
(``uns["stpredict"]["smoothness_note"]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "TUMOR",
    "NORMAL",
    "UNANNOTATED",
    "ANNOTATION_LABELS",
    "STRATA",
    "SPOT_OBS",
    "TARGET_UNITS",
    "UNITS_KEY",
    "COUNT_UNITS",
    "CLUSTER_UNITS",
    "SMOOTHNESS_NOTE_KEY",
    "SMOOTHNESS_NOTE",
    "annotations",
    "normalise_annotation_label",
    "normalise_annotation_labels",
    "target_units",
    "units_label",
    "units_of",
]

#: ``obs["annotation"]`` of a tumour spot
TUMOR = "tumor"
#: ``obs["annotation"]`` of a normal (non-tumour) spot
NORMAL = "non"
#: ``obs["annotation"]`` of a spot without a label
UNANNOTATED = ""
#: the two labels the tumour / normal analyses use; other labels are kept but left out of them
ANNOTATION_LABELS: tuple[str, str] = (TUMOR, NORMAL)
#: stratum name of the metrics tables -> the annotation label of its spots
STRATA: dict[str, str] = {"tumor": TUMOR, "normal": NORMAL}
#: the per-spot columns of a section that prediction and baseline AnnData carry (where present)
SPOT_OBS: tuple[str, ...] = (
    "sample_id",
    "patient_id",
    "spot_id",
    "in_tissue",
    "array_row",
    "array_col",
    "annotation",
    "cluster",
    "total_counts",
)

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
    return TUMOR if low in _TUMOR else NORMAL if low in _NON else text


def normalise_annotation_labels(labels: Sequence[str]) -> list[str]:
    """Normalise a whole annotation column (:func:`normalise_annotation_label`).

    Coded tokens count as tumour / normal only when the column holds exactly the two values of
    one binary code (``1``/``0``, ``true``/``false``, ``yes``/``no``, ``t``/``f``...): a column
    coding regions ``0, 1, 2`` keeps its labels as written.
    """
    values = {str(v).strip().lower() for v in labels if str(v).strip()}
    coded = any(values == code for code in _BINARY_CODES)
    return [normalise_annotation_label(v, coded=coded) for v in labels]


def annotations(adata: Any) -> np.ndarray:
    """``obs["annotation"]`` as an object array of str (:data:`UNANNOTATED` where absent)."""
    if "annotation" not in adata.obs:
        return np.full(adata.n_obs, UNANNOTATED, dtype=object)
    return adata.obs["annotation"].astype(object).fillna(UNANNOTATED).astype(str).to_numpy()


#: Target transforms (config ``targets.transform``) -> ``label``: the quantity on figure axes and
#: colour bars; ``units``: the description written into the prediction files. ``total`` is the
#: spot's UMI count over all genes, ``G`` the number of genes of the training sections.
TARGET_UNITS: dict[str, dict[str, str]] = {
    "log1p": {
        "label": "log1p(UMI / total × 10⁴)",
        "units": "log1p of UMI counts normalised to 10,000 per spot",
    },
    "log_proportion": {
        "label": "log((UMI + 1) / (total + G))",
        "units": "natural log of (count + 1) / (total count of the spot + G), G = the genes of "
        "the training sections (ST-Net)",
    },
    "pearson_minmax": {
        "label": "Pearson residual, min–max scaled on training spots",
        "units": "analytic Pearson residuals (theta 100, clipped at sqrt of the training spots), "
        "min-max scaled on each fold's training spots: [0, 1] there, held-out values may fall "
        "outside",
    },
}


#: The one key of ``uns["stpredict"]`` that names the units of ``X`` (and of
#: ``layers["predicted"]``) in every AnnData the workflow writes: sections, QC, predictions,
#: baselines, super-resolution.
UNITS_KEY = "units"

#: units of a section's (and a QC file's) ``X``
COUNT_UNITS = "UMI counts"

#: units of a cluster experiment's prediction file
CLUSTER_UNITS = "X: one-hot measured cluster; predicted: class probabilities (softmax)"

#: key of :data:`SMOOTHNESS_NOTE` in ``uns["stpredict"]`` of every prediction file
SMOOTHNESS_NOTE_KEY = "smoothness_note"

#: the caution written into every prediction file (README "Outputs" gives the demo's numbers)
SMOOTHNESS_NOTE = (
    "Predicted maps are spatially smoother than measured ones: neighbouring patches look alike, "
    "so their predictions are alike, and even genes without any spatial pattern get a high "
    "Moran's I when predicted. Do not run spatially-variable-gene or spatial-autocorrelation "
    "tests on layers['predicted'] as if it were a measurement."
)


def units_of(adata: Any) -> str:
    """Units of ``X`` of a written AnnData (``uns["stpredict"][UNITS_KEY]``; ``""`` if absent)."""
    meta = adata.uns.get("stpredict", {})
    return str(meta.get(UNITS_KEY, "")) if hasattr(meta, "get") else ""


def target_units(transform_name: str) -> str:
    """Units of a target transform's values, as written into the prediction files."""
    return TARGET_UNITS[str(transform_name)]["units"]


def units_label(transform_name: str) -> str:
    """Colour-bar / axis label of the expression values of a target transform.

    Parameters
    ----------
    transform_name
        ``"log1p"``, ``"log_proportion"`` (ST-Net), ``"pearson_minmax"`` (DeepSpaCE) or any
        other name, which is returned unchanged.

    Returns
    -------
    str
        Human-readable quantity and normalisation.
    """
    entry = TARGET_UNITS.get(str(transform_name))
    return entry["label"] if entry else str(transform_name)
