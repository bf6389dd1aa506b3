"""Training: a memory-mapped patch dataset, the training config, and a resumable training loop.

The loaders ship uint8 ``(3, S, S)`` patches; conversion to float, augmentation and normalisation
happen on the training device. :func:`train` writes into ``out_dir``:

* ``checkpoint.pt`` — one rolling file, rewritten atomically after every epoch: model, optimiser
  (and fp16 GradScaler) state, RNG states, epoch, best validation loss and epoch, bad-epochs
  counter, history, the training config and the *resume signature* (below). No copy of the best
  weights. Removed once ``model.pt`` is written.
* ``best.pt`` — the best-validation weights, written only when the validation loss improves
  (with its epoch and the signature digest). Removed once ``model.pt`` is written.
* ``history.tsv`` — one row per epoch, columns :data:`HISTORY_COLUMNS`:
  ``epoch``; ``train_loss`` (mean over the epoch's training spots of the per-spot loss — the
  loss averaged over outputs — whatever ``loss_reduction``; with augmentation, as trained);
  ``val_loss`` (the same per-spot mean over validation spots); ``val_sse`` (regression: sum over
  validation spots and outputs of ``(pred - y)**2`` in float64; NaN for classification);
  ``val_n`` (validation spots); ``val_pearson_mean`` (regression: mean over outputs of Pearson r);
  ``val_accuracy`` (classification); ``images_per_s``; ``seconds``; ``lr``; ``precision`` (the
  autocast precision of the backbone: ``bf16``, ``fp16`` or ``fp32``). Validation predictions
  average ``val_tta`` dihedral transforms. Validation columns are NaN without validation data.
* ``model.pt`` — ``{"state_dict", "backbone", "n_outputs", "n_features", "genes", "classes",
  "target_transform", "epoch", "selection", "precision", "config", ...}``: the best-validation
  weights, or the last epoch's without validation.

Resumption: a rerun resumes from ``checkpoint.pt`` only when its signature matches: the whole
training config except ``num_workers``, ``channels_last`` and ``epochs`` (with the *resolved*
precision), the content of a local initial-weights file, the number of outputs, the genes,
classes and target transform name, the datasets' store paths, rows and a digest of their
targets / labels, each patch store's geometry (its ``.json`` sidecar) and a content digest of
its ``.npy`` (blake2b, streamed in chunks: never read into memory), and the caller's
``data_signature`` (e.g. the manifest's spot ids, the fitted transform). Any mismatch, an
unreadable checkpoint, or a checkpoint past the epochs now asked, starts afresh with a log line
saying why — never an error, never old weights. A larger epoch count resumes. A finished run
keeps no checkpoint: its rerun trains afresh.

Exact resumption: every epoch reseeds python, numpy and torch from ``(seed, epoch)`` and the
shuffling order is a function of ``(seed, epoch)`` only, so an interrupted and resumed run ends
with the same weights as an uninterrupted one (on the same device and software; data workers do
no random work).

Precision (``TrainConfig.precision``): the backbone runs under autocast (bf16, or fp16 with a
GradScaler); the head, the loss and TTA averaging always run in fp32 (see
:meth:`stpredict.learn.models.PatchModel.apply_head`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from stpredict.errors import ConfigError, InputError, TrainingInterrupted
from stpredict.io import atomic_path, write_table
from stpredict.learn.augment import make_augment, parse_augmentation, tta_predict
from stpredict.learn.models import PatchModel, build_model

__all__ = [
    "PatchDataset",
    "TrainConfig",
    "train",
    "autocast_context",
    "file_digest",
    "per_spot_loss",
    "resolve_precision",
    "encode_labels",
    "select_device",
    "seed_everything",
]

log = logging.getLogger(__name__)

HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_sse",
    "val_n",
    "val_pearson_mean",
    "val_accuracy",
    "images_per_s",
    "seconds",
    "lr",
    "precision",
]

#: ``TrainConfig.precision`` values
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
#: ``TrainConfig.loss_reduction`` values
LOSS_REDUCTIONS = ("mean", "stnet")
#: version of the checkpoint layout (older checkpoints start afresh)
CHECKPOINT_FORMAT = 2


# --------------------------------------------------------------------------------------------
# labels, metrics, seeding


def encode_labels(
    labels: Sequence[Any] | np.ndarray, exclude: Sequence[Any] | Any | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary cluster labels to contiguous codes ``0..K-1`` for cross-entropy.

    DeepSpaCE's cluster mode assumed 0-based labels without gaps and crashed on 1-based
    clusters or after excluding one; here the classes are the sorted distinct labels that remain.

    Parameters
    ----------
    labels
        One label per spot (ints or strings). Missing labels (``None``, NaN, ``""``) are excluded.
    exclude
        Label or labels to leave out (compared as given and as strings).

    Returns
    -------
    codes : numpy.ndarray
        int64, ``-1`` for excluded/missing spots, else the index into ``classes``.
    classes : numpy.ndarray
        The sorted distinct labels kept; ``classes[codes[i]] == labels[i]``.
    """
    s = pd.Series(np.asarray(labels, dtype=object))
    if exclude is None:
        excl: list[Any] = []
    elif isinstance(exclude, (str, bytes)) or np.isscalar(exclude):
        excl = [exclude]
    else:
        excl = list(exclude)
    excl_str = {str(e) for e in excl}
    missing = s.isna() | (s.astype(str) == "")
    dropped = missing | s.isin(excl) | s.astype(str).isin(excl_str)
    kept = s[~dropped]
    try:
        classes = np.array(sorted(kept.unique()), dtype=object)
    except TypeError:  # mixed types: sort by their text
        classes = np.array(sorted(kept.unique(), key=str), dtype=object)
    if len(classes) and all(isinstance(c, (int, np.integer)) for c in classes):
        classes = classes.astype(np.int64)
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    codes = np.full(len(s), -1, dtype=np.int64)
    codes[~dropped.to_numpy()] = [lookup[v] for v in kept.tolist()]
    if len(classes) < 2:
        log.warning("encode_labels: only %d class(es) remain", len(classes))
    return codes, classes


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(
        np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0]
        % (2**63 - 1)
    )


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cuda_bf16_native(device: torch.device) -> bool:
    """Whether the CUDA device computes bf16 natively (not emulated)."""
    try:
        with torch.cuda.device(device):
            try:
                return bool(torch.cuda.is_bf16_supported(including_emulation=False))
            except TypeError:  # older torch: no including_emulation argument
                return bool(torch.cuda.is_bf16_supported())
    except (RuntimeError, AssertionError, AttributeError):
        return False


def loader_workers(threads: int, device: str | torch.device | None = None) -> int:
    """Data-loader worker processes for a job of ``threads`` threads.

    On CUDA the workers feed the GPU: all threads but one (the main process); on the CPU the
    threads compute and the patches come from a memory map: no workers (their start-up would
    cost more than they save). Resources come from the rule and the profile (``threads``), never
    from the config.
    """
    dev = select_device(device)
    return max(0, int(threads) - 1) if dev.type == "cuda" else 0


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """Return the autocast precision actually used on ``device`` for a ``precision`` setting.

    ``auto``: bf16 on a CUDA device that supports bf16 natively, else fp16 (with a GradScaler)
    on CUDA, fp32 elsewhere (CPU, MPS). ``bf16``, ``fp16`` and ``fp32`` are used as given, on any
    device (the CPU has bf16 and fp16 autocast too, slower than fp32 on most CPUs).

    Returns
    -------
    str
        ``bf16``, ``fp16`` or ``fp32``.
    """
    p = str(precision).lower()
    if p not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'", fix="use auto, bf16, fp16 or fp32")
    dev = torch.device(device)
    if p != "auto":
        if p == "bf16" and dev.type == "cuda" and not _cuda_bf16_native(dev):
            log.warning("precision bf16 on %s: this GPU emulates bf16 (slow); auto uses fp16", dev)
        return p
    if dev.type == "cuda":
        return "bf16" if _cuda_bf16_native(dev) else "fp16"
    return "fp32"


def autocast_context(
    device: str | torch.device, precision: str
) -> contextlib.AbstractContextManager:
    """Autocast for a resolved precision (``bf16``, ``fp16``; ``fp32`` disables autocast).

    Only the backbone is affected: :class:`~stpredict.learn.models.PatchModel` runs its head with
    autocast disabled, in fp32.
    """
    dev = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=dtype)


def per_spot_loss(pred: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Compute the loss of every spot ``(B,)`` in fp32: the mean over outputs of the element loss.

    ``mse``: mean over outputs of ``(pred - y)**2``; ``smoothl1``: mean over outputs of the
    Huber loss (beta 1); ``cross_entropy``: the cross-entropy of the spot's logits (one value per
    spot). :func:`train` reduces it over the batch by its mean (``loss_reduction: mean``) or sum
    (``stnet``: ST-Net's ``sum((pred - y)**2) / n_genes`` summed over the batch).
    """
    pred = pred.float()
    if loss == "cross_entropy":
        return F.cross_entropy(pred, target.long(), reduction="none")
    target = target.float().reshape(pred.shape)
    if loss == "mse":
        return (pred - target).pow(2).mean(1)
    if loss == "smoothl1":
        return F.smooth_l1_loss(pred, target, reduction="none").mean(1)
    raise ConfigError(f"unknown loss '{loss}'", fix="use mse, smoothl1 or cross_entropy")


# --------------------------------------------------------------------------------------------
# signatures (what the weights depend on)


def file_digest(path: str | os.PathLike[str], chunk_bytes: int = 1 << 24) -> str:
    """blake2b digest (hex, 128 bits) of a file's bytes, read in chunks of ``chunk_bytes``.

    Memory use is one chunk whatever the file size (a 750 MB patch store is never read whole).
    """
    h = hashlib.blake2b(digest_size=16)
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


_DIGEST = "blake2b:"


def _array_digest(a: np.ndarray | None) -> str | None:
    if a is None:
        return None
    a = np.ascontiguousarray(a)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return _DIGEST + h.hexdigest()


def _json_digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return _DIGEST + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


#: patch-store geometry keys of the ``.json`` sidecar that the patches depend on
_GEOMETRY_KEYS = ("fov_um", "fov_px", "size_px", "pad_value", "mpp", "image_shape", "spec")


def _store_signature(npy: str) -> dict[str, Any]:
    sidecar = Path(npy).with_suffix(".json")
    geometry: Any = "absent"
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
            geometry = {k: meta.get(k) for k in _GEOMETRY_KEYS}
        except (OSError, ValueError):
            geometry = _DIGEST + file_digest(sidecar)
    return {"geometry": geometry, "content": _DIGEST + file_digest(npy)}


def _dataset_signature(ds: PatchDataset | None) -> dict[str, Any] | None:
    if ds is None:
        return None
    return {
        "n": len(ds),
        "stores": list(ds.stores),
        "rows": _array_digest(np.stack([ds._store_idx, ds._row_idx])),
        "targets": _array_digest(ds.targets),
        "labels": _array_digest(ds.labels),
    }


def _plain(obj: Any) -> Any:
    """JSON round trip: only dicts, lists, strings, numbers, booleans and None remain."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, default=default))


def _short(value: Any) -> Any:
    """Keep short scalars readable; digest anything long (gene lists, transforms)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str) and len(value) <= 80:
        return value
    return _json_digest(value)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _signature_changes(old: Any, new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two signatures (empty when they match)."""
    if not isinstance(old, dict):
        return ["no signature"]
    fo, fn = _flatten(old), _flatten(new)
    out = []
    for k in sorted(set(fo) | set(fn)):
        a, b = fo.get(k, "<absent>"), fn.get(k, "<absent>")
        if json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True):
            continue
        digest = any(isinstance(v, str) and v.startswith(_DIGEST) for v in (a, b))
        text_a, text_b = json.dumps(a), json.dumps(b)
        if digest or len(text_a) + len(text_b) > 120:
            out.append(f"{k} changed")
        else:
            out.append(f"{k} {text_a} -> {text_b}")
    return out


# --------------------------------------------------------------------------------------------
# dataset


class PatchDataset(Dataset):
    """Patches of one or more patch stores, with optional regression targets or class labels.

    Parameters
    ----------
    stores
        Patch store ``.npy`` files (uint8 ``(N, S, S, 3)``, all with the same ``S``).
    rows
        For every store, the row indices to use, in order; the dataset is their concatenation.
    targets
        ``(n, n_targets)`` float targets aligned with the concatenated rows, or ``None``.
    labels
        ``(n,)`` class codes ``0..K-1`` (see :func:`encode_labels`), or ``None``.

    Notes
    -----
    Stores are opened with ``np.load(mmap_mode="r")`` lazily, in the process that reads them
    (each DataLoader worker opens its own maps). Items are ``(uint8 tensor (3, S, S), target)``
    where ``target`` is a float32 vector, an int64 scalar, or an empty float tensor.
    """

    def __init__(
        self,
        stores: Sequence[str | os.PathLike[str]],
        rows: Sequence[np.ndarray],
        targets: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        if len(stores) != len(rows):
            raise InputError(f"{len(stores)} stores but {len(rows)} row arrays")
        if targets is not None and labels is not None:
            raise InputError("give targets or labels, not both")
        self.stores = [str(Path(s)) for s in stores]
        store_idx, row_idx = [], []
        size = None
        for i, (path, r) in enumerate(zip(self.stores, rows, strict=True)):
            if not Path(path).is_file():
                raise InputError(
                    "patch store not found", file=path, fix="run the patch extraction rule first"
                )
            arr = np.load(path, mmap_mode="r")
            if (
                arr.dtype != np.uint8
                or arr.ndim != 4
                or arr.shape[-1] != 3
                or arr.shape[1] != arr.shape[2]
            ):
                raise InputError(
                    f"not a patch store: dtype {arr.dtype}, shape {arr.shape}",
                    file=path,
                    fix="re-run the patch extraction rule",
                )
            if size is not None and arr.shape[1] != size:
                raise InputError(
                    f"patch size {arr.shape[1]} differs from {size} of {self.stores[0]}", file=path
                )
            size = arr.shape[1]
            r = np.asarray(r, dtype=np.int64).ravel()
            if len(r) and (r.min() < 0 or r.max() >= arr.shape[0]):
                raise InputError(f"row indices outside 0..{arr.shape[0] - 1}", file=path)
            store_idx.append(np.full(len(r), i, dtype=np.int64))
            row_idx.append(r)
            del arr
        self.patch_size = int(size or 0)
        self._store_idx = np.concatenate(store_idx) if store_idx else np.zeros(0, np.int64)
        self._row_idx = np.concatenate(row_idx) if row_idx else np.zeros(0, np.int64)
        n = len(self._row_idx)
        self.targets: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self._y: torch.Tensor | None = None
        if targets is not None:
            t = np.asarray(targets, dtype=np.float32)
            t = t.reshape(len(t), -1) if t.ndim == 1 else t
            if t.ndim != 2 or len(t) != n:
                raise InputError(f"targets have shape {t.shape}, expected ({n}, n_targets)")
            if not np.isfinite(t).all():
                raise InputError("targets contain NaN or infinite values")
            self.targets = np.ascontiguousarray(t)
            self._y = torch.from_numpy(self.targets)
        if labels is not None:
            lab = np.asarray(labels)
            if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
                raise InputError(f"labels must be {n} integer codes, got {lab.dtype} {lab.shape}")
            if n and lab.min() < 0:
                raise InputError(
                    "labels contain negative codes (excluded spots)",
                    fix="drop the rows whose encode_labels code is -1",
                )
            self.labels = lab.astype(np.int64)
            self._y = torch.from_numpy(self.labels)
        self._arrays: list[np.ndarray] | None = None

    def __len__(self) -> int:
        """Return the number of patches."""
        return len(self._row_idx)

    @property
    def n_targets(self) -> int:
        """Number of regression targets (0 without targets)."""
        return 0 if self.targets is None else int(self.targets.shape[1])

    def _open(self) -> list[np.ndarray]:
        if self._arrays is None:
            self._arrays = [np.load(s, mmap_mode="r") for s in self.stores]
        return self._arrays

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch ``i`` as uint8 ``(3, S, S)`` and its target."""
        arrays = self._open()
        patch = np.array(arrays[self._store_idx[i]][self._row_idx[i]])  # copy out of the map
        img = torch.from_numpy(patch).permute(2, 0, 1)
        y = self._y[i] if self._y is not None else torch.zeros(0)
        return img, y

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without open memory maps (workers reopen them)."""
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state


def _worker_init(worker_id: int) -> None:
    """Seed python/numpy in a worker from torch's per-worker seed and reopen the stores."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "_arrays"):
        info.dataset._arrays = None


class _EpochSampler(Sampler[int]):
    """A random permutation that depends only on ``(seed, epoch)``."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(_epoch_seed(self.seed + 7919, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


# --------------------------------------------------------------------------------------------
# config


@dataclass(kw_only=True)
class TrainConfig:
    """Training settings: every field is given (no defaults of its own; see :meth:`from_experiment`).

    Attributes
    ----------
    backbone, weights
        See :func:`stpredict.learn.models.build_model` (``weights``: ``none``, ``imagenet`` or a path).
    loss
        ``mse``, ``smoothl1`` (regression) or ``cross_entropy`` (cluster classification).
    optimiser
        ``sgd`` (with ``momentum``) or ``adam``.
    lr, momentum, weight_decay, batch_size
        Optimiser and batch settings.
    epochs
        Maximum (or, without validation data, exact) number of epochs.
    patience
        Stop after this many epochs without improving on the *best* validation loss so far
        (by more than ``min_delta``); ``None`` or 0 disables early stopping.
    augmentation
        ``none``, ``dihedral`` (8 rotations/flips), ``deepspace`` (DeepSpaCE's groups flip, crop,
        color, contrast, random) or ``deepspace:<comma list of groups>`` (e.g. DeepSpaCE's
        README recipe ``deepspace:flip,crop,color,random``); see
        :func:`stpredict.learn.augment.parse_augmentation`.
    num_workers
        DataLoader worker processes.
    seed
        Seed of initialisation, shuffling and augmentation.
    precision
        Autocast precision of the backbone: ``auto`` (bf16 on a CUDA GPU with native bf16, else
        fp16 with a GradScaler on CUDA, fp32 on the CPU), ``bf16``, ``fp16`` (with a GradScaler)
        or ``fp32``. The head, loss and TTA averaging always run in fp32. Replaces the old
        ``amp`` flag (``from_dict`` maps ``amp: true`` to ``auto`` and ``false`` to ``fp32``).
    loss_reduction
        ``mean`` (the batch mean of the per-spot loss: batch-size independent) or ``stnet``
        (its batch *sum*, ST-Net's ``sum((pred - y)**2) / n_genes`` over the batch; for
        ``smoothl1`` and ``cross_entropy`` likewise the sum over the batch of the per-spot mean
        over outputs). The reported losses are per-spot means either way.
    val_tta
        Dihedral transforms averaged for the validation predictions (1 = none, 8 = ST-Net's
        epoch choice on TTA predictions).
    channels_last
        channels-last memory format on CUDA (ignored on the CPU).
    head_init
        ``None`` or ``"zero"``: zero head weights and bias = training mean of each target
        (ST-Net).
    tiny_width
        Width of the ``tiny`` backbone.
    min_delta
        Minimum decrease of the validation loss that counts as an improvement.
    """

    backbone: str
    weights: str
    loss: str
    optimiser: str
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    epochs: int
    patience: int | None
    augmentation: str
    num_workers: int
    seed: int
    precision: str
    loss_reduction: str
    val_tta: int
    channels_last: bool
    head_init: str | None
    tiny_width: int
    min_delta: float

    def __post_init__(self) -> None:
        """Check the values."""
        try:
            parse_augmentation(self.augmentation)
            aug_problem = ""
        except ConfigError as exc:
            aug_problem = f"{exc.problem} ({exc.fix})"
        checks = [
            (
                self.loss in ("mse", "smoothl1", "cross_entropy"),
                f"loss '{self.loss}' (use mse, smoothl1 or cross_entropy)",
            ),
            (self.optimiser in ("sgd", "adam"), f"optimiser '{self.optimiser}' (use sgd or adam)"),
            (not aug_problem, aug_problem),
            (self.lr > 0, f"lr {self.lr} (must be positive)"),
            (self.batch_size >= 1, f"batch_size {self.batch_size}"),
            (self.epochs >= 1, f"epochs {self.epochs}"),
            (self.num_workers >= 0, f"num_workers {self.num_workers}"),
            (self.patience is None or self.patience >= 0, f"patience {self.patience}"),
            (self.head_init in (None, "zero"), f"head_init '{self.head_init}' (use zero)"),
            (
                self.precision in PRECISIONS,
                f"precision '{self.precision}' (use auto, bf16, fp16 or fp32)",
            ),
            (
                self.loss_reduction in LOSS_REDUCTIONS,
                f"loss_reduction '{self.loss_reduction}' (use mean or stnet)",
            ),
            (
                isinstance(self.val_tta, int) and 1 <= self.val_tta <= 8,
                f"val_tta {self.val_tta} (use 1, 4 or 8)",
            ),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ConfigError("invalid training setting(s): " + "; ".join(bad))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the settings."""
        return asdict(self)

    @classmethod
    def from_experiment(
        cls, exp: Mapping[str, Any], seed: int, num_workers: int = 0
    ) -> TrainConfig:
        """Build from a resolved experiment (:func:`stpredict.learn.experiments.resolve_experiment`).

        Its ``model`` (``backbone``, ``weights``, ``tiny_width``) and ``train`` sections hold
        every setting, with the schema's defaults filled in; ``seed`` is the fold's seed.
        ``num_workers`` is a resource, not a setting: the job derives it from its threads
        (:func:`loader_workers`); the weights do not depend on it.
        """
        m = exp["model"]
        return cls(
            backbone=m["backbone"],
            weights=m["weights"],
            tiny_width=int(m["tiny_width"]),
            seed=int(seed),
            num_workers=int(num_workers),
            **exp["train"],
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting unknown keys (the legacy ``amp`` flag is translated)."""
        d = dict(d)
        if "amp" in d:  # configs of model files / checkpoints written before `precision`
            amp = d.pop("amp")
            d.setdefault("precision", "auto" if amp else "fp32")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown training setting(s) {unknown}", fix=f"use only {sorted(known)}"
            )
        return cls(**d)


# settings the weights do not depend on (left out of the resume signature); `epochs` is checked
# on its own: a larger count resumes, a smaller one than the checkpoint's starts afresh
_NOT_IN_SIGNATURE = {"num_workers", "channels_last", "epochs"}


# --------------------------------------------------------------------------------------------
# outputs


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _rng_state(gens: dict[str, torch.Generator]) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "generators": {k: g.get_state() for k, g in gens.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], gens: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    for k, g in gens.items():
        if k in state.get("generators", {}):
            g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# --------------------------------------------------------------------------------------------
# the loop


def _batches(
    loader: DataLoader, device: torch.device, desc: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for xb, yb in tqdm(loader, desc=desc, leave=False, disable=None, mininterval=5.0):
        yield (xb.to(device, non_blocking=True), yb.to(device, non_blocking=True))


def _prepare(
    xb: torch.Tensor,
    model: PatchModel,
    aug: nn.Module | None,
    gen: torch.Generator | None,
    channels_last: bool,
) -> torch.Tensor:
    x = xb.float().div_(255.0)
    if aug is not None:
        x = aug(x, gen)
    x = model.normalize(x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _evaluate(
    model: PatchModel,
    loader: DataLoader,
    cfg: TrainConfig,
    device: torch.device,
    precision: str,
    channels_last: bool,
    classify: bool,
) -> dict[str, float]:
    """Compute validation metrics (eval mode, ``cfg.val_tta`` transforms, head in fp32).

    Returns ``val_loss`` (mean over spots of the per-spot loss), ``val_sse`` (regression: sum of
    squared errors over spots and outputs, float64), ``val_n`` (spots), ``val_pearson_mean``
    and ``val_accuracy``.
    """
    # imported here: stpredict.learn.train (and predict) stay importable without anndata, e.g.
    # by benchmarks/bench_training.py on a bare CUDA image
    from stpredict.evaluate.metrics import pearson_columns

    model.eval()
    preds, trues = [], []
    loss_sum, sse, n = 0.0, 0.0, 0
    with torch.inference_mode():
        for xb, yb in _batches(loader, device, "validation"):
            x = _prepare(xb, model, None, None, channels_last)
            with autocast_context(device, precision):
                out = tta_predict(model, x, n=cfg.val_tta)
            out = out.float()
            loss_sum += float(per_spot_loss(out, yb, cfg.loss).double().sum())
            if not classify:
                sse += float((out.double() - yb.double().reshape(out.shape)).pow(2).sum())
            n += len(xb)
            preds.append(out.cpu().numpy())
            trues.append(yb.cpu().numpy())
    res = {
        "val_loss": math.nan,
        "val_sse": math.nan,
        "val_n": n,
        "val_pearson_mean": math.nan,
        "val_accuracy": math.nan,
    }
    if n == 0:
        return res
    pred, true = np.concatenate(preds), np.concatenate(trues)
    res["val_loss"] = loss_sum / n
    if classify:
        res["val_accuracy"] = float((pred.argmax(1) == true).mean())
    else:
        res["val_sse"] = sse
        r = pearson_columns(pred, true)
        res["val_pearson_mean"] = float(np.nanmean(r)) if np.isfinite(r).any() else math.nan
    return res


def _loader(
    ds: Dataset,
    cfg: TrainConfig,
    cuda: bool,
    sampler: Sampler | None,
    generator: torch.Generator,
    drop_last: bool = False,
) -> DataLoader:
    kwargs: dict[str, Any] = {}
    if cfg.num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=_worker_init)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=cfg.num_workers,
        pin_memory=cuda,
        drop_last=drop_last,
        generator=generator,
        **kwargs,
    )


def _signature(
    cfg: TrainConfig,
    precision: str,
    n_outputs: int,
    train_ds: PatchDataset,
    val_ds: PatchDataset | None,
    genes: Sequence[str] | None,
    classes: Sequence[Any] | None,
    target_transform: str | None,
    data_signature: dict[str, Any] | None,
) -> dict[str, Any]:
    """Everything the trained weights depend on (see the module docstring)."""
    config = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_SIGNATURE}
    config["precision"] = precision  # resolved: `auto` on a bf16 GPU equals `bf16`
    weights_file = None
    if str(cfg.weights).lower() not in ("none", "imagenet", "") and Path(cfg.weights).is_file():
        weights_file = _DIGEST + file_digest(cfg.weights)  # initial weights from a local file
    stores = sorted(set(train_ds.stores) | set(val_ds.stores if val_ds is not None else []))
    extra = {str(k): _short(v) for k, v in _plain(dict(data_signature or {})).items()}
    return _plain(
        {
            "config": config,
            "weights_file": weights_file,
            "n_outputs": int(n_outputs),
            "genes": None if genes is None else _json_digest([str(g) for g in genes]),
            "classes": None if classes is None else _json_digest([str(c) for c in classes]),
            "target_transform": target_transform,
            "train": _dataset_signature(train_ds),
            "val": _dataset_signature(val_ds),
            "stores": {f"[{p}]": _store_signature(p) for p in stores},
            "extra": extra,
        }
    )


def _save_best(model: nn.Module, epoch: int, sig_digest: str, path: Path) -> None:
    _atomic_torch_save(
        {
            "state_dict": {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            },
            "epoch": int(epoch),
            "signature": sig_digest,
        },
        path,
    )


def _remove(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _load_checkpoint(
    ckpt_path: Path, best_path: Path, signature: dict[str, Any], cfg: TrainConfig
) -> dict[str, Any] | None:
    """Return the checkpoint to resume from, or ``None`` (logging why) to start afresh."""
    if not ckpt_path.exists():
        return None
    try:
        ck = torch.load(ckpt_path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable checkpoint
        log.warning(
            "%s: cannot read the checkpoint (%s: %s): starting afresh",
            ckpt_path,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        return None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        log.warning(
            "%s: checkpoint of an older layout (no full data signature): starting afresh", ckpt_path
        )
        return None
    changes = _signature_changes(ck.get("signature"), signature)
    if changes:
        shown = "; ".join(changes[:12]) + (
            f"; and {len(changes) - 12} more" if len(changes) > 12 else ""
        )
        log.warning(
            "%s: the checkpoint was made with other settings or data (%s): starting afresh",
            ckpt_path,
            shown,
        )
        return None
    if int(ck["epoch"]) > cfg.epochs:
        log.warning(
            "%s: the checkpoint is at epoch %d, past the %d epochs now asked: starting afresh",
            ckpt_path,
            int(ck["epoch"]),
            cfg.epochs,
        )
        return None
    if 0 < int(ck["best_epoch"]) < int(ck["epoch"]):  # else the checkpoint's weights are the best
        try:
            best = torch.load(best_path, weights_only=True, map_location="cpu", mmap=True)
            ok = int(best["epoch"]) == int(ck["best_epoch"]) and best["signature"] == _json_digest(
                signature
            )
            why = f"holds epoch {best['epoch']}, not {ck['best_epoch']}"
        except Exception as exc:  # noqa: BLE001 - absent or unreadable: cannot resume
            ok, why = False, f"cannot be read ({type(exc).__name__})"
        if not ok:
            log.warning("%s: the best weights %s %s: starting afresh", ckpt_path, best_path, why)
            return None
    return ck


def train(
    cfg: TrainConfig,
    train_ds: PatchDataset,
    val_ds: PatchDataset | None,
    out_dir: str | os.PathLike[str],
    resume: bool = True,
    *,
    genes: Sequence[str] | None = None,
    classes: Sequence[Any] | None = None,
    target_transform: str | None = None,
    data_signature: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    stop_after_epoch: int | None = None,
    model_path: str | os.PathLike[str] | None = None,
    history_path: str | os.PathLike[str] | None = None,
    model_hook: Callable[[PatchModel], None] | None = None,
) -> dict[str, Any]:
    """Train a :class:`~stpredict.learn.models.PatchModel`; resumable, with one rolling checkpoint.

    Parameters
    ----------
    cfg
        Training settings.
    train_ds
        Training patches with ``targets`` (regression) or ``labels`` (``cross_entropy``).
    val_ds
        Validation patches, or ``None`` to train exactly ``cfg.epochs`` epochs and keep the last
        weights (ST-Net's final retrain for an epoch count chosen on inner folds).
    out_dir
        Folder for the scratch files ``checkpoint.pt`` and ``best.pt`` (both removed at the end)
        and, unless ``model_path`` / ``history_path`` say otherwise, ``model.pt`` and
        ``history.tsv`` (the loss curves are drawn by
        :func:`stpredict.plot.scores.plot_loss_curves`).
    resume
        Continue from ``out_dir/checkpoint.pt`` when its signature matches (``False``: start
        afresh). A mismatch starts afresh too, logging what changed.
    genes
        Names of the targets (saved in ``model.pt``; part of the resume signature).
    classes
        Class labels of the codes 0..K-1 (``cross_entropy``; default ``0..max(label)``).
    target_transform
        Name of the target transform (saved in ``model.pt``; part of the resume signature).
    data_signature
        What else the data depend on, from the caller (e.g. the manifest's spot ids of train and
        val in order, the fitted transform): a JSON-able dict; long values are digested.
    device
        Force a device; default CUDA when available, else the CPU.
    callback
        Called as ``callback(epoch, history_row)`` after each epoch's checkpoint is written.
    stop_after_epoch
        Raise :class:`TrainingInterrupted` after this epoch's checkpoint (tests, simulations).
    model_path, history_path
        Where to write the model and the history (the rule's declared outputs).
    model_hook
        Called on every freshly built model before training (e.g. the students' noise of
        :func:`stpredict.learn.rounds.student_noise`: forward hooks, dropout rates). It is not
        part of the resume signature: describe what it does in ``data_signature``.

    Returns
    -------
    dict
        ``epoch`` (chosen), ``epochs_run``, ``best_val_loss``, ``stopped_early``, ``device``,
        ``precision`` (resolved), ``images_per_s`` (last epoch), ``resumed_from`` (epoch of the
        checkpoint resumed, 0 for a fresh start), and the paths ``model``, ``history``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
    model_path = Path(model_path) if model_path is not None else out / "model.pt"
    hist_path = Path(history_path) if history_path is not None else out / "history.tsv"
    dev = select_device(device)
    cuda = dev.type == "cuda"
    precision = resolve_precision(cfg.precision, dev)
    channels_last = cuda and cfg.channels_last
    classify = cfg.loss == "cross_entropy"
    n_outputs, val_ds = _check_datasets(cfg, train_ds, val_ds, genes, classes)

    # ---- model, optimiser, loss
    head_bias = None
    if cfg.head_init == "zero" and not classify:
        head_bias = train_ds.targets.mean(0)  # type: ignore[union-attr]

    def fresh() -> tuple[PatchModel, torch.optim.Optimizer, torch.amp.GradScaler | None]:
        return _fresh_model(cfg, n_outputs, head_bias, dev, precision, channels_last, model_hook)

    aug = make_augment(cfg.augmentation)
    aug_gen = torch.Generator()
    loader_gen = torch.Generator().manual_seed(cfg.seed)

    # ---- state, possibly resumed
    signature = _signature(
        cfg,
        precision,
        n_outputs,
        train_ds,
        val_ds,
        genes,
        classes,
        target_transform,
        data_signature,
    )
    sig_digest = _json_digest(signature)
    model, opt, scaler, state = _resume_or_start(
        fresh,
        cfg,
        resume,
        out,
        (ckpt_path, best_path, model_path),
        signature,
        sig_digest,
        {"loader": loader_gen, "augment": aug_gen},
    )
    resumed_from = int(state["epoch"])

    n = len(train_ds)
    drop_last = n > cfg.batch_size and n % cfg.batch_size == 1  # no batch of one (BatchNorm)
    sampler = _EpochSampler(n, cfg.seed)
    train_loader = _loader(train_ds, cfg, cuda, sampler, loader_gen, drop_last)
    val_loader = None if val_ds is None else _loader(val_ds, cfg, cuda, None, loader_gen)
    acc_dtype = torch.float32 if dev.type == "mps" else torch.float64

    patience = cfg.patience or 0
    start = state["epoch"] + 1
    if state["stopped"]:
        log.info("%s: training had stopped early at epoch %d", out, state["epoch"])
    elif state["epoch"] >= cfg.epochs:
        log.info("%s: all %d epochs done", out, state["epoch"])
    last_ips = math.nan
    for epoch in range(start, cfg.epochs + 1):
        if state["stopped"]:
            break
        # everything random in this epoch is a function of (seed, epoch): exact resumption
        eseed = _epoch_seed(cfg.seed, epoch)
        seed_everything(eseed)
        aug_gen.manual_seed(eseed + 1)
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        train_loss, seen, train_secs = _train_epoch(
            model,
            train_loader,
            opt,
            scaler,
            cfg,
            dev,
            precision,
            channels_last,
            aug,
            aug_gen,
            acc_dtype,
            f"epoch {epoch}/{cfg.epochs}",
        )
        if not math.isfinite(train_loss):
            raise ConfigError(
                f"the training loss became {train_loss} in epoch {epoch}",
                fix="lower lr, check the targets, or set train.precision: fp32",
            )
        val = {
            "val_loss": math.nan,
            "val_sse": math.nan,
            "val_n": 0,
            "val_pearson_mean": math.nan,
            "val_accuracy": math.nan,
        }
        improved = False
        if val_loader is not None:
            val = _evaluate(model, val_loader, cfg, dev, precision, channels_last, classify)
            improved = val["val_loss"] < state["best_val_loss"] - cfg.min_delta
            if improved:
                state.update(best_val_loss=val["val_loss"], best_epoch=epoch, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
        last_ips = seen / train_secs if train_secs > 0 else math.nan
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            **val,
            "images_per_s": last_ips,
            "seconds": time.perf_counter() - t0,
            "lr": opt.param_groups[0]["lr"],
            "precision": precision,
        }
        state["history"].append(row)
        state["epoch"] = epoch
        if val_loader is not None and patience and state["bad_epochs"] >= patience:
            state["stopped"] = True
        log.info(
            "epoch %d/%d: train %.4g, val %.4g, pearson %.3f, %.1f img/s%s",
            epoch,
            cfg.epochs,
            train_loss,
            val["val_loss"],
            val["val_pearson_mean"],
            last_ips,
            " (early stop)" if state["stopped"] else "",
        )
        _atomic_torch_save(
            {
                **state,
                "format": CHECKPOINT_FORMAT,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scaler": None if scaler is None else scaler.state_dict(),
                "rng": _rng_state({"loader": loader_gen, "augment": aug_gen}),
                "config": cfg.to_dict(),
                "signature": signature,
            },
            ckpt_path,
        )
        if improved:
            # after checkpoint.pt: a kill in between leaves a checkpoint whose best epoch is its
            # own epoch, and a resume rewrites best.pt from the checkpoint's weights
            _save_best(model, epoch, sig_digest, best_path)
        write_table(pd.DataFrame(state["history"], columns=HISTORY_COLUMNS), hist_path)
        if callback is not None:
            callback(epoch, row)
        if stop_after_epoch is not None and epoch == stop_after_epoch:
            raise TrainingInterrupted(f"stopped after epoch {epoch} as requested")

    # ---- final weights
    if not state["history"]:
        raise InputError("no epoch was trained", file=ckpt_path)
    weights, chosen, selection = _final_weights(
        model, state, val_loader is not None, best_path, sig_digest
    )
    meta = {
        "state_dict": weights,
        "backbone": cfg.backbone,
        "tiny_width": cfg.tiny_width,
        "n_outputs": n_outputs,
        "n_features": model.n_features,
        "patch_size": train_ds.patch_size,
        "genes": None if genes is None else [str(g) for g in genes],
        "classes": None
        if not classify
        else [str(c) for c in (classes if classes is not None else range(n_outputs))],
        "task": "classification" if classify else "regression",
        "target_transform": target_transform,
        "epoch": int(chosen),
        "selection": selection,
        "best_val_loss": float(state["best_val_loss"]),
        "precision": precision,
        "loss_reduction": cfg.loss_reduction,
        "val_tta": int(cfg.val_tta),
        "config": cfg.to_dict(),
    }
    _atomic_torch_save(meta, model_path)
    write_table(pd.DataFrame(state["history"], columns=HISTORY_COLUMNS), hist_path)
    _remove(ckpt_path, best_path)  # model.pt holds the result
    log.info("%s: wrote %s (epoch %d, %s, %s)", out, model_path, chosen, selection, precision)
    return {
        "epoch": int(chosen),
        "epochs_run": int(state["epoch"]),
        "best_val_loss": float(state["best_val_loss"]),
        "stopped_early": bool(state["stopped"]),
        "device": str(dev),
        "precision": precision,
        "images_per_s": last_ips,
        "resumed_from": resumed_from,
        "model": str(model_path),
        "history": str(hist_path),
    }


def _check_datasets(
    cfg: TrainConfig,
    train_ds: PatchDataset,
    val_ds: PatchDataset | None,
    genes: Sequence[str] | None,
    classes: Sequence[Any] | None,
) -> tuple[int, PatchDataset | None]:
    """Return the number of outputs and the validation set (``None`` when empty); refuse unfit data."""
    classify = cfg.loss == "cross_entropy"
    if len(train_ds) == 0:
        raise InputError("the training set is empty")
    if classify:
        if train_ds.labels is None:
            raise InputError("cross_entropy needs a training set with labels")
        n_outputs = len(classes) if classes is not None else int(train_ds.labels.max()) + 1
        for name, ds in (("training", train_ds), ("validation", val_ds)):
            if ds is not None and (ds.labels is None or (len(ds) and ds.labels.max() >= n_outputs)):
                raise InputError(
                    f"{name} labels must be codes 0..{n_outputs - 1}",
                    fix="encode the labels with encode_labels",
                )
    else:
        if train_ds.targets is None:
            raise InputError(f"loss '{cfg.loss}' needs a training set with targets")
        n_outputs = train_ds.n_targets
        if val_ds is not None and val_ds.n_targets != n_outputs:
            raise InputError(f"validation has {val_ds.n_targets} targets, training {n_outputs}")
    if genes is not None and not classify and len(genes) != n_outputs:
        raise InputError(f"{len(genes)} gene names for {n_outputs} targets")
    if val_ds is not None and len(val_ds) == 0:
        log.warning("the validation set is empty: training without validation")
        val_ds = None
    return n_outputs, val_ds


def _fresh_model(
    cfg: TrainConfig,
    n_outputs: int,
    head_bias: np.ndarray | None,
    dev: torch.device,
    precision: str,
    channels_last: bool,
    model_hook: Callable[[PatchModel], None] | None = None,
) -> tuple[PatchModel, torch.optim.Optimizer, torch.amp.GradScaler | None]:
    """Build a freshly initialised model (seeded), its optimiser and, for fp16, a GradScaler.

    ``model_hook`` is applied to the model before the optimiser is made.
    """
    seed_everything(cfg.seed)
    m = build_model(
        cfg.backbone,
        n_outputs,
        weights=cfg.weights,
        head_init=cfg.head_init,
        head_bias=head_bias,
        tiny_width=cfg.tiny_width,
    ).to(dev)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    if model_hook is not None:
        model_hook(m)
    if cfg.optimiser == "sgd":
        o: torch.optim.Optimizer = torch.optim.SGD(
            m.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        o = torch.optim.Adam(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sc = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
    return m, o, sc


def _fresh_state() -> dict[str, Any]:
    return {
        "epoch": 0,
        "best_val_loss": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "stopped": False,
        "history": [],
    }


def _resume_or_start(
    fresh: Callable[[], tuple[PatchModel, torch.optim.Optimizer, torch.amp.GradScaler | None]],
    cfg: TrainConfig,
    resume: bool,
    out: Path,
    paths: tuple[Path, Path, Path],
    signature: dict[str, Any],
    sig_digest: str,
    gens: dict[str, torch.Generator],
) -> tuple[PatchModel, torch.optim.Optimizer, torch.amp.GradScaler | None, dict[str, Any]]:
    """Return model, optimiser, scaler and loop state: resumed from a matching checkpoint, else fresh.

    A fresh start removes the leftovers of another run (checkpoint, best weights, model), so they
    can never be taken for this run's.
    """
    ckpt_path, best_path, model_path = paths
    model, opt, scaler = fresh()
    state = _fresh_state()
    ck = None
    if resume:
        ck = _load_checkpoint(ckpt_path, best_path, signature, cfg)
    elif ckpt_path.exists():
        log.info("resume=False: ignoring the existing %s", ckpt_path)
    if ck is not None:
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if scaler is not None:
                scaler.load_state_dict(ck["scaler"])
            _set_rng_state(ck["rng"], gens)
            state = {k: ck[k] for k in state}
            if state["best_epoch"] and state["best_epoch"] == state["epoch"]:
                _save_best(model, state["epoch"], sig_digest, best_path)  # may not be written
            log.info("resuming %s from epoch %d", out, state["epoch"])
        except Exception as exc:  # noqa: BLE001 - an inconsistent checkpoint: start afresh
            log.warning(
                "%s: cannot restore the checkpoint (%s: %s): starting afresh",
                ckpt_path,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            ck = None
            model, opt, scaler = fresh()
            gens["loader"].manual_seed(cfg.seed)
            state = _fresh_state()
    if ck is None:  # leftovers of another run must not be taken for this one's
        stale = [p for p in (ckpt_path, best_path, model_path) if p.exists()]
        if stale:
            log.info("%s: starting afresh, removing %s", out, ", ".join(p.name for p in stale))
        _remove(ckpt_path, best_path, model_path)
    return model, opt, scaler, state


def _train_step(
    model: PatchModel,
    xb: torch.Tensor,
    yb: torch.Tensor,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    cfg: TrainConfig,
    dev: torch.device,
    precision: str,
    channels_last: bool,
    aug: nn.Module | None,
    aug_gen: torch.Generator,
) -> torch.Tensor:
    """Run one optimiser step on a uint8 batch already on the device; return its per-spot losses.

    The batch is converted to float, augmented, normalised (:func:`_prepare`), passed through the
    model under the backbone's autocast, and the loss reduced as ``cfg.loss_reduction`` says is
    back-propagated (through the GradScaler for fp16). The returned ``(B,)`` fp32 losses are
    detached; nothing here synchronises with the device.
    """
    x = _prepare(xb, model, aug, aug_gen, channels_last)
    with autocast_context(dev, precision):
        pred = model(x)  # the head runs in fp32 inside
    per_spot = per_spot_loss(pred, yb, cfg.loss)  # fp32
    loss = per_spot.sum() if cfg.loss_reduction == "stnet" else per_spot.mean()
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    return per_spot.detach()


def _train_epoch(
    model: PatchModel,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    cfg: TrainConfig,
    dev: torch.device,
    precision: str,
    channels_last: bool,
    aug: nn.Module | None,
    aug_gen: torch.Generator,
    acc_dtype: torch.dtype,
    desc: str,
) -> tuple[float, int, float]:
    """Run one pass over the training loader; return the mean per-spot loss, spots seen, seconds."""
    model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=dev, dtype=acc_dtype)
    seen = 0
    for xb, yb in _batches(loader, dev, desc):
        per_spot = _train_step(
            model, xb, yb, opt, scaler, cfg, dev, precision, channels_last, aug, aug_gen
        )
        loss_sum += per_spot.sum().to(acc_dtype)
        seen += len(xb)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return float(loss_sum) / max(seen, 1), seen, time.perf_counter() - t0


def _final_weights(
    model: PatchModel, state: dict[str, Any], validated: bool, best_path: Path, sig_digest: str
) -> tuple[dict[str, torch.Tensor], int, str]:
    """Return the weights model.pt keeps: the best validation epoch's, else the last epoch's."""
    if validated and state["best_epoch"] > 0:
        best = torch.load(best_path, weights_only=True, map_location="cpu")
        if int(best["epoch"]) != int(state["best_epoch"]) or best["signature"] != sig_digest:
            raise InputError(
                f"best.pt holds epoch {best['epoch']}, not the best epoch {state['best_epoch']}",
                file=best_path,
                fix="delete checkpoint.pt and best.pt to retrain",
            )
        return best["state_dict"], int(state["best_epoch"]), "best_val_loss"
    weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return weights, int(state["epoch"]), "last_epoch"
