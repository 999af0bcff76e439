"""Aggregate throughput of M trials training at once on one device, each in its own process.

One small CIFAR model leaves most of a large GPU idle, so ``run --trials-per-gpu M`` puts M workers on each GPU.
This measures what that buys: M child processes (the same device; CPU threads split between them on a CPU) train
the same candidate; they warm up, wait at a barrier, then count the images they train in the same time window.

    python -m search.bench.concurrency --child ...   is the child's entry point (used internally)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from search.machine import available_cores

ROOT_ENV = {"PYTHONUNBUFFERED": "1"}


def child(arch: str, batch_size: int, seconds: float, device: str, images: int, options: dict) -> None:
    """Warm up, say 'ready', wait for 'go' on stdin, train for ``seconds``, print images/s as JSON."""
    from search.bench.throughput import bench_candidate, cifar_shaped
    from search.training.data import train_batches
    from search.training.trainer import Trainer

    threads = os.environ.get("MICRONET_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    data = cifar_shaped(images, device)
    cand = bench_candidate(arch, batch_size, **options)
    torch.manual_seed(0)
    model = cand.build(data.num_classes).to(data.device)
    trainer = Trainer(model, data, cand.train)
    gen = torch.Generator(device=data.device).manual_seed(0)

    def steps():
        while True:
            yield from train_batches(data.x_train, data.y_train, batch_size, gen, cand.train.augment)

    # one training step exactly as the Trainer's epoch does it (same forward, loss, optimizer)
    def step(xb, yb):
        x = trainer._inputs(xb)
        with torch.autocast(data.device.type, dtype=trainer.autocast_dtype or torch.float32,
                            enabled=trainer.autocast_dtype is not None):
            loss = torch.nn.functional.cross_entropy(trainer.forward(x), yb)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()

    batches = steps()
    for _ in range(3):
        step(*next(batches))
    if data.device.type == "cuda":
        torch.cuda.synchronize()
    print("ready", flush=True)
    sys.stdin.readline()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        xb, yb = next(batches)
        step(xb, yb)
        n += len(yb)
    if data.device.type == "cuda":
        torch.cuda.synchronize()
    print(json.dumps({"images_per_s": n / (time.perf_counter() - start)}), flush=True)


def aggregate_images_per_s(m: int, arch: str = "resnet20", batch_size: int = 128, seconds: float = 10.0,
                           device: str = "cpu", images: int = 2048, options: dict | None = None) -> float:
    """Sum of the images/s of ``m`` concurrent training processes on ``device``."""
    cores = available_cores()
    env = {**os.environ, **ROOT_ENV, "MICRONET_THREADS": str(max(1, cores // m)),
           "OMP_NUM_THREADS": str(max(1, cores // m))}
    args = [sys.executable, "-m", "search.bench.concurrency", "--child", "--arch", arch, "--batch-size",
            str(batch_size), "--seconds", str(seconds), "--device", device, "--images", str(images), "--options",
            json.dumps(options or {})]
    procs = [subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(m)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a benchmark child failed before it was ready (exit {p.wait()})")
        for p in procs:  # all warmed up: start the window together
            p.stdin.write("go\n")
            p.stdin.flush()
        rates = []
        for p in procs:
            out, _ = p.communicate(timeout=seconds * 10 + 120)
            rates.append(json.loads(out.strip().splitlines()[-1])["images_per_s"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return sum(rates)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--options", default="{}")
    a = p.parse_args()
    if a.child:
        child(a.arch, a.batch_size, a.seconds, a.device, a.images, json.loads(a.options))
    else:
        print(aggregate_images_per_s(1, a.arch, a.batch_size, a.seconds, a.device, a.images, json.loads(a.options)))


if __name__ == "__main__":
    main()
