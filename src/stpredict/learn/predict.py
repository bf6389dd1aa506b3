"""Prediction and embeddings for any set of patch stores, with dihedral test-time augmentation.

Only the backbone runs in reduced precision (``precision``, as in training); the head and the
TTA averaging run in fp32, so predictions keep fp32 resolution.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from stpredict.errors import InputError
from stpredict.learn.augment import tta_predict
from stpredict.learn.models import PatchModel, build_model
from stpredict.learn.train import (
    PatchDataset,
    autocast_context,
    resolve_precision,
    select_device,
)

__all__ = [
    "predict",
    "load_model",
]

log = logging.getLogger(__name__)


def load_model(
    path: str | os.PathLike[str], device: str | torch.device | None = "cpu"
) -> tuple[PatchModel, dict[str, Any]]:
    """Load a ``model.pt`` written by :func:`stpredict.learn.train.train`.

    Returns
    -------
    model : PatchModel
        In eval mode on ``device``.
    meta : dict
        The file's metadata (everything but the state_dict): backbone, genes, classes, epoch...
    """
    from stpredict.io import load_torch

    path = Path(path)
    obj = load_torch(path)  # missing: "does not exist"; corrupt: removed, so Snakemake retrains
    if not isinstance(obj, dict) or "state_dict" not in obj or "backbone" not in obj:
        raise InputError("not a stpredict model file (no state_dict/backbone)", file=path)
    model = build_model(
        obj["backbone"],
        int(obj["n_outputs"]),
        weights="none",
        tiny_width=int(obj.get("tiny_width", 8)),
    )
    model.load_state_dict(obj["state_dict"])
    model.eval().to(select_device(device))
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    return model, meta


def predict(
    model: PatchModel,
    stores: Sequence[str | os.PathLike[str]],
    rows: Sequence[np.ndarray] | None = None,
    batch_size: int = 64,
    tta: int = 8,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    precision: str = "auto",
    channels_last: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Predict every requested patch and return its outputs and embeddings.

    Parameters
    ----------
    model
        A :class:`~stpredict.learn.models.PatchModel` (moved to ``device`` and set to eval mode).
    stores
        Patch store ``.npy`` files (any centres: spots, grids...).
    rows
        Row indices per store; all rows when ``None``.
    batch_size
        Patches per forward pass (each is run ``tta`` times).
    tta
        Number of dihedral transforms averaged: 8 (all), 4 (rotations) or 1 (none).
    device
        Default CUDA when available, else the CPU.
    num_workers
        DataLoader worker processes.
    precision
        Autocast precision of the backbone, as ``train.precision``: ``auto`` (bf16 on a CUDA GPU
        with native bf16, else fp16 on CUDA, fp32 on the CPU), ``bf16``, ``fp16`` or ``fp32``
        (explicit values apply on the CPU too). The head and TTA averaging run in fp32.
    channels_last
        Channels-last memory format on CUDA (ignored on the CPU).

    Returns
    -------
    predictions : numpy.ndarray
        float32 ``(n, n_outputs)`` in the concatenated order of ``rows`` (logits for a
        classifier; targets in the training transform's space for regression).
    embeddings : numpy.ndarray
        float32 ``(n, n_features)``: penultimate features averaged over the TTA transforms.
    """
    dev = select_device(device)
    cuda = dev.type == "cuda"
    prec = resolve_precision(precision, dev)
    if rows is None:
        rows = [np.arange(np.load(s, mmap_mode="r").shape[0]) for s in stores]
    ds = PatchDataset(stores, rows)
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=cuda
    )
    model = model.to(dev).eval()
    cl = cuda and channels_last
    if cl:
        model = model.to(memory_format=torch.channels_last)
    preds = np.empty((len(ds), model.n_outputs), dtype=np.float32)
    embs = np.empty((len(ds), model.n_features), dtype=np.float32)
    i = 0
    with torch.inference_mode():
        for xb, _ in tqdm(loader, desc="predict", leave=False, disable=None, mininterval=5.0):
            x = model.normalize(xb.to(dev, non_blocking=True).float().div_(255.0))
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_context(dev, prec):
                out, feat = tta_predict(model, x, n=tta, return_features=True)  # fp32
            preds[i : i + len(xb)] = out.float().cpu().numpy()
            embs[i : i + len(xb)] = feat.float().cpu().numpy()
            i += len(xb)
    log.info(
        "predicted %d patches from %d store(s) (tta=%d, %s, %s)",
        len(ds),
        len(stores),
        tta,
        dev,
        prec,
    )
    return preds, embs
