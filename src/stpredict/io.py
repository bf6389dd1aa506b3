"""Atomic writing of outputs and checked reading of the workflow's own intermediate files.

Writing: every output goes to a temporary file beside its final path and is renamed onto it only
when complete (:func:`atomic_path`), so no half-written file ever carries a final name; the
file gets the permissions the umask allows (``0666 & ~umask``), like any file a tool writes.

Reading: the workflow's intermediates (``results/sections``, ``results/qc``, ``results/patches``,
``results/experiments``, ``results/features``, ``results/run``) are read with the checked readers
below (:func:`read_h5ad`, :func:`read_table`, :func:`read_json`, :func:`load_npy`,
:func:`load_torch`, or :func:`checked_read` around any other parser). When such a file cannot be
parsed (truncated by a full disk or an interrupted copy, overwritten by hand...) it is
**removed** and an :class:`~stpredict.errors.InputError` says so: the next Snakemake run sees the
file missing and rebuilds it, instead of failing on it forever. Files outside those folders
(raw inputs, the demo cohort, panels, gene maps) are never removed; their error says to replace
them.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stpredict.errors import InputError, StpredictError

__all__ = [
    "atomic_path",
    "write_h5ad",
    "write_table",
    "write_json",
    "WORKFLOW_DIRS",
    "results_root",
    "is_intermediate",
    "checked_read",
    "corrupt_error",
    "read_h5ad",
    "read_table",
    "read_json",
    "load_npy",
    "load_torch",
]

log = logging.getLogger(__name__)

#: folders under the results root that hold files the workflow writes and can rebuild
WORKFLOW_DIRS = ("sections", "qc", "patches", "experiments", "features", "run", "ihc", "wsi")


# ------------------------------------------------------------------------------- writing
def _umask() -> int:
    """Return the process umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file keeps the final suffix (``suffix`` overrides it) so that libraries which
    choose a format from the extension still work. On error the temporary file is removed and
    ``path`` is left untouched, so no half-written output ever carries the final name. The
    finished file gets mode ``0666 & ~umask`` (the temporary file is created ``0600``), so
    outputs are as readable to colleagues as any other file written in that folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sfx = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{sfx}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_h5ad(
    adata: Any,
    path: str | os.PathLike[str],
    spatial_from: Mapping[str, str | os.PathLike[str]] | None = None,
) -> None:
    """Write an AnnData atomically (compressed).

    Parameters
    ----------
    adata
        What to write.
    path
        The output path.
    spatial_from
        Library id -> a written section (or QC) file: its ``uns["spatial"][id]`` (H&E images,
        scale factors, metadata) is copied into the new file as it is stored there, its
        compressed chunks copied without being decoded (HDF5 object copy), so a result file
        gets its section's images for the cost of the bytes. Replaces ``adata``'s own entry.
    """
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression="gzip")
        if spatial_from:
            _copy_spatial(tmp, spatial_from)


def _copy_spatial(dst: Path, sources: Mapping[str, str | os.PathLike[str]]) -> None:
    import h5py

    with h5py.File(dst, "a") as out:
        uns = out.require_group("uns")
        for sample, src in sources.items():
            with checked_read(src, sample=str(sample)) as p, h5py.File(p, "r") as f:
                key = f"uns/spatial/{sample}"
                if key not in f:
                    raise InputError(
                        "the section file has no uns['spatial'] entry for this section",
                        file=src,
                        sample=str(sample),
                        fix="rerun snakemake: results/sections/ are of an older version",
                    )
                if "spatial" not in uns:
                    uns.create_group("spatial").attrs.update(dict(f["uns/spatial"].attrs))
                if str(sample) in uns["spatial"]:
                    del uns["spatial"][str(sample)]
                f.copy(f[key], uns["spatial"], name=str(sample))


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


# ------------------------------------------------------------------------------- reading
def results_root() -> Path:
    """Return the results folder: ``$STPREDICT_RESULTS``, else ``results`` in the working directory."""
    return Path(os.environ.get("STPREDICT_RESULTS") or "results").resolve()


def _relative_to_results(path: str | os.PathLike[str]) -> tuple[str, ...] | None:
    try:
        return Path(path).resolve().relative_to(results_root()).parts
    except (ValueError, OSError):
        return None


def is_intermediate(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file the workflow writes (and rebuilds when it is missing).

    True for files inside one of :data:`WORKFLOW_DIRS` of :func:`results_root`; false for
    anything else (raw inputs, the demo cohort under ``results/demo``, panels, gene maps).
    """
    parts = _relative_to_results(path)
    return bool(parts) and len(parts) >= 2 and parts[0] in WORKFLOW_DIRS


def _sample_of(path: str | os.PathLike[str]) -> str | None:
    """Return the sample id a results path belongs to, when its layout names one."""
    parts = _relative_to_results(path)
    if not parts or len(parts) < 2:
        return None
    if parts[0] in ("sections", "qc") and len(parts) == 2:
        stem = Path(parts[1]).stem
        return None if stem == "summary" else stem
    if parts[0] in ("patches", "features") and len(parts) >= 3:
        return parts[1]
    if parts[0] == "experiments" and len(parts) == 4 and parts[2] == "predictions":
        return Path(parts[3]).stem
    return None


def _protected_siblings(path: Path) -> list[Path]:
    """Write-protected outputs of the job that wrote ``path``, which must go for it to rerun.

    ``train_fold`` writes ``model.pt`` (protected) with ``history.tsv`` and ``fitted.json``:
    Snakemake refuses to rerun a job whose protected output exists, so rebuilding either of the
    other two means removing the model as well.
    """
    parts = _relative_to_results(path)
    if (
        parts
        and len(parts) == 5
        and parts[0] == "experiments"
        and parts[2] == "folds"
        and parts[4] in ("history.tsv", "fitted.json")
    ):
        model = path.parent / "model.pt"
        return [model] if model.exists() else []
    return []


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def corrupt_error(
    path: str | os.PathLike[str],
    exc: BaseException | str,
    *,
    sample: str | None = None,
    intermediate: bool | None = None,
) -> InputError:
    """Build the error for a file that cannot be parsed; an intermediate is removed first.

    Parameters
    ----------
    path
        The unreadable file.
    exc
        What the parser raised (or a description of the problem).
    sample
        The section it belongs to (default: from the path's layout, when it names one).
    intermediate
        Whether the workflow wrote the file and rebuilds it (default :func:`is_intermediate`).
        Only intermediates are removed.
    """
    path = Path(path)
    why = exc if isinstance(exc, str) else _short(exc)
    sample = sample if sample is not None else _sample_of(path)
    if intermediate is None:
        intermediate = is_intermediate(path)
    if intermediate:
        removed = True
        siblings = _protected_siblings(path)
        try:
            if path.is_dir() and not path.is_symlink():
                removed = False
            else:
                path.unlink(missing_ok=True)
                for other in siblings:
                    other.unlink(missing_ok=True)
        except OSError:
            removed = False
        if removed:
            log.error("removed the truncated or corrupt intermediate %s (%s)", path, why)
            also = ""
            if siblings:
                also = (
                    f" with {', '.join(str(s) for s in siblings)} (written by the same job, "
                    "write-protected)"
                )
                log.error("also removed %s so that the job can rerun", siblings)
            return InputError(
                f"workflow output is truncated or corrupt ({why}); it was removed{also}",
                file=path,
                sample=sample,
                fix="rerun snakemake, which rebuilds it",
            )
        return InputError(
            f"workflow output is truncated or corrupt ({why}) and could not be removed",
            file=path,
            sample=sample,
            fix="delete it by hand, then rerun snakemake, which rebuilds it",
        )
    return InputError(
        f"cannot be read: truncated or corrupt ({why})",
        file=path,
        sample=sample,
        fix="replace it with an intact copy (it is an input, not a file the workflow rebuilds)",
    )


@contextlib.contextmanager
def checked_read(
    path: str | os.PathLike[str],
    *,
    sample: str | None = None,
    intermediate: bool | None = None,
) -> Iterator[Path]:
    """Run a parser on ``path``; turn its failure into a one-line :class:`InputError`.

    Put only the parsing inside the block::

        with checked_read(p) as path:
            obj = some_library.read(path)

    A missing file gives "does not exist" (an intermediate: "rerun snakemake"); a permission
    problem is reported as such; any other exception of the parser means the file is truncated
    or corrupt (see :func:`corrupt_error`: an intermediate is removed so the rerun rebuilds it).
    :class:`~stpredict.errors.StpredictError` passes through unchanged.
    """
    path = Path(path)
    sample = sample if sample is not None else _sample_of(path)
    inter = is_intermediate(path) if intermediate is None else intermediate
    if not path.exists():
        raise InputError(
            "file does not exist",
            file=path,
            sample=sample,
            fix="rerun snakemake, which rebuilds it" if inter else "check the path",
        )
    try:
        yield path
    except StpredictError:
        raise
    except (MemoryError, RecursionError):
        raise
    except PermissionError as exc:
        raise InputError(
            f"cannot be read ({_short(exc)})",
            file=path,
            sample=sample,
            fix="give the account running the workflow read access to it",
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENOMEM, errno.EMFILE, errno.ENFILE):
            raise
        if "unable to lock file" in str(exc).lower():  # HDF5 locking on a file system without locks
            raise InputError(
                f"cannot be opened: the file system refuses HDF5's file lock ({_short(exc)})",
                file=path,
                sample=sample,
                fix="export HDF5_USE_FILE_LOCKING=FALSE before running snakemake",
            ) from None
        raise corrupt_error(path, exc, sample=sample, intermediate=inter) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure means the file is unusable
        raise corrupt_error(path, exc, sample=sample, intermediate=inter) from None


def read_h5ad(
    path: str | os.PathLike[str],
    *,
    sample: str | None = None,
    intermediate: bool | None = None,
    images: bool = True,
    **kwargs: Any,
) -> Any:
    """:func:`anndata.read_h5ad`, checked (see :func:`checked_read`).

    ``images=False`` reads everything but the H&E images of ``uns["spatial"]`` (each entry
    keeps its scale factors and metadata, not its ``images``): what the scoring jobs need of a
    result file, without decoding a few MB of pixels per file (``kwargs`` are then not used).
    """
    import anndata as ad

    with checked_read(path, sample=sample, intermediate=intermediate) as p:
        if not images:
            return _read_without_images(p)
        adata = ad.read_h5ad(p, **kwargs)
        if kwargs.get("backed"):
            _ = adata.obs_names  # opened lazily: touch the index so damage shows here
    return adata


def _read_without_images(path: Path) -> Any:
    import anndata as ad
    import h5py
    from anndata.io import read_elem

    parts = ("X", "obs", "var", "obsm", "varm", "obsp", "varp", "layers")
    with h5py.File(path, "r") as f:
        kw = {k: read_elem(f[k]) for k in parts if k in f}
        uns = {}
        for key, elem in f["uns"].items() if "uns" in f else ():
            if key == "spatial":
                uns[key] = {
                    lib: {k: read_elem(v) for k, v in entry.items() if k != "images"}
                    for lib, entry in elem.items()
                }
            else:
                uns[key] = read_elem(elem)
    return ad.AnnData(**kw, uns=uns)


def _check_table_complete(path: Path, sep: str) -> None:
    """Refuse a delimited text file whose last line is cut off (cheap: reads head and tail)."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError("the file is empty")
    with open(path, "rb") as fh:
        header = fh.readline()
        fh.seek(max(0, size - 65536))
        tail = fh.read()
    if not tail.endswith(b"\n"):
        raise ValueError("its last line is cut off (no final newline)")
    body = tail[:-1]
    last = body.rsplit(b"\n", 1)[-1] if b"\n" in body or size <= 65536 else None
    if last is None:
        return
    n_header = len(
        next(csv.reader([header.decode("utf-8", "replace").rstrip("\r\n")], delimiter=sep))
    )
    row = next(csv.reader([last.decode("utf-8", "replace").rstrip("\r")], delimiter=sep), [])
    if len(row) != n_header:
        raise ValueError(f"its last line has {len(row)} fields, the header {n_header}")


def read_table(
    path: str | os.PathLike[str],
    *,
    sample: str | None = None,
    intermediate: bool | None = None,
    sep: str = "\t",
    **kwargs: Any,
) -> pd.DataFrame:
    """:func:`pandas.read_csv` (tab-separated by default), checked.

    Besides parse errors, a table whose last line is cut off (no final newline, or fewer fields
    than the header) counts as truncated. Compressed files (``.gz``...) are only parse-checked.
    """
    with checked_read(path, sample=sample, intermediate=intermediate) as p:
        if p.suffix.lower() not in (".gz", ".bz2", ".xz", ".zip", ".zst"):
            _check_table_complete(p, sep)
        return pd.read_csv(p, sep=sep, **kwargs)


def read_json(
    path: str | os.PathLike[str],
    *,
    sample: str | None = None,
    intermediate: bool | None = None,
) -> Any:
    """Parse a JSON file, checked."""
    with checked_read(path, sample=sample, intermediate=intermediate) as p:
        return json.loads(p.read_text())


def load_npy(
    path: str | os.PathLike[str],
    *,
    mmap_mode: str | None = "r",
    sample: str | None = None,
    intermediate: bool | None = None,
) -> np.ndarray:
    """:func:`numpy.load` of a ``.npy`` file (memory-mapped read-only by default), checked.

    The header is checked against the file size, so a truncated store fails here even when it
    is memory-mapped.
    """
    with checked_read(path, sample=sample, intermediate=intermediate) as p:
        arr = np.load(p, mmap_mode=mmap_mode, allow_pickle=False)
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"not a single array ({type(arr).__name__})")
        if isinstance(arr, np.memmap):
            expected = int(arr.offset) + arr.size * arr.dtype.itemsize
            actual = p.stat().st_size
            if actual != expected:
                raise ValueError(f"{actual} bytes, its header promises {expected}")
    return arr


def load_torch(
    path: str | os.PathLike[str],
    *,
    sample: str | None = None,
    intermediate: bool | None = None,
    map_location: Any = "cpu",
) -> Any:
    """Load a PyTorch file with ``torch.load(path, weights_only=True)``, checked.

    A corrupt ``model.pt`` (an intermediate) is removed, so Snakemake retrains the fold on the
    next run.
    """
    import torch

    with checked_read(path, sample=sample, intermediate=intermediate) as p:
        return torch.load(p, weights_only=True, map_location=map_location)
