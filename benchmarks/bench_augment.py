"""Training-augmentation throughput (images/s) of `stpredict.learn.augment.make_augment` settings.

    python benchmarks/bench_augment.py [--batch 64] [--sizes 224 32] [--reps 3] [--threads 0]
                                       [--out benchmarks/results/augment.tsv]

Times whole augmentation calls (parameter draws on the CPU included, as in training) on float
``[0, 1]`` batches resident on the device: the CPU always, and CUDA when available (synchronised
before and after). Settings: ``deepspace`` (the paper's full set), DeepSpaCE's README recipe
``deepspace:flip,crop,color,random`` and ``dihedral`` for scale. Rows of the same machine, device,
setting, size and batch replace earlier ones in the TSV; rows of other machines are kept.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from stpredict.io import write_table
from stpredict.learn.augment import make_augment

SETTINGS = ("deepspace", "deepspace:flip,crop,color,random", "dihedral")
KEY = ["machine", "device", "augmentation", "size_px", "batch"]


def rate(name: str, x: torch.Tensor, reps: int) -> float:
    """Images per second of ``make_augment(name)`` on ``x`` (one warm-up call, ``reps`` timed)."""
    aug = make_augment(name)
    gen = torch.Generator().manual_seed(0)
    cuda = x.device.type == "cuda"
    aug(x, gen)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        aug(x, gen)
    if cuda:
        torch.cuda.synchronize()
    return reps * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 32])
    ap.add_argument("--reps", type=int, default=3, help="timed calls per setting (CUDA: x10)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default="benchmarks/results/augment.tsv")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    rows = []
    for dev in devices:
        cuda = dev.type == "cuda"
        name = torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine()
        for size in args.sizes:
            x = torch.rand(
                args.batch, 3, size, size, generator=torch.Generator().manual_seed(1)
            ).to(dev)
            for setting in args.settings:
                r = rate(setting, x, args.reps * (10 if cuda else 1))
                rows.append(
                    {
                        "machine": machine,
                        "device": dev.type,
                        "device_name": name,
                        "augmentation": setting,
                        "size_px": size,
                        "batch": args.batch,
                        "torch_threads": torch.get_num_threads(),
                        "images_per_s": round(r, 1),
                        "ms_per_batch": round(1000 * args.batch / r, 2),
                    }
                )
                print("\t".join(str(v) for v in rows[-1].values()), flush=True)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    if out.exists():
        old = pd.read_csv(out, sep="\t")
        keep = ~old.set_index(KEY).index.isin(df.set_index(KEY).index)
        df = pd.concat([old[keep], df], ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(df, out)


if __name__ == "__main__":
    main()
