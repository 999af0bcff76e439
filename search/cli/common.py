"""Pieces shared by the commands: dataset, data path and thread flags, device choice, per-epoch and per-study
progress."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from search.errors import ConfigError
from search.training.device import pick_device  # noqa: F401  (re-exported for the commands)
from search.training.trainer import EpochResult


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

    def __call__(self, r: EpochResult) -> None:
        status = f"loss {r.train_loss:.3f}  val {r.val_accuracy:.2%}  {r.images_per_s:,.0f} img/s"
        if self.progress is not None:
            self.progress.update(self.task, completed=r.epoch, status=status)
        else:
            print(f"{self.label} epoch {r.epoch}/{r.epochs}: {status}", file=sys.stderr, flush=True)


def add_data_path_argument(p) -> None:
    p.add_argument("--data-path", metavar="PATH",
                   help="the data: an .npz file (name: npz) or the CIFAR folder; replaces the study file's data.path")


def add_threads_argument(p) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads per worker (default: this host's cores divided by its live workers, "
                        "looked at again every few seconds; MICRONET_THREADS also sets it)")


def use_threads_argument(args) -> None:
    """``--threads N`` (checked here) for the runner and the workers ``run`` starts (search.study.session)."""
    from search.study.session import use_threads

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be an integer >= 1, got {args.threads}")
    use_threads(args.threads)  # a bad MICRONET_THREADS: one line now, before anything is written


class StudyProgress:
    """A study bar (complete / pruned / failed / front size) and an epoch bar for the running trial on a
    terminal; one plain line per event otherwise."""

    def __init__(self, total: int | None, epochs: int, live: bool | None = None, prefix: str = ""):
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal if live is None else live
        self.prefix = prefix
        self.epochs = epochs
        if self.live:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=self.console)
            self.study_task = self.progress.add_task("study", total=total, status="")
            self.trial_task = self.progress.add_task("trial", total=epochs, status="")

    def __enter__(self):
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.progress.stop()

    def log(self, text: str) -> None:
        if self.live:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            print(f"{self.prefix}{text}", file=sys.stderr, flush=True)

    def on_teacher_epoch(self, result) -> None:
        self.log(f"teacher epoch {result.epoch}/{result.epochs}: val {result.val_accuracy:.2%}")

    def on_epoch(self, number: int, result) -> None:
        status = f"loss {result.train_loss:.3f}  val {result.val_accuracy:.2%}"
        if self.live:
            self.progress.update(self.trial_task, description=f"trial {number}", completed=result.epoch,
                                 total=result.epochs, status=status)
        else:
            self.log(f"trial {number} epoch {result.epoch}/{result.epochs}: {status}")

    def on_trial(self, study, trial) -> None:
        from optuna.trial import TrialState

        from search.study.session import state_counts
        from search.trial.objectives import Objectives
        from search.trial.record import TrialRecord

        counts = state_counts(study)
        front = len(study.best_trials)
        status = (f"complete {counts[TrialState.COMPLETE]}  pruned {counts[TrialState.PRUNED]}  "
                  f"failed {counts[TrialState.FAIL]}  front {front}")
        if trial.state == TrialState.COMPLETE:
            objectives = Objectives.of_study(study)
            what = ", ".join(f"{m.name} {m.show(v)}" for m, v in zip(objectives, trial.values, strict=True))
        else:
            what = TrialRecord.of(trial).pruned_reason or trial.state.name.lower()
        worker = TrialRecord.of(trial).worker
        self.log(f"trial {trial.number} {trial.state.name.lower()}: {what}" + (f"  [{worker}]" if worker else ""))
        if self.live:
            self.progress.update(self.study_task, completed=counts[TrialState.COMPLETE] + counts[TrialState.PRUNED],
                                 status=status)
        else:
            self.log(f"study: {status}")
