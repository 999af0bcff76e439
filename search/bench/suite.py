"""The whole benchmark: what ``micronet-search bench`` runs, sized to finish in under 10 minutes on a 2-core CPU.

Each figure becomes a :class:`Row` with its anchor and target. GPU figures are measured when CUDA is available and
listed as still to be measured otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from search.bench.table import Row
from search.compress.compression import Compression
from search.training.trainer import device_setup

COMPRESSED = Compression(ps=0.5, qw=8, qa=8)
NOT_MEASURED = float("nan")


@dataclass(frozen=True)
class Sizes:
    steps: dict            # timed training steps per architecture
    batch_size: int = 128
    concurrency: tuple = (1, 2, 4)
    concurrency_seconds: float = 8.0
    memory_images: int = 50_000
    orchestration_trials: int = 3
    orchestration_epochs: int = 8
    orchestration_data: str = "digits"
    epoch_images: int = 50_000


FULL = Sizes(steps={"resnet20": 10, "densenet": 5, "resnet18": 3}, concurrency_seconds=6.0, orchestration_trials=4)
QUICK = Sizes(steps={"resnet20": 2, "densenet": 1, "resnet18": 1}, batch_size=32, concurrency=(1, 2),
              concurrency_seconds=1.0, memory_images=2_000, orchestration_trials=3, orchestration_epochs=1,
              orchestration_data="synthetic")
ARCHS = (("resnet20", {}), ("densenet", {}), ("resnet18", {"groups": 8}))


def run_suite(sizes: Sizes = FULL, device: str | None = None, say: Callable[[str], None] = print) -> list[Row]:
    from search.bench.concurrency import aggregate_images_per_s
    from search.bench.memory import peak_memory
    from search.bench.orchestration import orchestration_overhead
    from search.bench.throughput import bench_candidate, cifar_shaped, classic_images_per_s, trainer_images_per_s

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    rows: list[Row] = []

    # 1. training images/s per architecture, dense and compressed, against the classic loop. The trainer runs at its
    # default precision (bf16 autocast + channels_last where the device computes bf16 natively) and, when that is
    # not float32, in float32 too: the same arithmetic as the classic loop, so the two ratios separate what the data
    # pipeline buys from what the precision buys.
    autocast_dtype, _ = device_setup(torch.device(device))
    precision = "bf16 autocast + channels_last" if autocast_dtype is not None else "fp32"
    rates, packed_rates = {}, {}
    for arch, options in ARCHS:
        steps = sizes.steps[arch]
        label = arch + "".join(f" {k} {v}" for k, v in options.items())
        data = cifar_shaped(steps * sizes.batch_size, device)
        cand = bench_candidate(arch, sizes.batch_size, **options)
        fp32 = replace(cand, train=replace(cand.train, precision="fp32"))
        say(f"throughput: {label} ({steps} steps of {sizes.batch_size})")
        classic = None if gpu else classic_images_per_s(fp32, cifar_shaped((steps + 2) * sizes.batch_size), steps)
        dense, _ = trainer_images_per_s(cand, data)
        packed, _ = trainer_images_per_s(replace(cand, compression=COMPRESSED), data)
        rates[arch], packed_rates[arch] = dense, packed
        if classic is not None:
            rows.append(Row(f"{label}: classic loop, fp32 (PIL + DataLoader, 2 workers)", classic, "img/s"))
        anchor = "classic loop" if classic else ""
        if autocast_dtype is not None and classic is not None:
            dense32, _ = trainer_images_per_s(fp32, data)
            rows.append(Row(f"{label}: trainer, dense, fp32", dense32, "img/s", anchor, dense32 / classic,
                            note="the classic loop's arithmetic: the data pipeline's share of the gain"))
        target = ">= 3x" if arch == "resnet20" and classic else ""
        ratio = dense / classic if classic else None
        rows.append(Row(f"{label}: trainer, dense, {precision} (default)", dense, "img/s", anchor, ratio, target,
                        (ratio >= 3) if target else None))
        if arch == "resnet20" and autocast_dtype is not None and classic is not None:
            say("throughput: resnet20, classic loop at the trainer's precision")
            same = classic_images_per_s(cand, cifar_shaped((steps + 2) * sizes.batch_size), steps)
            rows.append(Row(f"resnet20: classic loop, {precision}", same, "img/s"))
            rows.append(Row(f"resnet20: trainer, dense, {precision} (default)", dense, "img/s",
                            f"classic loop, {precision}", dense / same,
                            note="both at the same precision: the data pipeline alone"))
        rows.append(Row(f"{label}: trainer, ps 0.5 qw 8 qa 8", packed, "img/s", "trainer, dense", packed / dense,
                        note="half the channels kept (about 1/4 of the MACs), masks live, 8-bit fake quantization"))

    # 1b. the same resnet20 step under torch.compile
    steps = sizes.steps["resnet20"]
    data = cifar_shaped(steps * sizes.batch_size, device)
    base = bench_candidate("resnet20", sizes.batch_size)
    variants = (("torch.compile", base, rates["resnet20"]),
                ("ps 0.5 qw 8 qa 8, torch.compile", replace(base, compression=COMPRESSED), packed_rates["resnet20"]))
    for name, cand, anchor in variants:
        say(f"throughput: resnet20 with {name}")
        cand = replace(cand, train=replace(cand.train, compile=True))
        try:
            rate, first = trainer_images_per_s(cand, data)
        except Exception as e:  # torch.compile needs a working C compiler; say so instead of failing the run
            rows.append(Row(f"resnet20: trainer, {name}", NOT_MEASURED, "img/s", note=f"failed: {type(e).__name__}"))
            continue
        rows.append(Row(f"resnet20: trainer, {name}", rate, "img/s",
                        "trainer, " + ("compressed" if "ps" in name else "dense"), rate / anchor,
                        note=f"{precision}; compile {first:.0f} s before the first step, not in the rate"))

    # 2. one epoch of resnet20 on 50,000 CIFAR-shaped images
    if gpu:
        say("epoch time: resnet20, 50,000 images")
        cand = replace(base, train=replace(base.train, batch_size=512, compile=True))
        rate, first = trainer_images_per_s(cand, cifar_shaped(sizes.epoch_images, device))
        rows.append(Row("resnet20: one epoch of 50,000 images", sizes.epoch_images / rate, "s", target="<= 1.0 s",
                        met=sizes.epoch_images / rate <= 1.0,
                        note=f"{precision}, batch 512, torch.compile (compile {first:.1f} s apart)"))
    else:
        rows.append(Row("resnet20: one epoch of 50,000 images (CPU, projected)", 50_000 / rates["resnet20"], "s",
                        note=f"from the dense rate over {steps} steps; the GPU target (<= 1.0 s) is still to be "
                             f"measured"))

    # 3. M trials at once on one device
    single = None
    for m in sizes.concurrency + ((8,) if gpu and 8 not in sizes.concurrency else ()):
        say(f"concurrency: {m} trial(s) at once")
        agg = aggregate_images_per_s(m, "resnet20", sizes.batch_size, sizes.concurrency_seconds, device,
                                     images=max(512, 4 * sizes.batch_size))
        single = single or agg
        target = ">= 3x" if m == 4 and gpu else ""
        note = "" if gpu else "CPU: the cores are split between the trials; the GPU target is still to be measured"
        rows.append(Row(f"resnet20: {m} concurrent trial(s), aggregate", agg, "img/s", "1 trial", agg / single,
                        target, (agg / single >= 3) if target else None, note if m == sizes.concurrency[-1] else ""))

    # 4. orchestration overhead of a real trial
    say("orchestration: a worker on a small study")
    o = orchestration_overhead(sizes.orchestration_trials, sizes.orchestration_epochs, sizes.orchestration_data)
    rows.append(Row("orchestration per trial (share of trial time)", 100 * o["fraction"], "%", target="< 2 %",
                    met=o["fraction"] < 0.02,
                    note=f"{o['orchestration_s']:.2f} s of {o['trial_s']:.1f} s per trial, trials 2-{o['trials'] + 1} "
                         f"({sizes.orchestration_epochs} epochs on {sizes.orchestration_data}); trial 1 "
                         f"{o['first_orchestration_s']:.2f} s; sampling {o['sample_s']:.2f} s and per-epoch "
                         f"bookkeeping {o['bookkeeping_s']:.2f} s of each trial's orchestration"))

    # 5. peak memory
    say(f"memory: resnet20 on {sizes.memory_images:,} images")
    mem = peak_memory(device, sizes.memory_images)
    rows.append(Row(f"peak RSS, resnet20 worker, {sizes.memory_images:,} images", mem["rss_gib"], "GiB",
                    target="< 2 GiB", met=mem["rss_gib"] < 2))
    if "cuda_max_allocated_gib" in mem:
        rows.append(Row("peak GPU memory allocated, same run", mem["cuda_max_allocated_gib"], "GiB"))
    elif not gpu:
        rows.append(Row("peak GPU memory allocated", NOT_MEASURED, "GiB", note="no GPU here: still to be measured"))
    return rows


def is_measured(row: Row) -> bool:
    return not math.isnan(row.value)
