"""Training: a memory-mapped patch dataset, the training config, and a resumable training loop.

The loaders ship uint8 ``(3, S, S)`` patches; conversion to float, augmentation and normalisation
happen on the training device. :func:`train` writes into ``out_dir``:

* ``checkpoint.pt`` — after every epoch, atomically: model, optimiser, epoch, RNG states, best
  validation loss (and the best weights), the bad-epochs counter and the history. A rerun
  resumes from it automatically.
* ``history.tsv`` — one row per epoch: ``epoch, train_loss, val_loss, val_pearson_mean,
  val_accuracy, images_per_s, seconds, lr``.
* ``loss.png`` — the loss curves.
* ``model.pt`` — ``{"state_dict", "backbone", "n_outputs", "n_features", "genes", "classes",
  "target_transform", "epoch", "selection", "config", ...}``: the best-validation weights, or
  the last epoch's without validation.

Exact resumption: every epoch reseeds python, numpy and torch from ``(seed, epoch)`` and the
shuffling order is a function of ``(seed, epoch)`` only, so an interrupted and resumed run ends
with the same weights as an uninterrupted one (on the same device and software; data workers do
no random work).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from stpredict.augment import make_augment, parse_augmentation
from stpredict.errors import ConfigError, InputError, StpredictError
from stpredict.io import atomic_path, write_table
from stpredict.models import PatchModel, build_model

__all__ = [
    "PatchDataset",
    "TrainConfig",
    "TrainingInterrupted",
    "train",
    "encode_labels",
    "pearson_per_output",
    "select_device",
    "seed_everything",
]

log = logging.getLogger(__name__)

HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_pearson_mean",
    "val_accuracy",
    "images_per_s",
    "seconds",
    "lr",
]


class TrainingInterrupted(RuntimeError):
    """Raised by :func:`train` when ``stop_after_epoch`` is reached (simulates a killed job)."""


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


def pearson_per_output(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson correlation of every column of ``pred`` with ``true`` (NaN for constant columns)."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.ndim == 1:
        p, t = p[:, None], t[:, None]
    p = p - p.mean(0)
    t = t - t.mean(0)
    denom = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p * t).sum(0) / denom
    r[~np.isfinite(r)] = np.nan
    return r


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0]
               % (2**63 - 1))


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
                raise InputError("patch store not found", file=path,
                                 fix="run the patch extraction rule first")
            arr = np.load(path, mmap_mode="r")
            if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 \
                    or arr.shape[1] != arr.shape[2]:
                raise InputError(f"not a patch store: dtype {arr.dtype}, shape {arr.shape}",
                                 file=path, fix="re-run the patch extraction rule")
            if size is not None and arr.shape[1] != size:
                raise InputError(f"patch size {arr.shape[1]} differs from {size} of "
                                 f"{self.stores[0]}", file=path)
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
                raise InputError("labels contain negative codes (excluded spots)",
                                 fix="drop the rows whose encode_labels code is -1")
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


@dataclass
class TrainConfig:
    """Training settings.

    Attributes
    ----------
    backbone, weights
        See :func:`stpredict.models.build_model` (``weights``: ``none``, ``imagenet`` or a path).
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
        :func:`stpredict.augment.parse_augmentation`.
    num_workers
        DataLoader worker processes.
    seed
        Seed of initialisation, shuffling and augmentation.
    amp
        bf16 autocast on CUDA (ignored on the CPU).
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

    backbone: str = "tiny"
    weights: str = "none"
    loss: str = "mse"
    optimiser: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 10
    patience: int | None = None
    augmentation: str = "dihedral"
    num_workers: int = 0
    seed: int = 0
    amp: bool = True
    channels_last: bool = True
    head_init: str | None = None
    tiny_width: int = 8
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        """Check the values."""
        try:
            parse_augmentation(self.augmentation)
            aug_problem = ""
        except ConfigError as exc:
            aug_problem = f"{exc.problem} ({exc.fix})"
        checks = [
            (self.loss in ("mse", "smoothl1", "cross_entropy"),
             f"loss '{self.loss}' (use mse, smoothl1 or cross_entropy)"),
            (self.optimiser in ("sgd", "adam"), f"optimiser '{self.optimiser}' (use sgd or adam)"),
            (not aug_problem, aug_problem),
            (self.lr > 0, f"lr {self.lr} (must be positive)"),
            (self.batch_size >= 1, f"batch_size {self.batch_size}"),
            (self.epochs >= 1, f"epochs {self.epochs}"),
            (self.num_workers >= 0, f"num_workers {self.num_workers}"),
            (self.patience is None or self.patience >= 0, f"patience {self.patience}"),
            (self.head_init in (None, "zero"), f"head_init '{self.head_init}' (use zero)"),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ConfigError("invalid training setting(s): " + "; ".join(bad))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the settings."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training setting(s) {unknown}",
                              fix=f"use only {sorted(known)}")
        return cls(**d)


# settings a resumed run may change without invalidating the checkpoint
_RESUMABLE_CHANGES = {"epochs", "num_workers", "patience", "min_delta", "amp", "channels_last"}


# --------------------------------------------------------------------------------------------
# outputs


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _plot_history(history: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], marker="o", label="train")
    val = [h["val_loss"] for h in history]
    if any(np.isfinite(v) for v in val):
        ax.plot(ep, val, marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _rng_state(gens: dict[str, torch.Generator]) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
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
    xb: torch.Tensor, model: PatchModel, aug: nn.Module | None, gen: torch.Generator | None,
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
    model: PatchModel, loader: DataLoader, loss_fn: nn.Module, device: torch.device,
    autocast: bool, channels_last: bool, classify: bool,
) -> tuple[float, float, float]:
    model.eval()
    preds, trues = [], []
    total, n = 0.0, 0
    with torch.inference_mode():
        for xb, yb in _batches(loader, device, "validation"):
            x = _prepare(xb, model, None, None, channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model(x)
            out = out.float()
            total += float(loss_fn(out, yb)) * len(xb)
            n += len(xb)
            preds.append(out.cpu().numpy())
            trues.append(yb.cpu().numpy())
    if n == 0:
        return math.nan, math.nan, math.nan
    pred, true = np.concatenate(preds), np.concatenate(trues)
    if classify:
        return total / n, math.nan, float((pred.argmax(1) == true).mean())
    r = pearson_per_output(pred, true)
    pearson = float(np.nanmean(r)) if np.isfinite(r).any() else math.nan
    return total / n, pearson, math.nan


def _loader(ds: Dataset, cfg: TrainConfig, cuda: bool, sampler: Sampler | None,
            generator: torch.Generator, drop_last: bool = False) -> DataLoader:
    kwargs: dict[str, Any] = {}
    if cfg.num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=_worker_init)
    return DataLoader(
        ds, batch_size=cfg.batch_size, sampler=sampler, shuffle=False,
        num_workers=cfg.num_workers, pin_memory=cuda, drop_last=drop_last,
        generator=generator, **kwargs,
    )


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
    device: str | torch.device | None = None,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Train a :class:`~stpredict.models.PatchModel`; resumable, with per-epoch checkpoints.

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
        Folder for ``checkpoint.pt``, ``history.tsv``, ``loss.png``, ``model.pt``.
    resume
        Continue from ``out_dir/checkpoint.pt`` when present (``False``: start afresh).
    genes
        Names of the targets (saved in ``model.pt``).
    classes
        Class labels of the codes 0..K-1 (``cross_entropy``; default ``0..max(label)``).
    target_transform
        Name of the target transform (saved in ``model.pt``).
    device
        Force a device; default CUDA when available, else the CPU.
    callback
        Called as ``callback(epoch, history_row)`` after each epoch's checkpoint is written.
    stop_after_epoch
        Raise :class:`TrainingInterrupted` after this epoch's checkpoint (tests, simulations).

    Returns
    -------
    dict
        ``epoch`` (chosen), ``epochs_run``, ``best_val_loss``, ``stopped_early``, ``device``,
        ``images_per_s`` (last epoch), and the paths ``model``, ``history``, ``checkpoint``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, model_path = out / "checkpoint.pt", out / "model.pt"
    hist_path, plot_path = out / "history.tsv", out / "loss.png"
    dev = select_device(device)
    cuda = dev.type == "cuda"
    autocast = cuda and cfg.amp
    channels_last = cuda and cfg.channels_last
    classify = cfg.loss == "cross_entropy"

    # ---- outputs and data checks
    if len(train_ds) == 0:
        raise InputError("the training set is empty")
    if classify:
        if train_ds.labels is None:
            raise InputError("cross_entropy needs a training set with labels")
        n_outputs = len(classes) if classes is not None else int(train_ds.labels.max()) + 1
        for name, ds in (("training", train_ds), ("validation", val_ds)):
            if ds is not None and (ds.labels is None or (len(ds) and ds.labels.max() >= n_outputs)):
                raise InputError(f"{name} labels must be codes 0..{n_outputs - 1}",
                                 fix="encode the labels with encode_labels")
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

    # ---- model, optimiser, loss
    seed_everything(cfg.seed)
    head_bias = None
    if cfg.head_init == "zero" and not classify:
        head_bias = train_ds.targets.mean(0)  # type: ignore[union-attr]
    model = build_model(cfg.backbone, n_outputs, weights=cfg.weights, head_init=cfg.head_init,
                        head_bias=head_bias, tiny_width=cfg.tiny_width).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.optimiser == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn: nn.Module = {"mse": nn.MSELoss(), "smoothl1": nn.SmoothL1Loss(),
                          "cross_entropy": nn.CrossEntropyLoss()}[cfg.loss]
    aug = make_augment(cfg.augmentation)
    aug_gen = torch.Generator()
    loader_gen = torch.Generator().manual_seed(cfg.seed)

    # ---- state, possibly resumed
    state: dict[str, Any] = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0,
                             "bad_epochs": 0, "stopped": False, "history": [],
                             "best_state": None}
    signature = {"n_train": len(train_ds), "n_val": 0 if val_ds is None else len(val_ds),
                 "n_outputs": n_outputs}
    if ckpt_path.exists() and resume:
        try:
            ck = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any failure means an unusable checkpoint
            raise StpredictError(f"cannot read checkpoint ({type(exc).__name__}: {exc})",
                                 file=ckpt_path, fix="delete it to start afresh") from None
        old = ck["config"]
        changed = sorted(k for k, v in cfg.to_dict().items()
                         if k not in _RESUMABLE_CHANGES and old.get(k) != v)
        if changed or ck["signature"] != signature:
            what = changed or [f"data {ck['signature']} -> {signature}"]
            raise ConfigError(f"the checkpoint was made with other settings or data ({what})",
                              file=ckpt_path,
                              fix="delete the checkpoint (or pass resume=False) to start afresh")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        _set_rng_state(ck["rng"], {"loader": loader_gen, "augment": aug_gen})
        state = {k: ck[k] for k in state}
        log.info("resuming %s from epoch %d", out, state["epoch"])
    elif ckpt_path.exists():
        log.info("resume=False: ignoring the existing %s", ckpt_path)

    n = len(train_ds)
    drop_last = n > cfg.batch_size and n % cfg.batch_size == 1  # no batch of one (BatchNorm)
    sampler = _EpochSampler(n, cfg.seed)
    train_loader = _loader(train_ds, cfg, cuda, sampler, loader_gen, drop_last)
    val_loader = None if val_ds is None else _loader(val_ds, cfg, cuda, None, loader_gen)

    patience = cfg.patience or 0
    start = state["epoch"] + 1
    if state["stopped"]:
        log.info("%s: training had stopped early at epoch %d", out, state["epoch"])
    elif state["epoch"] >= cfg.epochs:
        log.info("%s: all %d epochs done", out, state["epoch"])
    last_ips = math.nan
    last_plot = time.perf_counter()
    for epoch in range(start, cfg.epochs + 1):
        if state["stopped"]:
            break
        # everything random in this epoch is a function of (seed, epoch): exact resumption
        eseed = _epoch_seed(cfg.seed, epoch)
        seed_everything(eseed)
        aug_gen.manual_seed(eseed + 1)
        sampler.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        seen = 0
        for xb, yb in _batches(train_loader, dev, f"epoch {epoch}/{cfg.epochs}"):
            x = _prepare(xb, model, aug, aug_gen, channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                pred = model(x)
            loss = loss_fn(pred.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(xb)
            seen += len(xb)
        if cuda:
            torch.cuda.synchronize(dev)
        train_secs = time.perf_counter() - t0
        train_loss = float(loss_sum) / max(seen, 1)
        if not math.isfinite(train_loss):
            raise StpredictError(f"the training loss became {train_loss} in epoch {epoch}",
                                 fix="lower lr, check the targets, or disable amp")
        val_loss = pearson = acc = math.nan
        if val_loader is not None:
            val_loss, pearson, acc = _evaluate(model, val_loader, loss_fn, dev, autocast,
                                               channels_last, classify)
            if val_loss < state["best_val_loss"] - cfg.min_delta:
                state.update(best_val_loss=val_loss, best_epoch=epoch, bad_epochs=0,
                             best_state={k: v.detach().to("cpu", copy=True)
                                         for k, v in model.state_dict().items()})
            else:
                state["bad_epochs"] += 1
        last_ips = seen / train_secs if train_secs > 0 else math.nan
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
               "val_pearson_mean": pearson, "val_accuracy": acc, "images_per_s": last_ips,
               "seconds": time.perf_counter() - t0, "lr": opt.param_groups[0]["lr"]}
        state["history"].append(row)
        state["epoch"] = epoch
        if val_loader is not None and patience and state["bad_epochs"] >= patience:
            state["stopped"] = True
        log.info("epoch %d/%d: train %.4g, val %.4g, pearson %.3f, %.1f img/s%s", epoch,
                 cfg.epochs, train_loss, val_loss, pearson, last_ips,
                 " (early stop)" if state["stopped"] else "")
        _atomic_torch_save({
            **state, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "rng": _rng_state({"loader": loader_gen, "augment": aug_gen}),
            "config": cfg.to_dict(), "signature": signature,
        }, ckpt_path)
        write_table(pd.DataFrame(state["history"], columns=HISTORY_COLUMNS), hist_path)
        if time.perf_counter() - last_plot > 60.0:  # plotting costs ~0.2 s: not every epoch
            _plot_history(state["history"], plot_path)
            last_plot = time.perf_counter()
        if callback is not None:
            callback(epoch, row)
        if stop_after_epoch is not None and epoch == stop_after_epoch:
            raise TrainingInterrupted(f"stopped after epoch {epoch} as requested")

    # ---- final weights
    if not state["history"]:
        raise StpredictError("no epoch was trained", file=ckpt_path)
    if val_loader is not None and state["best_state"] is not None:
        weights, chosen, selection = state["best_state"], state["best_epoch"], "best_val_loss"
    else:
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        chosen, selection = state["epoch"], "last_epoch"
    meta = {
        "state_dict": weights,
        "backbone": cfg.backbone,
        "tiny_width": cfg.tiny_width,
        "n_outputs": n_outputs,
        "n_features": model.n_features,
        "patch_size": train_ds.patch_size,
        "genes": None if genes is None else [str(g) for g in genes],
        "classes": None if not classify else [
            str(c) for c in (classes if classes is not None else range(n_outputs))],
        "task": "classification" if classify else "regression",
        "target_transform": target_transform,
        "epoch": int(chosen),
        "selection": selection,
        "best_val_loss": float(state["best_val_loss"]),
        "config": cfg.to_dict(),
    }
    _atomic_torch_save(meta, model_path)
    write_table(pd.DataFrame(state["history"], columns=HISTORY_COLUMNS), hist_path)
    _plot_history(state["history"], plot_path)
    log.info("%s: wrote %s (epoch %d, %s)", out, model_path, chosen, selection)
    return {
        "epoch": int(chosen),
        "epochs_run": int(state["epoch"]),
        "best_val_loss": float(state["best_val_loss"]),
        "stopped_early": bool(state["stopped"]),
        "device": str(dev),
        "images_per_s": last_ips,
        "model": str(model_path),
        "history": str(hist_path),
        "checkpoint": str(ckpt_path),
    }

