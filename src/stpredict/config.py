"""Loading and validating the run configuration and the sample sheet.

Both are checked against the JSON schemas in ``workflow/schemas`` before anything runs. Sheet
errors name the sheet, the row (1-based, as a spreadsheet shows it, header = row 1), the sample
and the column.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from stpredict.errors import ConfigError

__all__ = [
    "SHEET_COLUMNS",
    "OPTIONAL_COLUMNS",
    "load_schema",
    "read_sheet",
    "validate_sheet",
    "check_sheet_paths",
    "sheet_paths",
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


def load_schema(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON schema written in YAML."""
    with open(path) as fh:
        return yaml.safe_load(fh)


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
    df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, comment=None)
    df.columns = [c.strip() for c in df.columns]
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
    for col in OPTIONAL_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    df = df.map(lambda v: v.strip() if isinstance(v, str) else v)
    return df[list(SHEET_COLUMNS)]


def validate_sheet(df: pd.DataFrame, schema: Mapping[str, Any], sheet: str | os.PathLike[str]) -> pd.DataFrame:
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
    dup = df["sample_id"][df["sample_id"].duplicated()].unique().tolist()
    if dup:
        rows = [str(i + 2) for i in df.index[df["sample_id"].isin(dup)]]
        raise ConfigError(
            f"duplicate sample_id {', '.join(dup)} in rows {', '.join(rows)}",
            file=sheet,
            fix="give every section its own sample_id",
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
