"""What a trial records: its Optuna user attributes, written and read through one dataclass.

The objective writes them (:func:`write`); front, export, the runner, the CLI and the benchmarks read them
(:meth:`TrialRecord.of`). A field's name is its user-attribute key, so studies stored before this module read the
same; a misspelt key is an error at the writer instead of a silent ``None`` at a reader.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TrialRecord:
    # the candidate (Candidate.to_dict) and who trained it
    candidate: dict | None = None
    worker: str | None = None
    device: str | None = None
    threads: int | None = None
    # counts and scores, known before training
    dense_params: int | None = None
    dense_macs: int | None = None
    compressed_params: int | None = None
    compressed_macs: int | None = None
    nonzero_params: int | None = None      # measured again after training
    score: float | None = None             # the seeds' score, known before training (also on stopped trials)
    measured_score: float | None = None
    dense_epochs: int | None = None        # the epoch it was compressed after (stoppers compare like with like)
    before_values: dict | None = None      # the objectives known before training, by name (search.trial.objectives)
    latency_target: str | None = None      # a measured latency: what was timed, how
    latency_hardware: str | None = None    # ... and on which hardware
    # training
    epochs_run: int | None = None
    wall_s: float | None = None
    train_s: float | None = None
    bookkeeping_s: float | None = None
    sample_s: float | None = None
    images_per_s: float | None = None
    sparsity: float | None = None
    # the base it started from (search.training.bases): a converged base (base:) or a shared dense phase
    base_key: str | None = None
    base_reused: bool | None = None        # loaded, not trained by this trial
    epochs_saved: int | None = None        # reuse_bases: dense epochs not trained here
    base_train_s: float | None = None      # base: the base's training seconds, wherever it was trained
    base_epochs: int | None = None         # ... its epochs
    base_val_accuracy: float | None = None  # ... and its validation accuracy, before compression
    base_wait_s: float | None = None       # ... the seconds it waited for another worker training that base
    predicted_base_s: float | None = None  # a new base refused for the budget: its predicted seconds
    # why it ended early, and cost bounds
    pruned_reason: str | None = None
    predicted_train_s: float | None = None
    # artifacts: the final checkpoint, the resume checkpoint of a running trial
    checkpoint_artifact_id: str | None = None
    resume: dict | None = None             # {"artifact_id", "epoch"}
    resume_error: str | None = None
    resumed_from_epoch: int | None = None
    store_error: str | None = None         # the artifact store refused its checkpoint: failed, queued again

    @classmethod
    def of(cls, trial) -> TrialRecord:
        """The record of a trial (``FrozenTrial`` or a live ``Trial``); keys it does not know are ignored."""
        attrs = trial.user_attrs
        values = {k: attrs[k] for k in _KEYS if k in attrs}
        for new, old in RENAMED.items():  # a study stored before the rename reads the same
            if new not in values and old in attrs:
                values[new] = attrs[old]
        return cls(**values)


_KEYS = frozenset(f.name for f in fields(TrialRecord))
RENAMED = {"score": "course_score"}  # field: the key it was stored under before


def write(trial, **values) -> None:
    """Set the given fields of ``trial``'s record (user attributes)."""
    unknown = sorted(set(values) - _KEYS)
    if unknown:
        raise KeyError(f"not a TrialRecord field: {', '.join(unknown)}")
    for key, value in values.items():
        trial.set_user_attr(key, value)


def has(trial, key: str) -> bool:
    """Whether ``trial`` recorded ``key`` (a field of TrialRecord), as opposed to recording None."""
    if key not in _KEYS:
        raise KeyError(f"not a TrialRecord field: {key}")
    return key in trial.user_attrs
