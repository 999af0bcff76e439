"""Training throughput of one architecture: the project's trainer against the classic CIFAR loop, same model,
data, batch, optimizer and precision (see search/bench/throughput.py). ``micronet-search bench`` runs this for every
architecture at the default sizes together with the other figures; this one takes the architecture, the steps, the
precision and the classic loop's loader workers.

    micronet-search bench train [--arch resnet20] [--steps 12] [--precision fp32]   # appends to BENCHMARKS.md
"""

from __future__ import annotations

import torch

from search.bench.table import Row
from search.bench.throughput import bench_candidate, cifar_shaped, classic_images_per_s, trainer_images_per_s
from search.training.trainer import device_setup

STEPS = 12  # timed training steps


def train_rows(arch: str = "resnet20", steps: int = STEPS, batch_size: int = 128, loader_workers: int = 2,
               precision: str = "auto") -> list[Row]:
    """The classic loop's and the trainer's images/s on the CPU, both at ``precision``; the trainer's row carries the
    ratio and the >= 3x target."""
    cand = bench_candidate(arch, batch_size, train={"precision": precision})
    autocast_dtype, channels_last = device_setup(torch.device("cpu"), precision)
    label = ("bf16 autocast" if autocast_dtype else "fp32") + (" + channels_last" if channels_last else "")
    data = cifar_shaped((steps + 2) * batch_size)  # the same uint8 images feed both loops (+ 2 warm-up)
    classic = classic_images_per_s(cand, data, steps, loader_workers)
    ours, _ = trainer_images_per_s(cand, data)
    return [Row(f"{arch}: classic loop, {label} (PIL + DataLoader, {loader_workers} workers)", classic, "img/s"),
            Row(f"{arch}: trainer, {label}", ours, "img/s", "classic loop", ours / classic, ">= 3x",
                ours / classic >= 3)]
