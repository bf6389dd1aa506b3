"""Training throughput: DenseNet-121 at 224 px (images/s) and the patch loader's own rate.

    python benchmarks/bench_training.py [--backbone densenet121] [--size 224] [--batch 32]
                                        [--steps 5] [--workers 2] [--out benchmarks/results/training.tsv]

On CUDA the step uses bf16 autocast and channels_last, as `stpredict.learn.train.train` does. The
loader is measured alone (uint8 patches from a memory-mapped store, shipped to the device and
converted to float), so the two rates show whether the GPU would wait for data. Appends one row
per run to the TSV (machine, device, rates, loader/model ratio).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from stpredict.learn.models import build_model
from stpredict.learn.train import PatchDataset, select_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="densenet121")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--steps", type=int, default=5, help="timed optimiser steps (after 2 warm-up steps)"
    )
    ap.add_argument("--patches", type=int, default=2048, help="patches in the synthetic store")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/training.tsv")
    args = ap.parse_args()

    dev = select_device(None)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "spots.npy"
        arr = np.lib.format.open_memmap(
            store, mode="w+", dtype=np.uint8, shape=(args.patches, args.size, args.size, 3)
        )
        arr[:] = np.random.default_rng(0).integers(0, 255, arr.shape, dtype=np.uint8)
        arr.flush()
        del arr
        ds = PatchDataset(
            [store], [np.arange(args.patches)], targets=np.zeros((args.patches, 250), np.float32)
        )
        loader = DataLoader(
            ds,
            batch_size=args.batch,
            shuffle=True,
            num_workers=args.workers,
            pin_memory=cuda,
            persistent_workers=args.workers > 0,
            drop_last=True,
        )

        # loader alone: to the device and to float, as in training
        n, t0 = 0, time.perf_counter()
        for _ in range(2):
            for xb, _yb in loader:
                x = xb.to(dev, non_blocking=True).float().div_(255)
                n += x.shape[0]
        if cuda:
            torch.cuda.synchronize()
        loader_rate = n / (time.perf_counter() - t0)

        # model step alone on a resident batch
        model = build_model(args.backbone, 250, weights="none").to(dev)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
        x = torch.rand(args.batch, 3, args.size, args.size, device=dev)
        if cuda:
            x = x.to(memory_format=torch.channels_last)
        y = torch.zeros(args.batch, 250, device=dev)
        model.train()

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                loss = torch.nn.functional.mse_loss(model(x).float(), y)
            loss.backward()
            opt.step()

        for _ in range(2):
            step()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        model_rate = args.steps * args.batch / (time.perf_counter() - t0)

    row = {
        "backbone": args.backbone,
        "size_px": args.size,
        "batch": args.batch,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(0)
        if cuda
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "loader_workers": args.workers,
        "train_images_per_s": round(model_rate, 2),
        "loader_images_per_s": round(loader_rate, 1),
        "loader_over_model": round(loader_rate / model_rate, 2),
    }
    print(pd.Series(row).to_string())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([row])
    if out.exists():
        df = pd.concat([pd.read_csv(out, sep="\t"), df], ignore_index=True)
    df.to_csv(out, sep="\t", index=False)


if __name__ == "__main__":
    main()
