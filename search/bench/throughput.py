"""Training images/s: the project's trainer against the classic CIFAR loop, same model, data, batch and optimizer.

Classic loop: a Dataset that makes a PIL image per item with torchvision transforms (RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor, Normalize) and a DataLoader with worker processes: the pattern of the seeds'
scripts. Project loop: :class:`search.training.trainer.Trainer` (uint8 tensors on the device, batched tensor
augmentation).
Both are timed after two warm-up steps, over the same number of steps of the same batch size. The classic loop can
run under the trainer's precision (bf16 autocast, channels_last), so that the two differ only in the data pipeline.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from search.candidate.candidate import Candidate, compress
from search.candidate.recipe import TrainConfig
from search.training.data import DataConfig, Splits, load_data
from search.training.trainer import Trainer, device_setup


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


def cifar_shaped(images: int, device: torch.device | str = "cpu") -> Splits:
    """``images`` CIFAR-shaped synthetic training images (after the 10 % validation split), on ``device``."""
    return load_data(DataConfig(name="synthetic", synthetic_size=math.ceil(images / 0.9) + 1), torch.device(device))


def classic_images_per_s(candidate: Candidate, data: Splits, steps: int, loader_workers: int = 2,
                         warmup: int = 2) -> float:
    """The classic loop on the candidate's dense model (CPU), at the precision ``candidate.train`` asks for."""
    torch.manual_seed(0)
    model = candidate.build(data.num_classes)
    cfg = candidate.train
    autocast_dtype, channels_last = device_setup(torch.device("cpu"), cfg.precision, cfg.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                weight_decay=cfg.weight_decay)
    x = data.x_train.cpu().permute(0, 2, 3, 1).contiguous().numpy()
    loader = DataLoader(PILDataset(x, data.y_train.cpu().numpy(), data.mean, data.std), batch_size=cfg.batch_size,
                        shuffle=True, num_workers=loader_workers, drop_last=True)
    model.train()
    n, start = 0, None
    for i, (xb, yb) in enumerate(loader):
        if i == warmup:
            n, start = 0, time.perf_counter()
        if i == warmup + steps:
            break
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        n += len(yb)
    if start is None or n < steps * cfg.batch_size:
        raise ValueError(f"the classic loop needs {warmup + steps} batches of {cfg.batch_size}; give it more images")
    return n / (time.perf_counter() - start)


def trainer_images_per_s(candidate: Candidate, data: Splits, warmup: int = 2) -> tuple[float, float]:
    """(images/s, seconds of the first step) of the project's trainer over one epoch of ``data``, with the
    candidate compressed (pruned, masks live, fake-quantized) when it has compression."""
    torch.manual_seed(0)
    model = candidate.build(data.num_classes).to(data.device)
    if candidate.compression != type(candidate.compression)():
        model = compress(model, candidate.compression)
    # warm-up epochs on a few batches: allocator, kernels, and torch.compile's compile when it is on
    head = replace(data, x_train=data.x_train[:warmup * candidate.train.batch_size],
                   y_train=data.y_train[:warmup * candidate.train.batch_size], x_val=data.x_val[:0],
                   y_val=data.y_val[:0])
    warm = Trainer(model, head, replace(candidate.train, epochs=1))
    start = time.perf_counter()
    warm.run()
    first = time.perf_counter() - start
    trainer = Trainer(model, replace(data, x_val=data.x_val[:0], y_val=data.y_val[:0]),
                      replace(candidate.train, epochs=1))
    if candidate.train.compile:
        trainer.forward = warm.forward  # the compiled module of the warm-up
    trainer.run()
    if data.device.type == "cuda":
        torch.cuda.synchronize()
    return trainer.images_per_s, first


def bench_candidate(arch: str, batch_size: int = 128, **kwargs) -> Candidate:
    train = TrainConfig(epochs=1, batch_size=batch_size, lr=0.05, **kwargs.pop("train", {}))
    return Candidate(arch=arch, train=train, **kwargs)
