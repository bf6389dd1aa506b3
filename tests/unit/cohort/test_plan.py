"""Parse time of cohorts: defaults from the schema, the sheet with image-only rows, refusals."""

from __future__ import annotations

import pandas as pd
import pytest

from stpredict.cohort.plan import (
    check_models,
    cohort_defaults,
    read_cohort_sheet,
    resolve_cohort,
    section_kinds,
)
from stpredict.config import (
    CONFIG_SCHEMA,
    SHEET_COLUMNS,
    check_training_sheet,
    load_schema,
    read_sheet,
    validate_sheet,
)
from stpredict.errors import ConfigError

SAMPLES_SCHEMA = load_schema(CONFIG_SCHEMA.parent / "samples.schema.yaml")


def _sheet(tmp_path, rows):
    df = pd.DataFrame(rows).reindex(columns=SHEET_COLUMNS).fillna("")
    path = tmp_path / "cohort.tsv"
    df.to_csv(path, sep="\t", index=False)
    return path


def test_defaults_come_from_the_schema_and_null_qc_keys_from_the_run():
    d = cohort_defaults()
    assert d["min_gene_share"] == 0.5 and d["superres"] is True and d["qc"]["min_umi"] is None
    c = resolve_cohort(
        "new",
        {"sheet": "s.tsv", "models": "m", "qc": {"min_genes": 100}},
        {
            "qc": {
                "min_umi": 500,
                "min_genes": 250,
                "whiteness": {"enabled": True, "percentile": 80, "max_white_frac": 0.5},
            }
        },
    )
    assert c["qc"]["min_umi"] == 500 and c["qc"]["min_genes"] == 100
    assert c["qc"]["whiteness"]["percentile"] == 80 and c["name"] == "new"


def test_an_image_only_row_is_valid_in_a_cohort_sheet(tmp_path):
    img = tmp_path / "he.jpg"
    img.write_bytes(b"x")
    path = _sheet(
        tmp_path,
        [
            {
                "sample_id": "N1",
                "patient_id": "P9",
                "platform": "image",
                "image": str(img),
                "mpp": "0.5",
            }
        ],
    )
    sheet = read_cohort_sheet(str(path), SAMPLES_SCHEMA)
    assert sheet.loc["N1", "platform"] == "image" and sheet.loc["N1", "raw"] == ""
    assert section_kinds({"c": sheet}) == {"counts": set(), "image": {"N1"}}


@pytest.mark.parametrize(
    "row, column",
    [
        ({"platform": "image", "image": ""}, "image"),  # no image
        ({"platform": "image", "raw": "counts.tsv", "image": "he.jpg"}, "raw"),  # counts
        ({"platform": "st", "raw": "", "spots": "s.txt", "image": "he.jpg"}, "raw"),
    ],
)
def test_rows_that_cannot_work_are_refused_naming_the_column(tmp_path, row, column):
    path = _sheet(tmp_path, [{"sample_id": "N1", "patient_id": "P9", **row}])
    with pytest.raises(ConfigError, match=f"column '{column}'"):
        validate_sheet(read_sheet(path), SAMPLES_SCHEMA, path)


def test_the_runs_own_sheet_refuses_image_only_rows(tmp_path):
    img = tmp_path / "he.jpg"
    img.write_bytes(b"x")
    path = _sheet(
        tmp_path, [{"sample_id": "N1", "patient_id": "P9", "platform": "image", "image": str(img)}]
    )
    sheet = validate_sheet(read_sheet(path), SAMPLES_SCHEMA, path)
    with pytest.raises(ConfigError, match="cohort sheet"):
        check_training_sheet(sheet, {"samples": str(path)})


def test_experiments_need_a_sheet():
    from stpredict.config import empty_sheet

    check_training_sheet(empty_sheet(), {"samples": "", "experiments": {}})
    with pytest.raises(ConfigError, match="names no sample sheet"):
        check_training_sheet(empty_sheet(), {"samples": "", "experiments": {"e": {}}})


def test_one_id_cannot_be_both_kinds_across_cohorts():
    a = pd.DataFrame({"platform": ["st"]}, index=["S1"])
    b = pd.DataFrame({"platform": ["image"]}, index=["S1"])
    with pytest.raises(ConfigError, match="different sample ids"):
        section_kinds({"a": a, "b": b})


def test_a_models_folder_needs_its_card(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        check_models("c", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="no model card"):
        check_models("c", str(tmp_path))
    (tmp_path / "model.json").write_text("{}")
    assert check_models("c", str(tmp_path)).endswith("model.json")
    # made by this run (the demo's own experiment): need not exist yet
    made = "results/experiments/e/model.json"
    assert check_models("c", "results/experiments/e", produced=[made]) == made
