"""Bases: the state at the end of a candidate's dense phase, trained once and shared by every trial that needs it.

Candidates that differ only in their compression (``ps``, ``pu``, ``qw``, ``qa``) train the very same dense network
for ``dense_epochs`` epochs before compressing it. With ``reuse_bases`` the first trial that needs a base trains it
and writes the trainer's state (weights, optimizer, schedule position, RNG) to the study's artifact store; the
others load it and go on from there exactly as if they had trained it themselves. A study lock per base makes two
workers that need the same base at the same moment train it once (as :func:`search.training.teacher.get_shared_teacher`
does for the teacher).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from search.candidate.candidate import Candidate
from search.training.data import DataConfig, Splits
from search.training.trainer import device_setup

if TYPE_CHECKING:  # the study's lock, passed in by the trial: training does not import the study
    from search.study.locks import StudyLock

FORMAT = b"micronet-base 1\n"  # then the sha256 of the payload (32 bytes), then the torch.save payload


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
    h = hashlib.sha256(json.dumps([data.num_classes, len(data.y_train), data.mean, data.std]).encode())
    for t in (data.y_train, data.y_val, data.x_val):  # the training images are in mean and std
        h.update(_bytes(t))
    return f"{config.key()}-{h.hexdigest()[:16]}"


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
