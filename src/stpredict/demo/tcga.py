"""The demo's TCGA-like archive: small whole-slide images with bulk RNA and a subtype per slide.

ST-Net's TCGA analysis (pseudo-bulk vs bulk, subtype classification) needs many slides with a
bulk profile and a label; this module lays them out and renders them. The layout is fixed
(independent of the demo seed, like the gene panel) so that the workflow knows the slide ids at
parse time; the seed draws the tissue, the nuclei and the bulk noise.

Planted truth (``results/demo/wsi/cohort_truth.tsv``)
-----------------------------------------------------
- Patients ``TP01`` .. ``TP14`` (small: ``TP01`` .. ``TP06``), one or two slides each
  (``TP01-S1``, ``TP01-S2``): the two slides of a patient are two sections (shifted, rotated
  views) of the same tissue block, so they look alike; patient-level splits keep them together.
- Each patient has a ``subtype``, ``basal`` or ``luminal`` (half each). The subtype shifts the
  class logits of the patient's block (:data:`SUBTYPE_SHIFT`): basal blocks hold more immune
  infiltrate and less tumour, luminal blocks the opposite. The tissue make-up drives the
  morphology genes (``gene_roles.tsv``: tumour genes ``ESR1, ERBB2, TUMG*``, immune genes
  ``PTPRC, CD74, IL32, ISG15, IFI27, IMMG*``), so a slide's bulk -- and its pseudo-bulk, the
  mean of the predicted tiles -- carries its subtype, and so does its image.
- Bulk (``bulk_counts.tsv``, one column per slide): the planted expected expression summed over
  the slide's tissue (:func:`stpredict.demo.cohort._bulk_expected`), drawn gamma-Poisson.
- ``cohort_truth.tsv``: per slide its patient, subtype and tissue-normalised class fractions
  (tumour, stroma, immune, fat) of the rendered label map: the make-up the analyses should
  recover.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stpredict.demo import formats as fmt
from stpredict.demo.genes import make_panel
from stpredict.demo.tissue import (
    BG,
    IMM,
    STR,
    TUM,
    View,
    label_map,
    make_block,
    render,
    view_matrix,
)
from stpredict.demo.tissue import FAT as FAT_CLASS

__all__ = ["SUBTYPE_SHIFT", "COHORT_MPP", "cohort_layout", "cohort_paths", "task_cohort_slide"]

#: µm/px of the archive slides
COHORT_MPP = 2.0
#: class-logit shift (tumour, stroma, immune, fat) of each planted subtype
SUBTYPE_SHIFT = {"basal": (-0.6, 0.0, 1.0, 0.0), "luminal": (0.6, 0.0, -0.8, 0.0)}
#: slides per patient, in patient order (full and small cohorts)
_SLIDES_PER_PATIENT = {False: [2, 2, 1, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 2], True: [2, 1, 2, 1, 2, 1]}
#: subtype of each patient (fixed, balanced)
_SUBTYPES = {
    False: ["basal", "luminal", "luminal", "basal", "luminal", "basal", "basal"] * 2,
    True: ["basal", "luminal", "luminal", "basal", "basal", "luminal"],
}


def _side_px(small: bool) -> int:
    return 320 if small else 800


def cohort_layout(small: bool = False) -> list[dict[str, Any]]:
    """Return the archive's slides: ``slide_id, patient_id, subtype, section`` (fixed order)."""
    rows = []
    n_slides = _SLIDES_PER_PATIENT[small]
    for i, (n, subtype) in enumerate(zip(n_slides, _SUBTYPES[small], strict=True), start=1):
        patient = f"TP{i:02d}"
        for k in range(1, n + 1):
            rows.append(
                {
                    "slide_id": f"{patient}-S{k}",
                    "patient_id": patient,
                    "subtype": subtype,
                    "section": k,
                }
            )
    return rows


def cohort_paths(outdir: str, small: bool = False) -> dict[str, Any]:
    """Return the archive's files under ``outdir``: one JPEG per slide and the truth table."""
    return {
        "images": [f"{outdir}/wsi/archive/{r['slide_id']}.jpg" for r in cohort_layout(small)],
        "truth": f"{outdir}/wsi/cohort_truth.tsv",
    }


def _view(seed: int, row: dict[str, Any], small: bool) -> View:
    n = _side_px(small)
    side_um = n * COHORT_MPP
    block = make_block(
        seed,
        "archive:" + row["patient_id"],
        half_um=side_um / 2 + 500.0,
        a_um=0.44 * side_um,
        b_um=0.40 * side_um,
        tilt=0.2 * int(row["patient_id"][2:]),
        logit_shift=SUBTYPE_SHIFT[row["subtype"]],
    )
    # the second section of a patient: the same block, shifted and turned
    k = int(row["section"]) - 1
    matrix = view_matrix(COHORT_MPP, (n, n), 12.0 * k, (90.0 * k, -60.0 * k))
    return View(block, matrix, (n, n), COHORT_MPP, None)


def _make_up(lab: np.ndarray) -> dict[str, float]:
    tissue = max(int((lab != BG).sum()), 1)
    out = {"tissue_frac": float((lab != BG).mean())}
    for name, k in (("tumour", TUM), ("stroma", STR), ("immune", IMM), ("fat", FAT_CLASS)):
        out[f"{name}_frac"] = float((lab == k).sum() / tissue)
    return out


def task_cohort_slide(args: tuple[str, int, bool, dict[str, Any], str]) -> dict[str, Any]:
    """Render one archive slide (a JPEG) and return its expected bulk and tissue make-up."""
    from stpredict.demo.cohort import _bulk_expected

    outdir, seed, small, row, path = args
    panel = make_panel(small)
    view = _view(seed, row, small)
    lab = label_map(view, seed)
    rgb, nuclei = render(view, lab, seed, row["slide_id"])
    fmt.write_jpeg(path, rgb, quality=90)
    truth = {k: row[k] for k in ("slide_id", "patient_id", "subtype")} | _make_up(lab)
    return {
        "kind": "archive",
        "slide": row["slide_id"],
        "expected": _bulk_expected(view, lab, nuclei, panel),
        "truth": truth,
    }
