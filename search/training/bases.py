"""Bases: dense networks trained once and shared by every trial that starts from them.

Two kinds, both stored in the study's artifact store through :class:`BaseStore` under a study lock per key, so two
workers that need the same base at the same moment train it once (as :func:`search.training.teacher.get_shared_teacher`
does for the teacher):

* **Converged bases** (the study file's ``base:``, :class:`BaseConfig`): the dense network of one architecture
  configuration (arch, width, groups, depthwise, arch options) trained with the study's base recipe (its own
  epochs), independent of how long a candidate is fine-tuned. Every candidate of that architecture is the base,
  compressed, then fine-tuned for the study's ``train.epochs``; the uncompressed base is its distillation teacher.
  This is the design documents' "train once, compress many" (seed 000: one ResNet-18 trained 200 epochs, then 36
  compressed fine-tunes). The key holds the data's digest, so later studies that share the artifact folder, the data
  and the recipe reuse the base.
* **Shared dense phases** (``reuse_bases``, studies without ``base:``): the state at the end of a from-scratch
  candidate's dense phase (weights, optimizer, schedule position, RNG); the others load it and go on exactly as if
  they had trained it themselves. Kept for studies trained from scratch; with ``base:`` there is no dense phase to
  share.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from search.candidate.candidate import Candidate
from search.candidate.recipe import MAX_EPOCHS, SCHEDULES, TrainConfig
from search.config import number
from search.errors import ConfigError
from search.training.data import DataConfig, Splits, data_digest
from search.training.trainer import EpochCallback, Trainer, device_setup

if TYPE_CHECKING:  # the study's lock, passed in by the trial: training does not import the study
    from search.study.locks import StudyLock

FORMAT = b"micronet-base 1\n"  # then the sha256 of the payload (32 bytes), then the torch.save payload
TEACHERS = ("base", "study")


@dataclass(frozen=True)
class BaseConfig:
    """The study file's ``base:``: how a base is trained, who teaches, and how much of the budget bases may take.

    The base recipe is the study's ``train:`` with these ``epochs``, ``lr`` and ``schedule``; ``train:`` itself is
    then the fine-tune recipe of every candidate. ``teacher``: ``base`` (the uncompressed base teaches its
    compressed self) or ``study`` (the study's ``teacher:``). ``max_share``: with a ``timeout``, new bases are
    trained only while the bases' training time (measured, plus the new one's predicted) stays within this share of
    the workers' time; ``max_bases``: at most this many bases (none: no cap). A candidate whose architecture has no
    base past either bound is stopped before training, at the cost of one sample.
    """

    epochs: int = 30
    lr: float = 0.1
    schedule: str = "onecycle"
    teacher: str = "base"
    max_share: float = 0.5
    max_bases: int | None = None

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or not 1 <= self.epochs <= MAX_EPOCHS:
            raise ConfigError(f"base epochs must be an integer from 1 to {MAX_EPOCHS}, got {self.epochs!r}")
        if not number(self.lr) or self.lr <= 0:
            raise ConfigError(f"base lr must be a number > 0, got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"base schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.teacher not in TEACHERS:
            raise ConfigError(f"base teacher must be one of {', '.join(TEACHERS)}, got {self.teacher!r}")
        if not number(self.max_share) or not 0 < self.max_share <= 1:
            raise ConfigError(f"base max_share must be in (0, 1], got {self.max_share!r}")
        if self.max_bases is not None and (isinstance(self.max_bases, bool) or not isinstance(self.max_bases, int)
                                           or self.max_bases < 1):
            raise ConfigError(f"base max_bases must be an integer >= 1 (or null: no cap), got {self.max_bases!r}")

    def recipe(self, train: TrainConfig) -> TrainConfig:
        """The base's training recipe: the study's ``train:`` with the base's epochs, lr and schedule."""
        return replace(train, epochs=self.epochs, lr=self.lr, schedule=self.schedule)


def architecture(candidate: Candidate) -> Candidate:
    """The dense network ``candidate`` starts from: its architecture configuration, nothing compressed."""
    return Candidate(arch=candidate.arch, width=candidate.width, groups=candidate.groups,
                     depthwise=candidate.depthwise, arch_options=candidate.arch_options)


def converged_key(candidate: Candidate, recipe: TrainConfig, data_key: str, device: str = "cpu") -> str:
    """The identity of the converged base of ``candidate``'s architecture: the architecture, the base recipe, the
    data, and the device kind with the precision it resolves to. The compression and the fine-tune are left out."""
    autocast, channels_last = device_setup(torch.device(device), recipe.precision, recipe.channels_last)
    identity = {
        "kind": "converged", "arch": candidate.arch, "width": candidate.width, "groups": candidate.groups,
        "depthwise": candidate.depthwise, "arch_options": candidate.arch_options, "train": asdict(recipe),
        "tta_flip": candidate.train.tta_flip, "data": data_key,
        "device": torch.device(device).type, "autocast": str(autocast), "channels_last": channels_last,
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def train_converged(candidate: Candidate, recipe: TrainConfig, data: Splits,
                    on_epoch: EpochCallback | None = None) -> dict:
    """Train the dense network of ``candidate``'s architecture with ``recipe``; the stored form of a converged base:
    its weights, validation accuracy, epochs and training seconds."""
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    model = replace(architecture(candidate), train=recipe).build(data.num_classes).to(data.device)
    trainer = Trainer(model, data, recipe, on_epoch=on_epoch)
    trainer.run()
    trainer.adopt_average()
    return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "val_accuracy": trainer.evaluate(data.x_val, data.y_val), "epochs": trainer.epoch,
            "train_s": time.perf_counter() - start}


def base_key(candidate: Candidate, data_key: str, teacher_id: str | None = None, device: str = "cpu") -> str | None:
    """The identity of ``candidate``'s dense phase: equal keys mean the same state after ``dense_epochs``.

    Everything that can change that state goes in, nothing else: the model, the whole training configuration (the
    epochs too: the learning-rate schedule spans the whole run), the distillation loss and its teacher, the data,
    and the device kind with the precision it resolves to (a CUDA generator's state does not load into a CPU one,
    and ``precision: auto`` means bf16 on some machines, fp32 on others). The compression is left out: it starts
    after the base. None when there is nothing to share: no dense epoch, or nothing compressed after them.
    """
    dense = candidate.dense_epochs
    if dense == 0 or dense >= candidate.train.epochs:
        return None
    kd = candidate.distillation
    if kd is not None and not teacher_id:
        raise ValueError("a candidate with distillation needs the teacher's identity in its base key")
    autocast, channels_last = device_setup(torch.device(device), candidate.train.precision,
                                           candidate.train.channels_last)
    identity = {
        "arch": candidate.arch, "width": candidate.width, "groups": candidate.groups,
        "depthwise": candidate.depthwise, "arch_options": candidate.arch_options, "dense_epochs": dense,
        "train": asdict(candidate.train),
        "distillation": None if kd is None else asdict(kd), "teacher": None if kd is None else teacher_id,
        "data": data_key,
        "device": torch.device(device).type, "autocast": str(autocast), "channels_last": channels_last,
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def data_identity(config: DataConfig, data: Splits) -> str:
    """``config.key()`` names the dataset and its split; a digest of the loaded data tells apart two files of the
    same name (``key`` keeps only a path's file name) or a dataset that changed on disk."""
    return f"{config.key()}-{data_digest(data)}"


def model_digest(model: nn.Module) -> str:
    """A digest of ``model``'s weights: the teacher's identity. Its spec's key is not enough, since a worker may
    load a teacher of that key from its local cache that differs from the study's."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(_bytes(t))
    return h.hexdigest()[:16]


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


class BaseStore:
    """Bases in an Optuna artifact store (``write``, ``open_reader``), as artifacts ``base-<key>``.

    ``lock_for(key)``: the study lock of one base (:func:`search.study.locks.study_lock`).
    """

    def __init__(self, artifact_store, lock_for: Callable[[str], StudyLock]):
        self.artifact_store, self.lock_for = artifact_store, lock_for

    @staticmethod
    def artifact_id(key: str) -> str:
        return f"base-{key}"

    def get_or_train(self, key: str, train: Callable[[], dict]) -> tuple[dict, bool]:
        """(the trainer state at the end of the dense phase, whether it was reused): loaded if stored, else
        ``train()``-ed and stored. Of several workers asking at once one trains, the others wait and load."""
        state = self.load(key)  # a complete base needs no lock: its checksum tells it from one being written
        if state is not None:
            return state, True
        with self.lock_for(key):
            state = self.load(key)  # read again: the worker we waited for has stored it meanwhile
            if state is not None:
                return state, True
            state = train()
            self._write(key, state)
        return state, False

    def load(self, key: str) -> dict | None:
        """The stored base, or None when there is none or it cannot be read (a worker died while writing it: the
        artifact store has no atomic rename, so the checksum is what tells a torn file; it is trained again)."""
        try:
            with self.artifact_store.open_reader(self.artifact_id(key)) as f:
                blob = f.read()
        except Exception:  # ArtifactNotFound, or whatever another store kind raises for a missing one
            return None
        header = FORMAT + key.encode() + b"\n"
        digest, payload = blob[len(header):len(header) + 32], blob[len(header) + 32:]
        if not blob.startswith(header) or hashlib.sha256(payload).digest() != digest:
            return None
        try:
            return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception:
            return None

    def _write(self, key: str, state: dict) -> None:
        payload = io.BytesIO()
        torch.save(state, payload)
        data = payload.getvalue()
        blob = FORMAT + key.encode() + b"\n" + hashlib.sha256(data).digest() + data
        self.artifact_store.write(self.artifact_id(key), io.BytesIO(blob))


@dataclass(frozen=True)
class Base:
    """One candidate's base for :func:`search.training.run.run_candidate`: a store and a key bound together.
    ``on_ready(reused)`` hears, before any compressed epoch, whether the base was loaded or trained here."""

    store: BaseStore
    key: str
    on_ready: Callable[[bool], None] | None = None

    def get_or_train(self, train: Callable[[], dict]) -> tuple[dict, bool]:
        state, reused = self.store.get_or_train(self.key, train)
        if self.on_ready is not None:
            self.on_ready(reused)
        return state, reused
