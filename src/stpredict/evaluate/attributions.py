"""Integrated-gradients attributions of one predicted gene to the pixels of patches (ST-Net Fig. 3).

:func:`pick_ig_patches` chooses high-expression held-out patches, :func:`integrated_gradients`
explains them with captum (white-glass baseline, Gauss-Legendre steps), each by the model of the
fold that held the patch out.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from stpredict.errors import ConfigError, InputError

if TYPE_CHECKING:
    import torch

    from stpredict.learn.models import PatchModel

__all__ = ["IG_QUANTILES", "integrated_gradients", "pick_ig_patches"]

log = logging.getLogger(__name__)

#: Quantiles of the values used by :func:`pick_ig_patches` for ``n = 3``.
IG_QUANTILES: tuple[float, ...] = (0.99, 0.95, 0.90)


# --------------------------------------------------------------------------- attributions
def integrated_gradients(
    model: PatchModel,
    patches_uint8: Any,
    target: int,
    n_steps: int = 32,
    baseline: str = "white",
    device: str | torch.device | None = None,
    internal_batch_size: int | None = None,
    batch_size: int = 8,
    method: str = "gausslegendre",
    return_delta: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Integrated Gradients of one model output with respect to the pixels of patches.

    Parameters
    ----------
    model
        A :class:`~stpredict.learn.models.PatchModel`. It is put in eval mode for the computation;
        its training flag and device are restored afterwards.
    patches_uint8
        ``(N, H, W, 3)`` uint8 patches (a patch store or a selection of its rows; memory maps
        are read one batch at a time).
    target
        Output (gene) index, ``0 <= target < model.n_outputs``.
    n_steps
        Integration steps.
    baseline
        ``"white"``: the all-white image (glass background, 1.0 before normalisation;
        default) or ``"black"``: zeros before normalisation. Either is normalised like the
        inputs.
    device
        Torch device; by default CUDA when available, else the CPU
        (:func:`stpredict.learn.train.select_device`).
    internal_batch_size
        Images per forward/backward pass inside captum; by default ``n_steps`` (one patch's
        path at a time), which bounds memory.
    batch_size
        Patches handed to captum at once.
    method
        captum's integration method (``"gausslegendre"`` or ``"riemann_trapezoid"``, ...).
    return_delta
        Also return captum's convergence deltas.

    Returns
    -------
    numpy.ndarray or tuple
        ``(N, H, W)`` float32 attributions, summed over the three colour channels of the
        *normalised* input and signed: positive pixels push the prediction of ``target`` up
        relative to the baseline. By completeness, the attributions of a patch sum to about
        ``F(patch) - F(baseline)``. With ``return_delta``, also the ``(N,)`` float32
        convergence deltas (sum of attributions minus that difference); the largest relative
        delta is logged at INFO level in any case.

    Raises
    ------
    StpredictError
        Bad patch array, target or baseline.
    """
    import torch
    from captum.attr import IntegratedGradients

    from stpredict.learn.train import select_device

    arr = patches_uint8
    if getattr(arr, "ndim", None) != 4 or arr.shape[-1] != 3:
        raise InputError(
            f"patches must be a (N, H, W, 3) uint8 array, got shape {getattr(arr, 'shape', None)}"
        )
    if np.dtype(arr.dtype) != np.uint8:
        raise InputError(f"patches must be uint8, got {arr.dtype}")
    n_out = int(model.n_outputs)
    if not 0 <= int(target) < n_out:
        raise InputError(f"target {target} is out of range for a model with {n_out} outputs")
    if baseline not in ("white", "black"):
        raise ConfigError(f"unknown baseline {baseline!r}", fix="use 'white' or 'black'")
    target = int(target)
    n, h, w = int(arr.shape[0]), int(arr.shape[1]), int(arr.shape[2])
    attributions = np.zeros((n, h, w), dtype=np.float32)
    deltas = np.zeros(n, dtype=np.float32)
    if n == 0:
        return (attributions, deltas) if return_delta else attributions

    dev = select_device(device)
    was_training = model.training
    first = next(model.parameters(), None)
    old_device = first.device if first is not None else torch.device("cpu")
    model.to(dev).eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x)[:, target]

    ig = IntegratedGradients(forward)
    ibs = int(internal_batch_size) if internal_batch_size else int(n_steps)
    worst = 0.0
    try:
        fill = 1.0 if baseline == "white" else 0.0
        base_raw = torch.full((1, 3, h, w), fill, device=dev)
        with torch.no_grad():
            base = model.normalize(base_raw)
            f_base = float(forward(base)[0])
        for start in range(0, n, max(1, int(batch_size))):
            chunk = np.ascontiguousarray(arr[start : start + batch_size])
            x = torch.from_numpy(chunk).to(dev).permute(0, 3, 1, 2).float().div_(255.0)
            x = model.normalize(x)
            b = base.expand_as(x).contiguous()
            attr, delta = ig.attribute(
                x,
                baselines=b,
                n_steps=int(n_steps),
                method=method,
                internal_batch_size=ibs,
                return_convergence_delta=True,
            )
            stop = start + x.shape[0]
            attributions[start:stop] = attr.sum(dim=1).detach().cpu().numpy()
            deltas[start:stop] = delta.detach().float().cpu().numpy()
            with torch.no_grad():
                gap = (forward(x) - f_base).abs().cpu().numpy()
            rel = np.abs(deltas[start:stop]) / np.maximum(gap, 1e-12)
            worst = max(worst, float(rel.max()))
    finally:
        model.to(old_device)
        model.train(was_training)
    log.info(
        "integrated_gradients: target %d, %d patches, max |delta| / |F(x) - F(b)| = %.3g",
        target,
        n,
        worst,
    )
    return (attributions, deltas) if return_delta else attributions


def pick_ig_patches(measured_or_pred: Any, n: int = 3) -> np.ndarray:
    """Choose representative high-expression spots to show Integrated Gradients for.

    Rather than the extreme (often an outlier) spot, the spots whose value is nearest to high
    quantiles are chosen: the 0.99, 0.95 and 0.90 quantiles for ``n = 3``
    (:data:`IG_QUANTILES`), and in general ``n`` quantiles evenly spaced from 0.99 down to 0.90
    (0.99 alone for ``n = 1``). Each quantile takes the nearest not yet chosen spot (ties to
    the lower index), so the indices are distinct and the choice is deterministic.

    Parameters
    ----------
    measured_or_pred
        ``(n_spots,)`` values of one gene (measured or predicted; a single-column 2-D array
        is accepted). NaN values are never chosen.
    n
        Number of spots.

    Returns
    -------
    numpy.ndarray
        ``(min(n, number of finite values),)`` int64 indices, from the highest quantile down.
    """
    v = np.asarray(measured_or_pred, dtype=np.float64)
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 1:
        raise InputError(f"expected the values of one gene (1-D), got shape {v.shape}")
    finite = np.flatnonzero(np.isfinite(v))
    m = min(int(n), finite.size)
    if m <= 0:
        return np.zeros(0, dtype=np.int64)
    if m == 3:
        qs = np.array(IG_QUANTILES)
    elif m == 1:
        qs = np.array([0.99])
    else:
        qs = np.linspace(0.99, 0.90, m)
    targets = np.quantile(v[finite], qs)
    available = np.ones(finite.size, dtype=bool)
    chosen = []
    for t in targets:
        d = np.abs(v[finite] - t)
        d[~available] = np.inf
        j = int(np.argmin(d))  # first minimum: lowest index among ties
        available[j] = False
        chosen.append(int(finite[j]))
    return np.asarray(chosen, dtype=np.int64)
