"""Where the time of one CPU training step goes: torch.profiler over the project's trainer (resnet20, batch 128).

    python scripts/profile_step.py [--arch resnet20] [--steps 20] [--precision fp32] [--compressed]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from search.bench.suite import COMPRESSED
from search.candidate.candidate import compress
from search.candidate.recipe import PRECISIONS
from search.models import build_model
from search.training.data import Augmentation, DataConfig, load_data, normalize, train_batches
from search.training.trainer import device_setup


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="as the trainer's (default auto)")
    p.add_argument("--compressed", action="store_true", help="profile the model at ps 0.5, qw 8, qa 8 (fake "
                                                             "quantization live), as the benchmark's compressed rows")
    args = p.parse_args()
    autocast_dtype, channels_last = device_setup(torch.device("cpu"), args.precision)
    data = load_data(DataConfig(name="synthetic", synthetic_size=args.batch_size * (args.steps + 4)))
    model = build_model(args.arch, num_classes=data.num_classes)
    if args.compressed:
        model = compress(model, COMPRESSED)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    batches = list(train_batches(data.x_train, data.y_train, args.batch_size, gen, None))
    augment = Augmentation()

    def step(xb, yb):
        with record_function("data: augment + normalize"):
            x = normalize(augment(xb, gen), data.mean, data.std, channels_last=channels_last)
        with record_function("model: forward + loss"), torch.autocast(
                "cpu", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), yb)
        with record_function("model: backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("optimizer step"):
            opt.step()

    for xb, yb in batches[:3]:
        step(xb, yb)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for xb, yb in batches[3:3 + args.steps]:
            step(xb, yb)
    events = {e.key: e.cpu_time_total for e in prof.key_averages() if e.key.startswith(("data:", "model:", "opt"))}
    total = sum(events.values())
    name = args.arch + (" ps 0.5 qw 8 qa 8" if args.compressed else "")
    print(f"{name}, batch {args.batch_size}, {args.steps} steps, {torch.get_num_threads()} threads, "
          f"{'bf16 autocast' if autocast_dtype else 'fp32'}{' + channels_last' if channels_last else ''}")
    for key, us in sorted(events.items(), key=lambda kv: -kv[1]):
        print(f"  {key:28s} {us / 1e3 / args.steps:8.1f} ms/step  {us / total:6.1%}")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
