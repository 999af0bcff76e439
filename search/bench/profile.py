"""Where the time of one CPU training step goes: torch.profiler over the project's trainer (resnet20, batch 128).

    micronet-search bench profile [--arch resnet20] [--steps 20] [--precision fp32] [--compressed]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from search.bench.suite import COMPRESSED
from search.candidate.candidate import compress
from search.models import build_model
from search.training.data import Augmentation, DataConfig, load_data, normalize, train_batches
from search.training.trainer import device_setup

STEPS = 20  # profiled training steps


@dataclass(frozen=True)
class StepProfile:
    name: str                  # the architecture, and the compression when profiled compressed
    batch_size: int
    steps: int
    threads: int
    precision: str             # "bf16 autocast" or "fp32", and "+ channels_last"
    events: dict[str, float]   # the step's phases (data, forward + loss, backward, optimizer) -> CPU µs, all steps
    table: str                 # torch.profiler's table of the top operators

    def render(self) -> str:
        total = sum(self.events.values())
        lines = [f"{self.name}, batch {self.batch_size}, {self.steps} steps, {self.threads} threads, {self.precision}"]
        for key, us in sorted(self.events.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {key:28s} {us / 1e3 / self.steps:8.1f} ms/step  {us / total:6.1%}")
        return "\n".join(lines) + "\n" + self.table


def profile_step(arch: str = "resnet20", steps: int = STEPS, batch_size: int = 128, precision: str = "auto",
                 compressed: bool = False) -> StepProfile:
    """Profile ``steps`` training steps (after 3 warm-up steps) on synthetic CIFAR-shaped data; ``compressed``: the
    model at ps 0.5, qw 8, qa 8 (fake quantization live), as the benchmark's compressed rows."""
    autocast_dtype, channels_last = device_setup(torch.device("cpu"), precision)
    data = load_data(DataConfig(name="synthetic", synthetic_size=batch_size * (steps + 4)))
    model = build_model(arch, num_classes=data.num_classes)
    if compressed:
        model = compress(model, COMPRESSED)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    batches = list(train_batches(data.x_train, data.y_train, batch_size, gen, None))
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
        for xb, yb in batches[3:3 + steps]:
            step(xb, yb)
    events = {e.key: e.cpu_time_total for e in prof.key_averages() if e.key.startswith(("data:", "model:", "opt"))}
    return StepProfile(
        name=arch + (" ps 0.5 qw 8 qa 8" if compressed else ""), batch_size=batch_size, steps=steps,
        threads=torch.get_num_threads(),
        precision=("bf16 autocast" if autocast_dtype else "fp32") + (" + channels_last" if channels_last else ""),
        events=events, table=prof.key_averages().table(sort_by="cpu_time_total", row_limit=12))
