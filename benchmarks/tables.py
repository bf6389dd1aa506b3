"""The benchmark tables: rows merged into a TSV kept across runs, and their Markdown form."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd


def merge_rows(new: pd.DataFrame, out: str | Path, key: Sequence[str]) -> pd.DataFrame:
    """Write ``new`` to ``out``, keeping the rows of ``out`` whose ``key`` ``new`` does not hold.

    An ``out`` with other columns (an older table layout) is replaced. Returns the whole table.
    """
    from stpredict.io import write_table

    out, key = Path(out), list(key)
    if new.empty:
        return new
    if out.exists():
        old = pd.read_csv(out, sep="\t")
        if list(old.columns) == list(new.columns):
            old_key = old[key].astype(str).agg("|".join, axis=1)
            new_key = set(new[key].astype(str).agg("|".join, axis=1))
            new = pd.concat([old[~old_key.isin(new_key)], new], ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(new, out)
    return new


def markdown(df: pd.DataFrame, columns: Sequence[str], empty: str = "(no rows)") -> str:
    """``columns`` of ``df`` as a Markdown table; ``empty`` when it has no rows."""
    return empty if df.empty else df[list(columns)].to_markdown(index=False)
