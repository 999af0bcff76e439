"""Pieces shared by the commands: dataset flags, device choice, per-epoch progress."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from search.training.device import pick_device  # noqa: F401  (re-exported for the commands)
from search.training.trainer import EpochReport


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="cifar10, cifar100, npz, folder, digits or synthetic (default digits)")
    g.add_argument("--data-path", help="folder holding cifar-10-batches-py / cifar-100-python, the .npz file, or the "
                                       "image folder (DIR/<class>/*.png, or DIR/train/… and DIR/test/…)")
    g.add_argument("--download", action="store_true", default=None, help="download CIFAR when missing (online)")
    g.add_argument("--subset", type=int, help="keep the first N training images (stratified)")
    g.add_argument("--val-fraction", type=float, help="validation share of the training images (default 0.1)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda when available)")


def data_overrides(args) -> dict:
    pairs = {"name": args.dataset, "path": args.data_path, "download": args.download, "subset": args.subset,
             "val_fraction": args.val_fraction}
    return {k: v for k, v in pairs.items() if v is not None}


class EpochProgress:
    """A rich bar per run on a terminal (stderr); one plain line per epoch otherwise."""

    def __init__(self, label: str, epochs: int):
        self.console = Console(stderr=True)
        self.label = label
        self.progress = None
        if self.console.is_terminal:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=self.console)
            self.task = self.progress.add_task(label, total=epochs, status="")

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, r: EpochReport) -> None:
        status = f"loss {r.train_loss:.3f}  val {r.val_accuracy:.2%}  {r.images_per_s:,.0f} img/s"
        if self.progress is not None:
            self.progress.update(self.task, completed=r.epoch, status=status)
        else:
            print(f"{self.label} epoch {r.epoch}/{r.epochs}: {status}", file=sys.stderr, flush=True)
