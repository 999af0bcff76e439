"""Training throughput: the project's trainer against the classic CIFAR loop, same model, data, batch and optimizer.

Classic loop: a Dataset that makes a PIL image per item with torchvision transforms (RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor, Normalize) and a DataLoader with 2 workers: the pattern of the seeds' scripts.
Project loop: search.train.Trainer (uint8 tensors on the device, batched tensor augmentation).
Also records the peak RSS of a worker training ResNet20 on 50,000 CIFAR-shaped images.

    python scripts/bench_train.py                # prints the table, appends it to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from search.data import DataConfig, load_data
from search.models import build_model
from search.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parent.parent


class PILDataset(Dataset):
    """The torchvision CIFAR10 pattern: one PIL image and one transform pipeline per item."""

    def __init__(self, x_hwc: np.ndarray, y: np.ndarray, mean, std):
        self.x, self.y = x_hwc, y
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def classic_images_per_s(data, arch: str, batch_size: int, lr: float, workers: int) -> float:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = data.x_train.permute(0, 2, 3, 1).contiguous().numpy()
    loader = DataLoader(PILDataset(x, data.y_train.numpy(), data.mean, data.std), batch_size=batch_size,
                        shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    model.train()
    n, start = 0, time.perf_counter()
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        n += len(yb)
    return n / (time.perf_counter() - start)


def project_images_per_s(data, arch: str, batch_size: int, lr: float) -> float:
    torch.manual_seed(0)
    trainer = Trainer(build_model(arch, num_classes=data.num_classes), data,
                      TrainConfig(epochs=1, batch_size=batch_size, lr=lr))
    trainer.run()
    return trainer.images_per_s


MEMORY_CHILD = """
import json, resource, torch
from search.data import DataConfig, load_data
from search.models import build_model
from search.train import Trainer, TrainConfig
data = load_data(DataConfig(name="synthetic", synthetic_size={n}))
trainer = Trainer(build_model("resnet20"), data, TrainConfig(epochs=1, batch_size=128))
trainer.run()
print(json.dumps({{"rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "images_per_s": trainer.images_per_s}}))
"""


def peak_rss(images: int) -> dict:
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD.format(n=images)], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--images", type=int, default=5120, help="training images per timed epoch")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the classic loop")
    p.add_argument("--memory-images", type=int, default=50_000, help="0 skips the memory run")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()

    # CIFAR-shaped synthetic images: the same uint8 tensors feed both loops.
    data = load_data(DataConfig(name="synthetic", synthetic_size=int(args.images / 0.9) + 1))
    lr = 0.05
    classic = classic_images_per_s(data, args.arch, args.batch_size, lr, args.workers)
    ours = project_images_per_s(data, args.arch, args.batch_size, lr)
    memory = peak_rss(args.memory_images) if args.memory_images else None

    table = Table(title=f"{args.arch} training throughput, batch {args.batch_size}, {len(data.y_train)} images")
    for col in ("loop", "images/s", "ratio"):
        table.add_column(col, justify="right" if col != "loop" else "left")
    table.add_row(f"classic (PIL transforms + DataLoader, {args.workers} workers)", f"{classic:,.0f}", "1.00×")
    table.add_row("micronet-search Trainer", f"{ours:,.0f}", f"{ours / classic:.2f}×")
    Console().print(table)
    if memory:
        print(f"peak RSS, resnet20 on {args.memory_images:,} CIFAR-shaped images: {memory['rss_gib']:.2f} GiB")

    date = datetime.date.today().isoformat()
    command = "python scripts/bench_train.py " + " ".join(sys.argv[1:])
    lines = [
        f"\n## Training throughput: {args.arch} ({date})\n",
        f"Machine: {machine()}. Command: `{command.strip()}`.\n",
        "| loop | images/s | ratio to classic | target |",
        "|---|---:|---:|---|",
        f"| classic: PIL transforms + DataLoader ({args.workers} workers) | {classic:,.0f} | 1.00× | |",
        f"| micronet-search Trainer | {ours:,.0f} | {ours / classic:.2f}× | ≥ 3× |",
    ]
    if memory:
        lines.append(f"\nPeak RSS of a worker training {args.arch if args.arch == 'resnet20' else 'resnet20'} on "
                     f"{args.memory_images:,} CIFAR-shaped images (one epoch, batch 128): "
                     f"**{memory['rss_gib']:.2f} GiB** (target < 2 GiB).\n")
    out = Path(args.out)
    if not out.exists():
        out.write_text("# Benchmarks\n\nEach section: the machine, the date, the command, the numbers.\n")
    with out.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
