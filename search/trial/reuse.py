"""The trial's side of the bases (:mod:`search.training.bases`): the converged base a candidate is fine-tuned from
(``base:``, :class:`ConvergedBases`) or the dense phase it shares (``reuse_bases``, :class:`BaseReuse`), and what the
trial records about it."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from torch import nn

from search.candidate.candidate import Candidate
from search.study.locks import study_lock
from search.training.bases import (
    Base,
    BaseStore,
    architecture,
    base_key,
    converged_key,
    data_identity,
    model_digest,
    train_converged,
)
from search.training.trainer import EpochResult
from search.trial import record


class BaseReuse:
    """``loaded``: the LoadedStudy; ``data``, ``teacher``: the worker's, loaded once."""

    def __init__(self, loaded, data, teacher, artifact_store):
        self.loaded, self.config, self.data, self.teacher = loaded, loaded.config, data, teacher
        self.artifact_store = artifact_store
        self._bases: BaseStore | None = None   # built at the first trial that needs one
        self._identities: dict[str, str] = {}  # the data's and the teacher's, for base keys: computed once

    def base(self, trial, candidate: Candidate) -> Base | None:
        """With ``reuse_bases``, the shared dense phase of ``candidate``; records ``base_key``, then ``base_reused``
        and ``epochs_saved`` once the base is loaded or trained."""
        if not self.config.reuse_bases:
            return None
        ids = self._identities
        if "data" not in ids:
            ids["data"] = data_identity(self.config.data, self.data)
        if candidate.distillation is not None and "teacher" not in ids:
            ids["teacher"] = f"{self.config.teacher.key(self.config.data)}-{model_digest(self.teacher)}"
        key = base_key(candidate, ids["data"], ids.get("teacher"), self.data.device.type)
        record.write(trial, base_key=key, base_reused=False, epochs_saved=0)
        if key is None:
            return None
        if self._bases is None:
            url, name = self.loaded.storage_url, self.config.name
            self._bases = BaseStore(self.artifact_store, lambda k: study_lock(url, f"{name}:base:{k}"))

        def ready(reused: bool) -> None:
            record.write(trial, base_reused=reused, epochs_saved=candidate.dense_epochs if reused else 0)

        return Base(self._bases, key, ready)


class ConvergedBases:
    """With ``base:``: the converged base of each candidate's architecture, loaded from the artifact store or trained
    there by the first trial that needs it (under its study lock), and kept in this worker's memory for the next
    trials of that architecture. ``on_epoch(label, EpochResult)`` hears the epochs of a base trained here."""

    KEEP = 4  # bases kept in memory per worker (a few MB each): a space has a handful of architectures

    def __init__(self, loaded, data, artifact_store, on_epoch: Callable[[str, EpochResult], None] | None = None):
        self.loaded, self.config, self.data = loaded, loaded.config, data
        self.recipe = self.config.base.recipe(self.config.train)
        self.on_epoch = on_epoch
        url, name = loaded.storage_url, self.config.name
        self.store = BaseStore(artifact_store, lambda k: study_lock(url, f"{name}:base:{k}"))
        self._data_id: str | None = None
        self._kept: OrderedDict[str, dict] = OrderedDict()

    def key(self, candidate: Candidate) -> str:
        if self._data_id is None:
            self._data_id = data_identity(self.config.data, self.data)
        return converged_key(candidate, self.recipe, self._data_id, self.data.device.type)

    def stored(self, key: str) -> dict | None:
        """The base of ``key`` if it is in memory or in the store."""
        if key not in self._kept:
            state = self.store.load(key)
            if state is None:
                return None
            self._keep(key, state)
        return self._kept[key]

    def get(self, trial, candidate: Candidate) -> dict:
        """The base of ``candidate``'s architecture (``model``, ``val_accuracy``, ``epochs``, ``train_s``); records
        ``base_key`` and ``base_reused`` first (the budget counts a base being trained), then what the base cost."""
        key = self.key(candidate)
        state = self.stored(key)
        if state is None:
            record.write(trial, base_key=key, base_reused=False)
            label = label_of(candidate)

            def on_epoch(result: EpochResult) -> None:
                if self.on_epoch is not None:
                    self.on_epoch(label, result)

            asked = time.perf_counter()
            state, reused = self.store.get_or_train(key, lambda: train_converged(candidate, self.recipe, self.data,
                                                                                  on_epoch))
            if reused:  # another worker trained it while this one waited on the base's lock
                record.write(trial, base_wait_s=time.perf_counter() - asked)
            self._keep(key, state)
        else:
            reused = True
        record.write(trial, base_key=key, base_reused=reused, base_train_s=state["train_s"],
                     base_epochs=state["epochs"], base_val_accuracy=state["val_accuracy"])
        return state

    def teacher(self, candidate: Candidate, state: dict) -> nn.Module:
        """The uncompressed base as a model: the teacher of its compressed candidates."""
        model = replace(architecture(candidate), train=candidate.train).build(self.data.num_classes)
        model.load_state_dict(state["model"])
        return model.to(self.data.device).eval()

    def _keep(self, key: str, state: dict) -> None:
        self._kept[key] = state
        self._kept.move_to_end(key)
        while len(self._kept) > self.KEEP:
            self._kept.popitem(last=False)


def label_of(candidate: Candidate) -> str:
    """A base's name in the progress lines: its architecture configuration."""
    options = "".join(f" {k} {v}" for k, v in sorted(candidate.arch_options.items()))
    return (f"{candidate.arch} width {candidate.width:g} groups {candidate.groups}"
            f"{' depthwise' if candidate.depthwise else ''}{options}")
