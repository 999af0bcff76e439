"""A running trial's resume checkpoint (:mod:`search.trial.pipeline`): its state after an epoch, in the artifact store,
pointed at by its record (``resume``). A retry of the trial (a dead or interrupted worker's) starts from it."""

from __future__ import annotations

import io
import re
import uuid

import torch

from search import optuna_compat as compat
from search.candidate.candidate import Candidate
from search.trial import record
from search.trial.record import TrialRecord

RESUME_ID = re.compile(r"resume-[0-9a-f]{32}")  # what save() writes; a trial attribute anyone can edit is checked


def resume_id(pointer) -> str | None:
    """The artifact id of a resume pointer when it is one ``save`` wrote, else None. The pointer is a trial user
    attribute: the dashboard (no login) and ``enqueue_trial(user_attrs=...)`` can set it to another trial's checkpoint,
    a base or a path, and loading or deleting it blindly would follow them."""
    artifact_id = pointer.get("artifact_id") if isinstance(pointer, dict) else None
    return artifact_id if isinstance(artifact_id, str) and RESUME_ID.fullmatch(artifact_id) else None


class ResumeCheckpoints:
    def __init__(self, artifact_store):
        self.artifact_store = artifact_store

    def save(self, trial, candidate: Candidate, epoch: int, state: dict) -> None:
        """Write the trial's state after ``epoch`` to the artifact store, then point the trial at it: a worker killed
        while writing leaves the previous checkpoint in charge."""
        buffer = io.BytesIO()
        torch.save({**state, "candidate": candidate.to_dict()}, buffer)
        buffer.seek(0)
        artifact_id = f"resume-{uuid.uuid4().hex}"
        try:
            self.artifact_store.write(artifact_id, buffer)
        except OSError as e:  # a full or unwritable store: training goes on, the previous checkpoint stays in charge
            record.write(trial, resume_error=f"cannot write a resume checkpoint: {e.strerror or e}"[:200])
            return
        previous = resume_id(TrialRecord.of(trial).resume)
        record.write(trial, resume={"artifact_id": artifact_id, "epoch": epoch})
        if previous:
            self._remove(previous)

    def load(self, trial, candidate: Candidate) -> dict | None:
        """The last epoch checkpoint of the trial this one retries, if there is one and it can be read."""
        pointer = TrialRecord.of(trial).resume  # copied from the failed trial by the retry callback
        if not pointer or trial.storage.get_trial_system_attrs(compat.trial_id(trial)).get("failed_trial") is None:
            return None
        artifact_id = resume_id(pointer)
        if artifact_id is None:
            record.write(trial, resume_error="the resume pointer names no resume checkpoint: ignored")
            return None
        try:
            with self.artifact_store.open_reader(artifact_id) as f:
                state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        except Exception as e:  # missing or torn file: start again from epoch 0
            record.write(trial, resume_error=f"{type(e).__name__}: {e}"[:200])
            return None
        if state.get("candidate") != candidate.to_dict():
            return None
        record.write(trial, resumed_from_epoch=pointer["epoch"])
        return state

    def drop(self, trial) -> None:
        """Remove the trial's checkpoint: it finished one way or another."""
        pointer = TrialRecord.of(trial).resume
        if pointer:
            artifact_id = resume_id(pointer)
            if artifact_id is not None:  # anything else is not this trial's to delete
                self._remove(artifact_id)
            record.write(trial, resume=None)

    def _remove(self, artifact_id: str) -> None:
        try:
            self.artifact_store.remove(artifact_id)
        except Exception:
            pass  # already gone (another retry of the same trial removed it)
