"""The demo's external cohort: a new patient, one section with counts and one image-only row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stpredict.cohort.plan import read_cohort_sheet
from stpredict.config import CONFIG_SCHEMA, load_schema
from stpredict.demo import demo_sheet
from stpredict.demo.external import (
    EXTERNAL_PATIENT,
    external_outputs,
    external_sheet,
    make_external_cohort,
)

SAMPLES_SCHEMA = load_schema(CONFIG_SCHEMA.parent / "samples.schema.yaml")


def test_the_sheet_is_known_before_it_is_written_and_matches_what_is_written(tmp_path):
    out = tmp_path / "demo"
    before = external_sheet(out, small=True)
    result = make_external_cohort(out, seed=3, small=True)
    files = external_outputs(out, small=True)
    assert all(Path(f).is_file() for f in files), [f for f in files if not Path(f).is_file()]
    written = pd.read_csv(files[-1], sep="\t", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(written, before.reset_index(drop=True))
    sheet = read_cohort_sheet(files[-1], SAMPLES_SCHEMA)
    assert list(sheet["platform"]) == ["st", "image"]
    assert result["results"][0]["n_in_tissue"] > 50


def test_the_external_patient_is_none_of_the_demos():
    assert EXTERNAL_PATIENT not in set(demo_sheet().patient_id)
    assert not set(external_sheet().sample_id) & set(demo_sheet().sample_id)
