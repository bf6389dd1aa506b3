"""The demo's external cohort: sections of a new patient that no experiment trains on.

Written by rule ``make_demo_cohort`` (not ``make_demo``: adding it does not rerun a finished
demo) under ``results/demo/cohort/``, from the same generator and seed as the demo (same
planted link between morphology and expression, same gene panel and file formats):

* ``BC50007_C1``: a legacy ST section with counts (ST-Net's spot file and count matrix,
  Ensembl ids like the demo's ST files: read with ``reading.gene_map``) -- scored as external
  validation of the models of ``demo_stnet``;
* ``BC50007_C2``: an image-only row (``platform`` ``image``): only the H&E JPEG of a strip of a
  second section of the patient (1.5 x 2.7 mm, across the tissue edge), tiled and predicted.

The sheet ``results/demo/cohort/samples.tsv`` (paths relative to the directory Snakemake runs
in) lists both; :func:`external_sheet` gives its rows before it is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stpredict.demo import cohort as demo
from stpredict.demo import formats as fmt
from stpredict.demo.tissue import label_map, render
from stpredict.io import atomic_path

__all__ = ["EXTERNAL_PATIENT", "external_sheet", "external_outputs", "make_external_cohort"]

#: the new patient (the demo's ST patients are BC50001 .. BC50006)
EXTERNAL_PATIENT = "BC50007"
_COUNTS = demo.STSpec(EXTERNAL_PATIENT, "C1", "stnet", 0.5, 3.0, (40.0, -30.0), 1.0)
_IMAGE = demo.STSpec(EXTERNAL_PATIENT, "C2", "stnet", -0.7, -4.0, (-60.0, 50.0), 1.0)
#: µm (rows, columns) of the image-only row's image: a strip from inside the tissue across its edge
_STRIP_UM = np.array([1500.0, 2700.0])


def _root(outdir: str | Path) -> str:
    return f"{demo._o(outdir)}/cohort"


def external_sheet(outdir: str | Path = "results/demo", small: bool = False) -> pd.DataFrame:
    """Rows of the external cohort's sheet (the sample-sheet columns, strings)."""
    root = _root(outdir)
    p = demo._st_paths(root, _COUNTS)
    mpp = f"{demo._st_mpp(small):g}"
    empty = dict.fromkeys(demo.SHEET_COLUMNS, "")
    rows = [
        {
            **empty,
            "sample_id": _COUNTS.sample,
            "patient_id": EXTERNAL_PATIENT,
            "platform": "st",
            "raw": p["counts"],
            "spots": p["spots"],
            "image": p["image"],
            "annotation": p["annotation"],
            "mpp": mpp,
        },
        {
            **empty,
            "sample_id": _IMAGE.sample,
            "patient_id": EXTERNAL_PATIENT,
            "platform": "image",
            "image": demo._st_paths(root, _IMAGE)["image"],
            "mpp": mpp,
        },
    ]
    return pd.DataFrame(rows, columns=demo.SHEET_COLUMNS).astype(str)


def external_outputs(outdir: str | Path = "results/demo", small: bool = False) -> list[str]:
    """Every file :func:`make_external_cohort` writes (the sheet last)."""
    root = _root(outdir)
    p = demo._st_paths(root, _COUNTS)
    files = [p["counts"], p["spots"], p["image"], p["annotation"], p["truth"]]
    files.append(demo._st_paths(root, _IMAGE)["image"])
    return files + [f"{root}/samples.tsv"]


def _image_only(root: str, seed: int, small: bool) -> dict[str, Any]:
    view = demo._st_view(seed, _IMAGE, small)
    lab = label_map(view, seed)
    rgb, _ = render(view, lab, seed, _IMAGE.sample)
    # a strip across the tissue edge (a biopsy-sized image keeps the demo quick): tissue and glass
    h, w = rgb.shape[:2]
    cy, cx = h // 2, w // 2
    side = _STRIP_UM / view.mpp
    rows = slice(max(0, int(cy - side[0] / 2)), min(h, int(cy + side[0] / 2)))
    cols = slice(max(0, int(cx - 0.2 * side[1])), min(w, int(cx + 0.8 * side[1])))
    rgb = rgb[rows, cols]
    fmt.write_jpeg(demo._st_paths(root, _IMAGE)["image"], rgb, quality=90)
    return {"kind": "image", "sample": _IMAGE.sample, "image_shape": list(rgb.shape[:2])}


def make_external_cohort(
    outdir: str | Path = "results/demo", seed: int = 7, small: bool = False
) -> dict[str, Any]:
    """Write the external cohort under ``{outdir}/cohort`` (module notes).

    Returns
    -------
    dict
        A summary per section (spots, median UMI, image shape), for reporting only.
    """
    root = _root(outdir)
    Path(root).mkdir(parents=True, exist_ok=True)
    results = [demo._task_st((root, seed, small, _COUNTS)), _image_only(root, seed, small)]
    with atomic_path(f"{root}/samples.tsv") as tmp:
        external_sheet(outdir, small).to_csv(tmp, sep="\t", index=False)
    return {"results": results}
