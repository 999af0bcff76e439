"""Training throughput of one architecture: the project's trainer against the classic CIFAR loop, same model,
data, batch, optimizer and precision (see search/bench/throughput.py). ``micronet-search bench`` runs this for every
architecture together with the other figures.

    python scripts/bench_train.py [--arch resnet20] [--steps 12] [--precision fp32]   # appends to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from search.bench.report import Row, append, machine, markdown, print_table
from search.bench.throughput import bench_candidate, cifar_shaped, classic_images_per_s, trainer_images_per_s
from search.candidate.recipe import PRECISIONS
from search.training.trainer import device_setup

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--steps", type=int, default=12, help="timed training steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers of the classic loop")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="both loops (default auto: bf16 autocast "
                                                                            "+ channels_last where native)")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()

    cand = bench_candidate(args.arch, args.batch_size, train={"precision": args.precision})
    autocast_dtype, channels_last = device_setup(torch.device("cpu"), args.precision)
    precision = ("bf16 autocast" if autocast_dtype else "fp32") + (" + channels_last" if channels_last else "")
    data = cifar_shaped((args.steps + 2) * args.batch_size)  # the same uint8 images feed both loops (+ 2 warm-up)
    classic = classic_images_per_s(cand, data, args.steps, args.loader_workers)
    ours, _ = trainer_images_per_s(cand, data)
    rows = [Row(f"{args.arch}: classic loop, {precision} (PIL + DataLoader, {args.loader_workers} workers)", classic,
                "img/s"),
            Row(f"{args.arch}: trainer, {precision}", ours, "img/s", "classic loop", ours / classic, ">= 3x",
                ours / classic >= 3)]
    print_table(f"{args.arch} training throughput", rows)
    append(args.out, markdown(f"Training throughput: {args.arch}", rows, machine(),
                              "python scripts/bench_train.py " + " ".join(sys.argv[1:])))
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
