"""The trial's side of ``reuse_bases`` (:mod:`search.training.bases`): the base a candidate shares its dense phase
with, and what the trial records about it."""

from __future__ import annotations

from search.candidate.candidate import Candidate
from search.study.locks import study_lock
from search.training.bases import Base, BaseStore, base_key, data_identity, model_digest
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
