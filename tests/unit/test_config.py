from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from stpredict.config import check_sheet_paths, load_schema, read_sheet, validate_sheet
from stpredict.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHEET_SCHEMA = load_schema(REPO / "workflow/schemas/samples.schema.yaml")
CONFIG_SCHEMA = REPO / "workflow/schemas/config.schema.yaml"

GOOD = {
    "sample_id": ["A1", "B1"],
    "patient_id": ["P1", "P2"],
    "platform": ["visium", "st"],
    "raw": ["a/outs", "b/counts.tsv"],
    "spots": ["", "b/spots.txt"],
    "image": ["a.tif", "b.jpg"],
}


def write(tmp_path: Path, data: dict, name: str = "samples.tsv") -> Path:
    p = tmp_path / name
    pd.DataFrame(data).to_csv(p, sep="\t", index=False)
    return p


def load(p: Path) -> pd.DataFrame:
    return validate_sheet(read_sheet(p), SHEET_SCHEMA, p)


def test_good_sheet_is_indexed_by_sample(tmp_path):
    df = load(write(tmp_path, GOOD))
    assert list(df.index) == ["A1", "B1"]
    assert df.loc["B1", "spots"] == "b/spots.txt"
    assert df.loc["A1", "mpp"] == ""  # optional columns added empty


def test_bad_platform_names_row_column_and_sample(tmp_path):
    data = {**GOOD, "platform": ["visium", "xenium"]}
    p = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load(p)
    msg = str(e.value)
    assert "row 3" in msg and "'platform'" in msg and "sample 'B1'" in msg and str(p) in msg
    assert "\n" not in msg


def test_st_row_needs_spots(tmp_path):
    p = write(tmp_path, {**GOOD, "spots": ["", ""]})
    with pytest.raises(ConfigError, match=r"row 3, column 'spots'"):
        load(p)


def test_duplicate_sample_ids(tmp_path):
    p = write(tmp_path, {**GOOD, "sample_id": ["A1", "A1"]})
    with pytest.raises(ConfigError, match="duplicate sample_id A1 in rows 2, 3"):
        load(p)


def test_bad_sample_id_characters(tmp_path):
    p = write(tmp_path, {**GOOD, "sample_id": ["A1", "B 1"]})
    with pytest.raises(ConfigError, match="column 'sample_id'"):
        load(p)


def test_missing_required_column(tmp_path):
    data = dict(GOOD)
    del data["patient_id"]
    p = write(tmp_path, data)
    with pytest.raises(ConfigError, match="lacks required column.*patient_id"):
        read_sheet(p)


def test_unknown_column(tmp_path):
    p = write(tmp_path, {**GOOD, "imgae": ["", ""]})
    with pytest.raises(ConfigError, match="unknown column.*imgae"):
        read_sheet(p)


def test_series_needs_order_and_one_patient(tmp_path):
    p = write(tmp_path, {**GOOD, "series": ["S", ""]})
    with pytest.raises(ConfigError, match="column 'order'"):
        load(p)
    p = write(tmp_path, {**GOOD, "series": ["S", "S"], "order": ["1", "2"]})
    with pytest.raises(ConfigError, match="spans several patients"):
        load(p)
    p = write(
        tmp_path, {**GOOD, "patient_id": ["P1", "P1"], "series": ["S", "S"], "order": ["1", "1"]}
    )
    with pytest.raises(ConfigError, match="share series"):
        load(p)


def test_ihc_needs_gene(tmp_path):
    p = write(tmp_path, {**GOOD, "ihc_image": ["x.tif", ""]})
    with pytest.raises(ConfigError, match="column 'ihc_gene'"):
        load(p)


def test_missing_paths_are_reported_unless_produced(tmp_path):
    p = write(tmp_path, GOOD)
    df = load(p)
    with pytest.raises(ConfigError, match="sample 'A1'.*column 'raw'.*a/outs"):
        check_sheet_paths(df, p)
    check_sheet_paths(df, p, produced=["a", "a.tif", "b", "b.jpg"])  # all under produced paths


def test_config_files_validate():
    for name in ("config.yaml", "config/stnet.yaml", "config/deepspace.yaml"):
        cfg = yaml.safe_load((REPO / name).read_text())
        validate(cfg, str(CONFIG_SCHEMA))


def test_config_rejects_unknown_and_bad_values():
    from snakemake.exceptions import WorkflowError

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["qc"]["min_umi"] = -1
    with pytest.raises(WorkflowError):
        validate(cfg, str(CONFIG_SCHEMA))
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["patchs"] = {}
    with pytest.raises(WorkflowError):
        validate(cfg, str(CONFIG_SCHEMA))


def test_schema_defaults_fill_a_minimal_config():
    cfg = {"samples": "x.tsv"}
    validate(cfg, str(CONFIG_SCHEMA))
    assert cfg["qc"]["min_umi"] == 500 and cfg["patches"]["size_px"] == 32
    assert cfg["qc"]["whiteness"]["percentile"] == 80


def test_every_schema_property_has_a_description():
    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{path}.{key} has no description"
            walk(sub, f"{path}.{key}")

    walk(yaml.safe_load(CONFIG_SCHEMA.read_text()), "config")
    walk(SHEET_SCHEMA, "sheet")


def test_config_readme_documents_every_key():
    text = (REPO / "config/README.md").read_text()

    def walk(node, prefix):
        for key, sub in node.get("properties", {}).items():
            full = f"{prefix}{key}"
            assert f"`{full}`" in text, f"config/README.md does not document `{full}`"
            walk(sub, full + ".")

    walk(yaml.safe_load(CONFIG_SCHEMA.read_text()), "")
    for col in SHEET_SCHEMA["properties"]:
        assert f"`{col}`" in text


def test_same_file_under_two_sample_ids_is_refused(tmp_path):
    data = {k: list(v) for k, v in GOOD.items()}
    data["raw"][1] = data["raw"][0]
    data["platform"][1], data["spots"][1] = "visium", ""
    with pytest.raises(ConfigError, match="name the same raw .* counted twice"):
        load(write(tmp_path, data))
    data = {k: list(v) for k, v in GOOD.items()}
    data["image"][1] = "./" + data["image"][0]  # the same file spelt another way
    with pytest.raises(ConfigError, match="name the same image"):
        load(write(tmp_path, data))


@pytest.mark.parametrize("col", ["patient_id", "sample_id"])
def test_ids_differing_only_in_case_are_refused(tmp_path, col):
    data = {k: list(v) for k, v in GOOD.items()}
    data[col][1] = data[col][0].lower()
    with pytest.raises(ConfigError, match=f"column '{col}' holds .* differ only in case"):
        load(write(tmp_path, data))


# --------------------------------------------------------------------------- one source of defaults
#: README phrases that stand for a schema default (or for "defaults to a global section")
_PHRASES = {
    "—": "no default",
    "all": "all",
    "all five": ["mean", "labels", "nuclear_rf", "nmf_rf", "neighbours"],
    "global `seed`": "global",
    "global `targets`": "global",
    "global `evaluation`": "global",
}


def _readme_defaults(repo, heading):
    """``{key: default text}`` of the key table under ``heading`` in config/README.md."""
    text = (repo / "config/README.md").read_text()
    block = text.split(heading, 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`([\w.*]+)`", cells[0])
        values = [v.strip() for v in cells[1].split(",")] if len(keys) > 1 else [cells[1]]
        if len(values) != len(keys):
            values = values[:1] * len(keys)
        out.update(dict(zip(keys, values, strict=True)))
    return out


def _value(text):
    if text in _PHRASES:
        return _PHRASES[text]
    try:
        return float(text)
    except ValueError:
        return yaml.safe_load(text) if text else None


def _leaves(node, prefix=""):
    """``{dotted key: schema node}`` of every property, objects included."""
    out = {}
    for key, sub in (node.get("properties") or {}).items():
        out[prefix + key] = sub
        out.update(_leaves(sub, f"{prefix}{key}."))
    return out


def _check_documented(leaves, documented, defaults):
    for key, sub in leaves.items():
        if sub.get("properties") and key not in documented:
            continue  # an object: its keys are listed
        assert key in documented or any(
            k.endswith("*") and key.startswith(k[:-1]) for k in documented
        ), f"{key} is not in config/README.md"
        if key not in documented:
            continue
        got = _value(documented[key])
        if sub.get("properties"):
            assert got in (None, {}, "global"), key  # objects: blank, {} or a global section
            continue
        if got == "no default" or got == "global":
            assert "default" not in sub, f"{key}: README says no default, the schema has one"
            continue
        assert "default" in sub, f"{key}: README gives a default the schema lacks"
        schema_value = sub["default"]
        if got == "all":
            assert schema_value in ([], ""), key  # an empty selection means all sections
            continue
        want = defaults
        for part in key.split("."):
            want = want[part]
        assert want == schema_value, key
        if isinstance(got, float) and not isinstance(schema_value, bool):
            assert schema_value is not None and float(schema_value) == got, (
                f"{key}: README {documented[key]!r}, schema {schema_value!r}"
            )
        else:
            assert got == schema_value, (
                f"{key}: README {documented[key]!r}, schema {schema_value!r}"
            )


def test_readme_schema_and_library_defaults_agree(repo):
    from stpredict.config import CONFIG_SCHEMA, schema_defaults
    from stpredict.learn.experiments import EVALUATION_DEFAULTS, EXPERIMENT_DEFAULTS

    assert CONFIG_SCHEMA == repo / "workflow/schemas/config.schema.yaml"
    schema = load_schema(CONFIG_SCHEMA)
    defaults = schema_defaults(schema)
    assert EVALUATION_DEFAULTS == defaults["evaluation"]
    assert EXPERIMENT_DEFAULTS == schema_defaults(schema["$defs"]["experiment"])
    # the keys that default to a global section have no default of their own
    assert not {"seed", "targets", "evaluation"} & set(EXPERIMENT_DEFAULTS)
    globals_ = {k: v for k, v in _leaves(schema).items() if not k.startswith("experiments.")}
    _check_documented(globals_, _readme_defaults(repo, "## Configuration keys"), defaults)
    _check_documented(
        _leaves(schema["$defs"]["experiment"]),
        _readme_defaults(repo, "## Experiments (`experiments`)"),
        EXPERIMENT_DEFAULTS,
    )


def test_train_config_has_no_defaults_of_its_own():
    import dataclasses

    from stpredict.learn.experiments import resolve_experiment
    from stpredict.learn.train import TrainConfig

    fields = dataclasses.fields(TrainConfig)
    assert all(
        f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        for f in fields
    )
    with pytest.raises(TypeError):
        TrainConfig()
    # the workflow's path: the resolved experiment holds every field but the fold's seed
    cfg = TrainConfig.from_experiment(resolve_experiment({}, {}), seed=4)
    assert {f.name for f in fields} == set(cfg.to_dict())
    assert (cfg.optimiser, cfg.batch_size, cfg.seed) == ("adam", 64, 4)
