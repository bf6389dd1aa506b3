"""Atomic writing of outputs (write to a temporary path, then rename) and small I/O helpers."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "atomic_path",
    "write_h5ad",
    "write_table",
    "write_json",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file keeps the final suffix (``suffix`` overrides it) so that libraries which
    choose a format from the extension still work. On error the temporary file is removed and
    ``path`` is left untouched, so no half-written output ever carries the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sfx = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{sfx}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_h5ad(adata: Any, path: str | os.PathLike[str]) -> None:
    """Write an AnnData atomically (compressed)."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression="gzip")


def write_table(df: pd.DataFrame, path: str | os.PathLike[str], index: bool = False) -> None:
    """Write a tab-separated table atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=index)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write JSON atomically, converting numpy scalars and arrays."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
