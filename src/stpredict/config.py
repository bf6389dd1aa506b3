"""Loading and validating the run configuration and the sample sheet.

Both are checked against the JSON schemas in ``workflow/schemas`` before anything runs. Sheet
errors name the sheet, the row (1-based, as a spreadsheet shows it, header = row 1), the sample
and the column. The config schema is the one source of every default (:func:`schema_defaults`):
Snakemake fills them in when it validates the config, and the library reads the same values
(e.g. :data:`stpredict.learn.experiments.EXPERIMENT_DEFAULTS`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from stpredict.errors import ConfigError

__all__ = [
    "SHEET_COLUMNS",
    "check_training_sheet",
    "empty_sheet",
    "OPTIONAL_COLUMNS",
    "CONFIG_SCHEMA",
    "load_schema",
    "schema_defaults",
    "read_sheet",
    "validate_sheet",
    "check_sheet_paths",
    "sheet_paths",
    "check_run_config",
    "check_config_schema",
]

REQUIRED_COLUMNS = ("sample_id", "patient_id", "platform", "raw")
OPTIONAL_COLUMNS = (
    "spots",
    "image",
    "annotation",
    "clusters",
    "ihc_image",
    "ihc_gene",
    "series",
    "order",
    "mpp",
)
SHEET_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
#: columns holding paths, in the order they are checked
PATH_COLUMNS = ("raw", "spots", "image", "annotation", "clusters", "ihc_image")


#: the schema of the run configuration, which holds every default
CONFIG_SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def load_schema(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON schema written in YAML."""
    with open(path) as fh:
        return yaml.safe_load(fh)


def schema_defaults(node: Mapping[str, Any]) -> Any:
    """Collect the defaults a schema node declares, as Snakemake's ``validate`` fills them in.

    Parameters
    ----------
    node
        A node of a JSON schema (e.g. ``schema["properties"]["evaluation"]`` or
        ``schema["$defs"]["experiment"]``).

    Returns
    -------
    dict or Any
        For an object with ``properties``: a dict of the defaults of its properties, recursively
        (a property without a default anywhere below is left out); otherwise the node's
        ``default`` (a copy).
    """
    props = node.get("properties")
    if not props:
        return copy.deepcopy(node.get("default"))
    out: dict[str, Any] = {}
    for key, sub in props.items():
        if sub.get("properties"):
            value = schema_defaults(sub)
            if value or "default" in sub:
                out[key] = value
        elif "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
    return out


def read_sheet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a sample sheet (TSV, or CSV by extension) as strings; missing optional columns are added empty."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            "sample sheet does not exist",
            file=path,
            fix="set 'samples' in the config to an existing TSV (see config/README.md)",
        )
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    df = _read_cells(path, sep)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(
            f"sample sheet lacks required column(s) {', '.join(missing)} (it has: {', '.join(df.columns)})",
            file=path,
            fix="the header must name at least sample_id, patient_id, platform, raw; a CSV needs the .csv extension",
        )
    unknown = [c for c in df.columns if c not in SHEET_COLUMNS]
    if unknown:
        raise ConfigError(
            f"sample sheet has unknown column(s) {', '.join(unknown)}",
            file=path,
            fix=f"use only {', '.join(SHEET_COLUMNS)} (see config/README.md)",
        )
    df = df.map(lambda v: v.strip() if isinstance(v, str) else v)
    df = df[~(df == "").all(axis=1)]  # lines of empty cells
    if df.empty:
        raise ConfigError(
            "sample sheet has a header but no rows",
            file=path,
            fix="add one row per tissue section (see config/README.md)",
        )
    for col in OPTIONAL_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    return df[list(SHEET_COLUMNS)].reset_index(drop=True)


def _read_cells(path: Path, sep: str) -> pd.DataFrame:
    """Read a delimited sheet cell by cell, refusing rows with more cells than the header.

    (pandas silently turns the first extra column of such a file into the index, shifting every
    value by a column.) Empty trailing cells, as spreadsheets export them, are dropped; missing
    trailing cells are empty. A UTF-8 byte-order mark is ignored.
    """
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh, delimiter=sep)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(
            f"sample sheet cannot be parsed ({' '.join(str(exc).split())})",
            file=path,
            fix="save it as UTF-8 text, tab-separated (or comma-separated with the .csv extension)",
        ) from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ConfigError(
            "sample sheet is empty",
            file=path,
            fix="write a header (sample_id, patient_id, platform, raw, ...) and one row per section",
        )
    header = rows[0]
    while header and not header[-1].strip():
        header = header[:-1]
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise ConfigError(
            f"sample sheet names column(s) {', '.join(dup)} twice",
            file=path,
            fix="keep one column of each name",
        )
    out = []
    for i, row in enumerate(rows[1:]):
        extra = row[len(header) :]
        if any(c.strip() for c in extra):
            raise ConfigError(
                f"row {i + 2} has {len(row)} cells but the header {len(header)} (extra: "
                f"{', '.join(repr(c) for c in extra if c.strip())})",
                file=path,
                sample=row[0] if row and row[0] else None,
                fix="remove the extra cells or add their column to the header; a cell must not contain "
                + ("a comma" if sep == "," else "a tab"),
            )
        out.append(row[: len(header)] + [""] * (len(header) - len(row)))
    return pd.DataFrame(out, columns=header, dtype=str)


def validate_sheet(
    df: pd.DataFrame, schema: Mapping[str, Any], sheet: str | os.PathLike[str]
) -> pd.DataFrame:
    """Validate every row against ``schema`` and the cross-row rules; return the sheet indexed by sample_id.

    Raises
    ------
    ConfigError
        Naming the sheet, the row, the sample and the column of the first problem found.
    """
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    for i, record in enumerate(df.to_dict(orient="records")):
        row_no = i + 2  # header is row 1
        sample = record.get("sample_id") or f"<row {row_no}>"
        errors = sorted(validator.iter_errors(record), key=lambda e: list(e.path))
        if errors:
            err = errors[0]
            column = err.path[0] if err.path else _column_from_required(err)
            value = record.get(column, "") if column else ""
            desc = schema.get("properties", {}).get(column, {}).get("description", "")
            raise ConfigError(
                f"row {row_no}, column '{column}': {err.message}"
                + (f" (got {value!r})" if column and value != "" else ""),
                file=sheet,
                sample=sample,
                fix=desc or "see config/README.md for the sample-sheet columns",
            )
    for i, (sample, mpp) in enumerate(zip(df["sample_id"], df["mpp"], strict=True)):
        if mpp != "" and not float(mpp) > 0:
            raise ConfigError(
                f"row {i + 2}, column 'mpp': the pixel size must be positive (got {mpp!r})",
                file=sheet,
                sample=sample,
                fix="give the image's microns per pixel (e.g. 0.5 at 20x), or leave the cell empty",
            )
    dup = df["sample_id"][df["sample_id"].duplicated()].unique().tolist()
    if dup:
        rows = [str(i + 2) for i in df.index[df["sample_id"].isin(dup)]]
        raise ConfigError(
            f"duplicate sample_id {', '.join(dup)} in rows {', '.join(rows)}",
            file=sheet,
            fix="give every section its own sample_id",
        )
    _check_case_collisions(
        df,
        "sample_id",
        sheet,
        "sample ids that differ only in case collide as file names on "
        "case-insensitive file systems",
    )
    _check_case_collisions(
        df,
        "patient_id",
        sheet,
        "a patient spelt two ways becomes two patients, and a patient-level "
        "split then puts the same patient on both sides",
    )
    # the same file under two sample ids: a section counted twice (train and test of one fold)
    for col in ("raw", "image"):
        filled = df[df[col] != ""]
        norm = filled[col].map(lambda p: os.path.normpath(os.path.abspath(p)))
        twice = filled[norm.duplicated(keep=False)]
        if not twice.empty:
            raise ConfigError(
                f"sections {', '.join(twice['sample_id'])} name the same {col} "
                f"'{twice[col].iloc[0]}': one section would be counted twice (e.g. trained on "
                "and tested on in one fold)",
                file=sheet,
                sample=str(twice["sample_id"].iloc[0]),
                fix=f"give every section its own {col} file, or remove the duplicated row",
            )
    # consecutive sections: (series, order) unique, and a series belongs to one patient
    ser = df[df["series"] != ""]
    if not ser.empty:
        clash = ser[ser.duplicated(["series", "order"], keep=False)]
        if not clash.empty:
            raise ConfigError(
                f"sections {', '.join(clash['sample_id'])} share series '{clash['series'].iloc[0]}' and order '{clash['order'].iloc[0]}'",
                file=sheet,
                fix="give each section of a series a distinct 'order'",
            )
        multi = ser.groupby("series")["patient_id"].nunique()
        bad = multi[multi > 1]
        if not bad.empty:
            raise ConfigError(
                f"series '{bad.index[0]}' spans several patients",
                file=sheet,
                fix="consecutive sections of one block come from one patient; fix patient_id or series",
            )
    return df.set_index("sample_id", drop=False)


def _check_case_collisions(
    df: pd.DataFrame, col: str, sheet: str | os.PathLike[str], why: str
) -> None:
    """Refuse two different values of ``col`` that are equal ignoring case."""
    values = pd.Series(df[col].unique())
    folded = values.str.casefold()
    clash = values[folded.duplicated(keep=False)]
    if len(clash):
        raise ConfigError(
            f"column '{col}' holds {', '.join(repr(v) for v in sorted(clash))}, which differ only "
            f"in case: {why}",
            file=sheet,
            fix=f"spell each {col} the same way in every row",
        )


def _column_from_required(err: Any) -> str | None:
    # "'spots' is a required property" errors have an empty path
    msg = str(err.message)
    if "is a required property" in msg:
        return msg.split("'")[1]
    return None


def sheet_paths(df: pd.DataFrame) -> Iterable[tuple[str, str, str]]:
    """Yield ``(sample_id, column, path)`` for every non-empty path cell."""
    for _, row in df.iterrows():
        for col in PATH_COLUMNS:
            if row[col]:
                yield row["sample_id"], col, row[col]


def check_sheet_paths(
    df: pd.DataFrame, sheet: str | os.PathLike[str], produced: Iterable[str] = ()
) -> None:
    """Fail if a path named in the sheet neither exists nor is made by a rule (``produced``)."""
    made = {os.path.normpath(p) for p in produced}
    for sample, col, path in sheet_paths(df):
        norm = os.path.normpath(path)
        if norm in made or any(norm.startswith(m + os.sep) for m in made):
            continue
        if not os.path.exists(path):
            raise ConfigError(
                f"column '{col}' names a path that does not exist: {path}",
                file=sheet,
                sample=sample,
                fix="correct the path (relative paths are relative to the directory Snakemake runs in)",
            )


def empty_sheet() -> pd.DataFrame:
    """Return a sample sheet without rows (a run with cohorts only), indexed by sample_id."""
    return pd.DataFrame(columns=list(SHEET_COLUMNS), dtype=str).set_index("sample_id", drop=False)


def check_training_sheet(
    df: pd.DataFrame, config: Mapping[str, Any], file: str | os.PathLike[str] | None = None
) -> None:
    """Refuse what the run's own sheet (``samples``) cannot hold (parse time).

    Image-only rows (platform ``image``, no counts) belong in a cohort's sheet
    (``cohorts.{name}.sheet``): nothing can be trained on or scored against them. Experiments
    need a sheet.

    Raises
    ------
    ConfigError
        An image-only row in ``samples``, or experiments without ``samples``.
    """
    sheet = config.get("samples") or ""
    image_rows = df.index[df["platform"] == "image"].tolist() if len(df) else []
    if image_rows:
        raise ConfigError(
            f"the sample sheet has image-only rows (platform 'image': {', '.join(image_rows)}); "
            "the run's sections are trained on and need counts",
            file=sheet,
            sample=image_rows[0],
            fix="move image-only rows to a cohort sheet (cohorts.{name}.sheet, predict_cohort)",
        )
    if not sheet and config.get("experiments"):
        raise ConfigError(
            "experiments are configured but 'samples' names no sample sheet",
            file=file,
            fix="set 'samples' to the sheet of the sections to train on (config/README.md)",
        )


def check_run_config(config: Mapping[str, Any], file: str | os.PathLike[str] | None = None) -> None:
    """Refuse global settings that the schema cannot catch (run at parse time, before any job).

    Parameters
    ----------
    config
        The run configuration after schema validation (defaults filled in).
    file
        The configuration file(s), named in the error.

    Raises
    ------
    ConfigError
        ``patches.fov_um`` and ``patches.fov_px`` both set, or neither.
    """
    patches = config.get("patches", {}) or {}
    fov_um, fov_px = patches.get("fov_um"), patches.get("fov_px")
    if fov_um is not None and fov_px is not None:
        raise ConfigError(
            f"patches.fov_um ({fov_um}) and patches.fov_px ({fov_px}) are both set; the field of view "
            "is given either in micrometres or in native pixels",
            file=file,
            fix="set one of them to null (fov_um is the default; the ST-Net preset uses fov_px: 224)",
        )
    if fov_um is None and fov_px is None:
        raise ConfigError(
            "neither patches.fov_um nor patches.fov_px is set: the patches have no field of view",
            file=file,
            fix="set patches.fov_um (micrometres, e.g. 110) or patches.fov_px (native pixels)",
        )


#: JSON-schema keywords of a numeric range
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _range_text(sub: Mapping[str, Any]) -> str:
    """Describe the numeric range a schema entry allows, e.g. ``in (0, 1]`` or ``>= 1``."""
    lo = sub.get("exclusiveMinimum", sub.get("minimum"))
    hi = sub.get("exclusiveMaximum", sub.get("maximum"))
    lo_b = "(" if "exclusiveMinimum" in sub else "["
    hi_b = ")" if "exclusiveMaximum" in sub else "]"
    if lo is not None and hi is not None:
        return f"in {lo_b}{lo:g}, {hi:g}{hi_b}"
    if lo is not None:
        return f"{'>' if lo_b == '(' else '>='} {lo:g}"
    return f"{'<' if hi_b == ')' else '<='} {hi:g}"


def check_config_schema(
    config: Mapping[str, Any], schema: Mapping[str, Any], file: str | os.PathLike[str] | None = None
) -> None:
    """Validate the configuration against its JSON schema with a one-line error naming the key.

    Snakemake's own ``validate`` (which also fills in the defaults) prints the whole schema of the
    offending key; this names the key (``experiments.demo.tta``), the value, what the schema
    wants and the key's description.

    Raises
    ------
    ConfigError
        For the most relevant schema violation.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    err = best_match(Draft202012Validator(schema).iter_errors(dict(config)))
    if err is None:
        return
    key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    sub = err.schema if isinstance(err.schema, Mapping) else {}
    fix = sub.get("description") or ""
    if err.validator == "additionalProperties" and isinstance(sub.get("properties"), Mapping):
        fix = f"the keys allowed here are {', '.join(sorted(sub['properties']))} (config/README.md)"
    elif err.validator in _BOUNDS:
        fix = f"give a value {_range_text(sub)}" + (f": {fix}" if fix else "")
    elif err.validator == "enum":
        fix = f"use one of {', '.join(map(str, err.validator_value))}" + (
            f" ({fix})" if fix else ""
        )
    message = err.message
    if err.validator == "pattern":  # the regular expression itself helps nobody
        message = f"{err.instance!r} is not an accepted value"
        fix = f"use {fix}" if fix else fix
    raise ConfigError(
        f"config key '{key}': {message}",
        file=file,
        fix=fix or "see config/README.md for the keys and their values",
    )
