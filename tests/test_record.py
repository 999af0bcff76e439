"""The trial record: one dataclass writes and reads a trial's user attributes."""

import dataclasses

import optuna
import pytest

from search.trial import record
from search.trial.record import TrialRecord


def test_written_fields_read_back_and_other_keys_are_ignored():
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    record.write(trial, score=0.05, dense_epochs=3, base_reused=True, resume={"artifact_id": "x", "epoch": 2})
    trial.set_user_attr("something_else", 1)  # a key another tool wrote
    assert record.has(trial, "score") and not record.has(trial, "measured_score")
    study.tell(trial, [0.5, 0.05])
    r = TrialRecord.of(study.trials[0])
    assert (r.score, r.dense_epochs, r.base_reused) == (0.05, 3, True)
    assert r.resume == {"artifact_id": "x", "epoch": 2}
    assert r.measured_score is None and r.pruned_reason is None


def test_a_misspelt_key_is_refused_at_the_writer():
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    with pytest.raises(KeyError, match="not a TrialRecord field: course_scor"):
        record.write(trial, course_scor=0.1)
    assert trial.user_attrs == {}  # nothing half-written
    with pytest.raises(KeyError):
        record.has(trial, "course_scor")


def test_the_keys_are_those_of_studies_stored_before_the_record_existed():
    # user attributes of a trial written by the objective before this module: they read unchanged
    old = {"candidate": {"arch": "resnet20"}, "dense_params": 270000, "course_score": 0.02, "epochs_run": 8,
           "pruned_reason": "epoch 3: ...", "checkpoint_artifact_id": "abc", "wall_s": 12.5, "threads": 1}
    trial = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={}, distributions={},
                                      user_attrs=old)
    r = TrialRecord.of(trial)
    renamed = {"course_score": "score"}  # stored under its old name, read under its new one
    assert {k: getattr(r, renamed.get(k, k)) for k in old} == old
    assert {f.name for f in dataclasses.fields(TrialRecord)} >= {renamed.get(k, k) for k in old}
