"""Training and inference throughput of the workflow's own path, and the patch loader's rate.

    python benchmarks/bench_training.py [--backbones densenet121 vgg16] [--modes loader train infer]
        [--precisions bf16 fp32] [--channels-last on] [--compile off] [--batch N ...]
        [--tta 8 1] [--workers N] [--infer-workers 0] [--seconds 8] [--quick]
        [--out benchmarks/results/training.tsv] [--protocols-out benchmarks/results/protocols.tsv]

Everything goes through the project's functions, as a ``train_fold`` / ``predict_fold`` job does:
a synthetic patch store (one contiguous uint8 ``(N, S, S, 3)`` ``.npy``, memory-mapped by
``stpredict.learn.train.PatchDataset``) -> the training loader (``train._loader`` with its
``_EpochSampler``: pinned memory, persistent workers, prefetch 4) -> the device (``train._batches``)
-> ``train._train_step``: uint8 -> float, the preset's augmentation on the device
(``augment.make_augment``), normalisation, channels_last, the backbone under autocast, the head
and loss in fp32, backward and optimiser step (SGD or Adam, GradScaler for fp16), on a model from
``train._fresh_model`` (``models.build_model``). The training settings are the preset's
(``config/stnet.yaml`` for DenseNet-121: SGD, ST-Net's summed MSE, dihedral augmentation, batch 32,
250 genes; ``config/deepspace.yaml`` for VGG16: Adam, SmoothL1, DeepSpaCE's augmentation, batch
128, 21 genes), with random initial weights (ImageNet weights cost the same time).

Modes (one TSV row per configuration):

* ``train``: images/s of the full path above in steady state (after ``--warmup`` steps, for up to
  ``--steps`` steps or ``--seconds``), plus the time to write one epoch's checkpoint (model and
  optimiser state, ``train._atomic_torch_save``);
* ``infer``: patches/s of ``stpredict.learn.predict.predict`` (the prediction jobs' TTA path:
  ``--tta`` dihedral transforms averaged per patch, batch ``--infer-batch``, ``--infer-workers``
  loader workers: 0 as ``predict_fold`` uses);
* ``loader``: images/s the training loader delivers to the device, converted to float and
  normalised (``train._prepare`` without augmentation), with nothing else running.

``loader_img_per_s`` of a train / infer row is the loader's rate at its batch size and workers;
``loader_bottleneck`` is true when that is under 1.25x the row's rate (the loader then limits the
step or soon would). Rows of the same machine, device and configuration replace earlier ones.
At the end the protocol estimates are written (``protocols.py``: ST-Net and DeepSpaCE wall-clock
on this device) and both tables printed as Markdown. On the CPU, channels_last is off whatever
is asked (as in training) and the default loader workers are 0 (``train.loader_workers``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import protocols
import tables
import torch
import yaml

from stpredict.config import CONFIG_SCHEMA, load_schema, schema_defaults
from stpredict.learn.augment import make_augment
from stpredict.learn.models import build_model
from stpredict.learn.predict import predict
from stpredict.learn.train import (
    PatchDataset,
    TrainConfig,
    _atomic_torch_save,
    _batches,
    _EpochSampler,
    _fresh_model,
    _loader,
    _prepare,
    _train_step,
    loader_workers,
    resolve_precision,
    select_device,
)

ROOT = Path(__file__).resolve().parents[1]
#: preset file and experiment whose model/train settings a backbone is benchmarked with
PRESETS = {
    "stnet": (ROOT / "config" / "stnet.yaml", "stnet"),
    "deepspace": (ROOT / "config" / "deepspace.yaml", "deepspace_imputation"),
}
BACKBONE_PRESET = {"densenet121": "stnet", "vgg16": "deepspace"}
#: a loader under this multiple of a mode's rate is reported as the bottleneck
BOTTLENECK_MARGIN = 1.25
COLUMNS = [
    "machine",
    "device",
    "torch",
    "backbone",
    "mode",
    "precision",
    "channels_last",
    "compile",
    "batch",
    "workers",
    "tta",
    "size_px",
    "augmentation",
    "img_per_s",
    "loader_img_per_s",
    "loader_bottleneck",
    "checkpoint_s",
    "timed_images",
    "timed_s",
    "torch_threads",
]
KEY = COLUMNS[:13]
ROUND = {"img_per_s": 2, "loader_img_per_s": 2, "checkpoint_s": 3, "timed_s": 3}


# ------------------------------------------------------------------------------------- setup


def preset_settings(preset: str) -> tuple[dict[str, Any], int]:
    """Return an experiment's ``model`` and ``train`` settings (schema defaults filled) and genes.

    The settings of ``PRESETS[preset]`` merged over the schema's experiment defaults, as
    ``stpredict.learn.experiments.resolve_experiment`` fills these two sections (not called here:
    it imports the ingest readers, which need anndata).
    """
    path, name = PRESETS[preset]
    exp = yaml.safe_load(path.read_text())["experiments"][name]
    defaults = schema_defaults(load_schema(CONFIG_SCHEMA)["$defs"]["experiment"])
    settings = {sec: {**defaults[sec], **exp.get(sec, {})} for sec in ("model", "train")}
    return settings, int(exp["targets"]["genes"]["n"])


def train_config(
    settings: dict[str, Any],
    backbone: str,
    batch: int | None,
    precision: str,
    cl: bool,
    workers: int,
) -> TrainConfig:
    """The preset's TrainConfig for ``backbone`` with random initial weights and the overrides."""
    s = copy.deepcopy(settings)
    s["model"].update(backbone=backbone, weights="none")
    s["train"].update(precision=precision, channels_last=cl)
    if batch:
        s["train"]["batch_size"] = int(batch)
    return TrainConfig.from_experiment(s, seed=0, num_workers=workers)


def write_store(path: Path, n: int, size: int, seed: int = 0) -> Path:
    """Write a synthetic patch store: ``n`` random uint8 ``(size, size, 3)`` patches, one ``.npy``."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    rng = np.random.default_rng(seed)
    for i in range(0, n, 256):
        arr[i : i + 256] = rng.integers(0, 256, arr[i : i + 256].shape, dtype=np.uint8)
    arr.flush()
    del arr
    return path


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@dataclass(frozen=True)
class Run:
    """What one measurement needs: the store, the device and the timing limits."""

    store: Path
    n_store: int
    dev: torch.device
    warmup: int
    steps: int
    loader_batches: int
    seconds: float
    infer_max: int
    tmp: Path


def _dataset(run: Run, n: int, n_outputs: int) -> PatchDataset:
    """``n`` items drawn from the store's rows (cycled), with random targets."""
    rows = np.arange(n) % run.n_store
    targets = np.random.default_rng(1).random((n, n_outputs), dtype=np.float32)
    return PatchDataset([run.store], [rows], targets=targets)


def _timed(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    work: Callable[[torch.Tensor, torch.Tensor], Any],
    run: Run,
    max_steps: int,
) -> tuple[int, float]:
    """Run ``work`` on each batch; time the batches after ``run.warmup``; return images, seconds."""
    done, t0 = 0, None
    for i, (xb, yb) in enumerate(batches):
        if i == run.warmup:
            _sync(run.dev)
            t0 = time.perf_counter()
        work(xb, yb)
        if t0 is not None:
            done += len(xb)
            if i + 1 - run.warmup >= max_steps or time.perf_counter() - t0 > run.seconds:
                break
    _sync(run.dev)
    if t0 is None:
        raise RuntimeError("no batch after the warm-up: raise --steps or the store size")
    return done, time.perf_counter() - t0


# ------------------------------------------------------------------------------------- modes


def time_loader(cfg: TrainConfig, run: Run) -> tuple[float, int, float]:
    """Images/s of the training loader to the device, to float and normalised (no augmentation)."""
    cuda = run.dev.type == "cuda"
    cl = cuda and cfg.channels_last
    norm = build_model("tiny", 1).to(run.dev)  # only its ImageNet normalisation is used
    n = (run.warmup + run.loader_batches) * cfg.batch_size
    ds = _dataset(run, n, 1)
    loader = _loader(ds, cfg, cuda, _EpochSampler(n, cfg.seed), torch.Generator(), drop_last=True)
    images, secs = _timed(
        _batches(loader, run.dev, "loader"),
        lambda xb, _yb: _prepare(xb, norm, None, None, cl),
        run,
        run.loader_batches,
    )
    del loader
    gc.collect()
    return images / secs, images, secs


def time_train(
    cfg: TrainConfig, n_outputs: int, compile_: bool, run: Run
) -> tuple[float, int, float, float]:
    """Steady-state images/s of ``train._train_step`` fed by the training loader; checkpoint s."""
    dev = run.dev
    cuda = dev.type == "cuda"
    precision = resolve_precision(cfg.precision, dev)
    cl = cuda and cfg.channels_last
    hook = (lambda m: m.compile()) if compile_ else None
    model, opt, scaler = _fresh_model(cfg, n_outputs, None, dev, precision, cl, hook)
    model.train()
    n = (run.warmup + run.steps) * cfg.batch_size
    ds = _dataset(run, n, n_outputs)
    sampler = _EpochSampler(n, cfg.seed)
    loader = _loader(ds, cfg, cuda, sampler, torch.Generator().manual_seed(cfg.seed), True)
    aug = make_augment(cfg.augmentation)
    gen = torch.Generator().manual_seed(1)

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        _train_step(model, xb, yb, opt, scaler, cfg, dev, precision, cl, aug, gen)

    images, secs = _timed(_batches(loader, dev, "train"), step, run, run.steps)
    del loader
    t0 = time.perf_counter()
    _atomic_torch_save(
        {"model": model.state_dict(), "optimizer": opt.state_dict()}, run.tmp / "checkpoint.pt"
    )
    ck = time.perf_counter() - t0
    (run.tmp / "checkpoint.pt").unlink()
    return images / secs, images, secs, ck


def time_infer(
    backbone: str,
    n_outputs: int,
    setting: dict[str, Any],
    run: Run,
) -> tuple[float, int, float]:
    """Patches/s of ``predict.predict`` at ``setting`` (batch, tta, workers, precision, cl, compile).

    One warm-up call on one batch, then calls on growing row counts (whole batches) until one
    lasts at least half of ``run.seconds`` or reaches ``run.infer_max`` patches.
    """
    model = build_model(backbone, n_outputs, weights="none")
    if setting["compile"]:
        model.compile()
    batch = setting["batch"]
    kw = {
        "batch_size": batch,
        "tta": setting["tta"],
        "device": run.dev,
        "num_workers": setting["workers"],
        "precision": setting["precision"],
        "channels_last": setting["channels_last"],
    }
    predict(model, [run.store], [np.arange(batch) % run.n_store], **kw)
    n = 2 * batch
    while True:
        t0 = time.perf_counter()
        predict(model, [run.store], [np.arange(n) % run.n_store], **kw)
        secs = time.perf_counter() - t0
        if secs >= run.seconds / 2 or n >= run.infer_max:
            break
        grow = max(2.0, 1.2 * run.seconds / max(secs, 1e-3))
        n = min(run.infer_max, int(math.ceil(n * grow / batch)) * batch)
    return n / secs, n, secs


# ------------------------------------------------------------------------------------- table


def machine_info(dev: torch.device) -> dict[str, Any]:
    """Machine, device and torch version columns."""
    cpu = platform.processor() or platform.machine()
    device = f"cuda: {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else f"cpu: {cpu}"
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "device": device,
        "torch": torch.__version__,
    }


def save_rows(rows: list[dict[str, Any]], out: Path) -> pd.DataFrame:
    """Write ``rows`` to ``out``, replacing earlier rows of the same key; return the whole table."""
    new = pd.DataFrame(rows, columns=COLUMNS).round(ROUND)
    new = new[~new[KEY].astype(str).duplicated(keep="last")]
    return tables.merge_rows(new, out, KEY)


def markdown(df: pd.DataFrame) -> str:
    """The rows as a Markdown table (the main columns)."""
    cols = [
        "device",
        "backbone",
        "mode",
        "precision",
        "channels_last",
        "compile",
        "batch",
        "workers",
        "tta",
        "img_per_s",
        "loader_img_per_s",
        "loader_bottleneck",
        "checkpoint_s",
    ]
    return tables.markdown(df, cols)


# -------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--quick``: tiny counts, for tests and a first try)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    onoff = {"choices": ["on", "off"], "nargs": "+"}
    ap.add_argument("--backbones", nargs="+", default=["densenet121", "vgg16"])
    ap.add_argument(
        "--preset",
        choices=["auto", *PRESETS],
        default="auto",
        help="training settings: auto = stnet for densenet121 (and others), deepspace for vgg16",
    )
    ap.add_argument(
        "--modes",
        nargs="+",
        choices=["loader", "train", "infer"],
        default=["loader", "train", "infer"],
    )
    ap.add_argument(
        "--precisions", nargs="+", choices=["bf16", "fp16", "fp32"], default=["bf16", "fp32"]
    )
    ap.add_argument("--channels-last", default=["on"], **onoff)
    ap.add_argument("--compile", default=["off"], **onoff)
    ap.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=None,
        help="training batch sizes (default: the preset's)",
    )
    ap.add_argument("--augmentation", default=None, help="default: the preset's")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--tta", type=int, nargs="+", default=[8, 1])
    ap.add_argument("--infer-batch", type=int, default=128, help="predict_fold's batch: 128")
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="training loader workers (default: train.loader_workers(all CPUs))",
    )
    ap.add_argument(
        "--infer-workers",
        type=int,
        nargs="+",
        default=[0],
        help="prediction loader workers (predict_fold: 0)",
    )
    ap.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    ap.add_argument("--steps", type=int, default=600, help="most timed training steps")
    ap.add_argument("--loader-batches", type=int, default=1000, help="most timed loader batches")
    ap.add_argument("--seconds", type=float, default=8.0, help="time limit of one measurement")
    ap.add_argument("--infer-max", type=int, default=200_000, help="most patches of one call")
    ap.add_argument("--patches", type=int, default=2048, help="patches in the synthetic store")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="1 warm-up, 2 timed steps, 64 patches, 4 loader batches: seconds",
    )
    ap.add_argument("--out", default="benchmarks/results/training.tsv")
    ap.add_argument("--protocols-out", default="benchmarks/results/protocols.tsv")
    args = ap.parse_args(argv)
    args.backbones = list(dict.fromkeys(args.backbones))  # each once
    if args.quick:
        args.warmup, args.steps, args.loader_batches, args.patches = 1, 2, 4, 64
        args.seconds = min(args.seconds, 5.0)
        args.infer_max = min(args.infer_max, 2 * args.infer_batch)
    return args


def _train_rows(
    args: argparse.Namespace,
    backbone: str,
    settings: dict[str, Any],
    n_outputs: int,
    run: Run,
    base: dict[str, Any],
    loader_rate: Callable[[int, int], float],
) -> Iterator[dict[str, Any]]:
    cuda = run.dev.type == "cuda"
    seen = set()
    for batch in args.batch or [None]:
        for prec in args.precisions:
            for cl_opt in args.channels_last:
                for comp in args.compile:
                    cl = cuda and cl_opt == "on"
                    cfg = train_config(settings, backbone, batch, prec, cl, base["workers"])
                    if args.augmentation:
                        cfg = replace(cfg, augmentation=args.augmentation)
                    key = (cfg.batch_size, prec, cl, comp)
                    if key in seen:
                        continue
                    seen.add(key)
                    rate, images, secs, ck = time_train(cfg, n_outputs, comp == "on", run)
                    lr = loader_rate(cfg.batch_size, cfg.num_workers)
                    yield {
                        **base,
                        "backbone": backbone,
                        "mode": "train",
                        "precision": prec,
                        "channels_last": cl,
                        "compile": comp == "on",
                        "batch": cfg.batch_size,
                        "tta": 1,
                        "augmentation": cfg.augmentation,
                        "img_per_s": rate,
                        "loader_img_per_s": lr,
                        "loader_bottleneck": lr < BOTTLENECK_MARGIN * rate,
                        "checkpoint_s": ck,
                        "timed_images": images,
                        "timed_s": secs,
                    }


def _infer_rows(
    args: argparse.Namespace,
    backbone: str,
    n_outputs: int,
    run: Run,
    base: dict[str, Any],
    loader_rate: Callable[[int, int], float],
) -> Iterator[dict[str, Any]]:
    cuda = run.dev.type == "cuda"
    seen = set()
    for prec in args.precisions:
        for cl_opt in args.channels_last:
            for comp in args.compile:
                for tta in args.tta:
                    for workers in args.infer_workers:
                        cl = cuda and cl_opt == "on"
                        key = (prec, cl, comp, tta, workers)
                        if key in seen:
                            continue
                        seen.add(key)
                        setting = {
                            "batch": args.infer_batch,
                            "tta": tta,
                            "workers": workers,
                            "precision": prec,
                            "channels_last": cl,
                            "compile": comp == "on",
                        }
                        rate, n, secs = time_infer(backbone, n_outputs, setting, run)
                        lr = loader_rate(args.infer_batch, workers)
                        yield {
                            **base,
                            "backbone": backbone,
                            "mode": "infer",
                            "precision": prec,
                            "channels_last": cl,
                            "compile": comp == "on",
                            "batch": args.infer_batch,
                            "workers": workers,
                            "tta": tta,
                            "augmentation": "none",
                            "img_per_s": rate,
                            "loader_img_per_s": lr,
                            "loader_bottleneck": lr < BOTTLENECK_MARGIN * rate,
                            "checkpoint_s": math.nan,
                            "timed_images": n,
                            "timed_s": secs,
                        }


class Loaders:
    """The training loader's rate per (batch, workers): measured once, each a ``loader`` row."""

    def __init__(self, run: Run, base: dict[str, Any], channels_last: bool, rows: list, out: Path):
        self.run, self.base, self.rows, self.out = run, base, rows, out
        self.cl = run.dev.type == "cuda" and channels_last
        self.settings = preset_settings("stnet")[0]
        self.rates: dict[tuple[int, int], float] = {}

    def rate(self, batch: int, workers: int) -> float:
        """Images/s of the loader at ``batch`` and ``workers`` (measured on first use)."""
        if (batch, workers) not in self.rates:
            cfg = train_config(self.settings, "tiny", batch, "fp32", self.cl, workers)
            rate, images, secs = time_loader(cfg, self.run)
            self.rates[(batch, workers)] = rate
            row = {
                **self.base,
                "backbone": "-",
                "mode": "loader",
                "precision": "-",
                "channels_last": self.cl,
                "compile": False,
                "batch": batch,
                "workers": workers,
                "tta": 1,
                "augmentation": "none",
                "img_per_s": rate,
                "loader_img_per_s": rate,
                "loader_bottleneck": False,
                "checkpoint_s": math.nan,
                "timed_images": images,
                "timed_s": secs,
            }
            self.rows.append(row)
            _report(row, self.rows, self.out)
        return self.rates[(batch, workers)]


def measure(args: argparse.Namespace, run: Run, base: dict[str, Any], out: Path) -> list[dict]:
    """Measure every backbone and mode asked; return the rows (saved to ``out`` as they come)."""
    rows: list[dict[str, Any]] = []
    loaders = Loaders(run, base, "on" in args.channels_last, rows, out)
    for backbone in args.backbones:
        preset = args.preset if args.preset != "auto" else BACKBONE_PRESET.get(backbone, "stnet")
        settings, n_outputs = preset_settings(preset)
        if "loader" in args.modes:
            for batch in args.batch or [settings["train"]["batch_size"]]:
                loaders.rate(batch, base["workers"])
        found: list[Iterator[dict[str, Any]]] = []
        if "train" in args.modes:
            found.append(_train_rows(args, backbone, settings, n_outputs, run, base, loaders.rate))
        if "infer" in args.modes:
            found.append(_infer_rows(args, backbone, n_outputs, run, base, loaders.rate))
        for gen in found:
            for row in gen:
                rows.append(row)
                _report(row, rows, out)
                _free(run.dev)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Measure every configuration asked, write the rows and the protocol estimates, print both."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = select_device(None)
    workers = loader_workers(os.cpu_count() or 1, dev) if args.workers is None else args.workers
    base = {
        **machine_info(dev),
        "workers": workers,
        "size_px": args.size,
        "torch_threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = write_store(Path(tmp) / "spots.npy", args.patches, args.size)
        print(f"patch store: {args.patches} x {args.size} px in {time.perf_counter() - t0:.1f} s")
        run = Run(
            store,
            args.patches,
            dev,
            args.warmup,
            args.steps,
            args.loader_batches,
            args.seconds,
            args.infer_max,
            Path(tmp),
        )
        rows = measure(args, run, base, out)
    table = save_rows(rows, out)
    mine = table[(table["machine"] == base["machine"]) & (table["device"] == base["device"])]
    print("\n" + markdown(mine))
    est = protocols.write_estimates(mine, args.protocols_out)
    print("\n" + protocols.markdown(est))


def _free(dev: torch.device) -> None:
    """Release the last measurement's model, optimiser and loader workers."""
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _report(row: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> None:
    """Print one row and save all so far (a run stopped by a timeout keeps what it measured)."""
    print(
        f"{row['backbone']:>12} {row['mode']:<6} {row['precision']:<4} cl={row['channels_last']!s:<5} "
        f"compile={row['compile']!s:<5} batch={row['batch']:<4} workers={row['workers']:<2} "
        f"tta={row['tta']}: {row['img_per_s']:.1f} img/s"
        + ("" if row["mode"] == "loader" else f" (loader {row['loader_img_per_s']:.0f})"),
        flush=True,
    )
    with contextlib.suppress(OSError):
        save_rows(rows, out)


if __name__ == "__main__":
    main()
