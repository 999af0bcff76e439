"""Peak memory of a worker training resnet20 on a full CIFAR-sized dataset: the process's peak RSS and, on a GPU,
the peak memory torch allocated.

The data is written in CIFAR-10's on-disk format (50,000 training and 10,000 test images of random pixels) and read
by the real CIFAR loader, so the figure is what a worker on CIFAR-10 holds. It is measured in a fresh child process
that imports what a worker imports, so nothing the benchmark itself loaded counts.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import json, sys, torch
import search.study.runner  # everything a worker imports
from search.training.data import DataConfig, load_data, train_batches
from search.models import build_model
from search.candidate.recipe import TrainConfig
from search.training.trainer import Trainer
device = torch.device(sys.argv[1])
data = load_data(DataConfig(name="cifar10", path=sys.argv[2]), device)
trainer = Trainer(build_model("resnet20", num_classes=10).to(device), data, TrainConfig(epochs=1, batch_size=128))
gen = torch.Generator(device=device).manual_seed(0)
for i, (xb, yb) in enumerate(train_batches(data.x_train, data.y_train, 128, gen, trainer.config.augment)):
    if i == int(sys.argv[3]):
        break
    loss = torch.nn.functional.cross_entropy(trainer.forward(trainer._inputs(xb)), yb)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()
trainer.evaluate(data.x_val, data.y_val)  # evaluation batches of 1024 images
# VmHWM, not getrusage's ru_maxrss: Linux carries the parent's peak into a child across fork and exec
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
out = {"rss_gib": hwm / 2**20, "train_images": len(data.y_train)}
if device.type == "cuda":
    out["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
print(json.dumps(out))
"""


def write_cifar_shaped(root: Path, train_images: int = 50_000, test_images: int = 10_000) -> Path:
    """CIFAR-10's python format (five training batches and a test batch) with random pixels and labels."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = [train_images // 5] * 5 + [test_images]
    for name, n in zip([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], sizes, strict=True):
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        labels[:10] = range(10)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8), "labels": labels}, f)
    return Path(root)


def peak_memory(device: str = "cpu", images: int = 50_000, steps: int = 5) -> dict:
    """{'rss_gib', 'train_images', and on CUDA 'cuda_max_allocated_gib'} after ``steps`` training steps and one
    evaluation of the validation split."""
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar_shaped(Path(tmp), images, max(10, images // 5))
        out = subprocess.run([sys.executable, "-c", CHILD, device, tmp, str(steps)], capture_output=True, text=True,
                             check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
