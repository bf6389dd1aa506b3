"""Parse time: which experiment each IHC section is compared with."""

from __future__ import annotations

import pandas as pd
import pytest

from stpredict.errors import ConfigError
from stpredict.ihc.plan import ihc_plan

SHEET = pd.DataFrame(
    {
        "sample_id": ["A", "B", "C"],
        "platform": "visium",
        "raw": "absent",
        "ihc_image": ["", "b_ihc.tif", ""],
        "ihc_gene": ["", "ESR1", ""],
    }
).set_index("sample_id", drop=False)


def experiment(task="regression", mode="top_mean", panel="", samples=()):
    return {
        "task": task,
        "targets": {"genes": {"mode": mode, "panel": panel}},
        "sections": {"samples": list(samples), "patients": [], "platform": "", "each": False},
        "split": {
            "scheme": "section_imputation",
            "train_sections": ["A", "C"],
            "test_section": "B",
        },
    }


HELD_OUT = {"cv": ["A"], "clusters": ["B"], "panel21": ["B"], "imputation": ["B"]}
EXPERIMENTS = {
    "cv": experiment(),
    "clusters": experiment(task="clusters"),
    "panel21": experiment(mode="panel", panel="deepspace_21"),
    "imputation": experiment(),
}
CFG = {"experiment": "", "known_affine": {}}


def plan(cfg=CFG, experiments=EXPERIMENTS):
    return ihc_plan(cfg, SHEET, experiments, HELD_OUT.__getitem__, thorough=False)


def test_auto_picks_the_first_that_can_serve():
    got, notes = plan()
    assert got == {
        "B": {"experiment": "imputation", "gene": "ESR1", "image": "b_ihc.tif", "known_affine": ""}
    }
    assert notes == []


def test_auto_without_a_fitting_experiment_leaves_the_section_out_with_a_note():
    got, notes = plan(experiments={k: EXPERIMENTS[k] for k in ("cv", "clusters", "panel21")})
    assert got == {} and len(notes) == 1 and "sample 'B'" in notes[0] and "ESR1" in notes[0]


@pytest.mark.parametrize(
    "name, why",
    [
        ("cv", "does not predict section 'B'"),
        ("clusters", "classifies clusters"),
        ("panel21", "panel 'deepspace_21' lacks it"),
        ("nope", "is not an experiment"),
    ],
)
def test_a_named_experiment_that_cannot_serve_is_refused(name, why):
    with pytest.raises(ConfigError) as exc:
        plan({**CFG, "experiment": name})
    msg = str(exc.value)
    assert "\n" not in msg and why in msg and f"ihc.experiment '{name}'" in msg and "Fix:" in msg


def test_panel_with_the_gene_serves():
    exps = {"p3": experiment(mode="panel", panel="deepspace_3")}
    got, _ = ihc_plan({**CFG, "experiment": "p3"}, SHEET, exps, lambda n: ["B"], thorough=False)
    assert got["B"]["experiment"] == "p3"


def test_known_affine_of_a_section_without_ihc_is_refused():
    with pytest.raises(ConfigError, match="without an ihc_image"):
        plan({**CFG, "known_affine": {"A": "a.json"}})
    got, _ = plan({**CFG, "known_affine": {"B": "b.json"}})
    assert got["B"]["known_affine"] == "b.json"


def test_known_affine_of_a_section_absent_from_the_sheet_is_noted_not_refused():
    # one config serves a reduced sheet too (e.g. the live-Slurm test's one-section sheet)
    got, notes = plan({**CFG, "known_affine": {"B": "b.json", "Z9": "z.json"}})
    assert got["B"]["known_affine"] == "b.json"
    assert any("Z9" in n and "not in the sample sheet" in n for n in notes)


def test_an_ihc_gene_the_section_does_not_measure_is_refused(tmp_path):
    mtx = tmp_path / "outs" / "filtered_feature_bc_matrix"
    mtx.mkdir(parents=True)
    pd.DataFrame({"id": ["ENSG1", "ENSG2"], "name": ["ESR1", "KRT5"], "type": "Gene"}).to_csv(
        mtx / "features.tsv", sep="\t", header=False, index=False
    )
    sheet = SHEET.copy()
    sheet["raw"] = str(tmp_path / "outs")
    got, _ = ihc_plan(CFG, sheet, EXPERIMENTS, HELD_OUT.__getitem__, thorough=True)
    assert got["B"]["gene"] == "ESR1"  # measured: planned
    sheet.loc["B", "ihc_gene"] = "ESR7"  # a typo: refused, not silently skipped
    with pytest.raises(ConfigError, match="ihc_gene 'ESR7' is not a gene of the section"):
        ihc_plan(CFG, sheet, EXPERIMENTS, HELD_OUT.__getitem__, thorough=True)
