"""Cost bounds: ``max_trial_seconds`` stops a candidate predicted (from MACs and the throughput so far) or projected
(from its own first epochs) to train longer than the cap."""

import optuna
from optuna.trial import TrialState
from tiny import write_tiny_study

from search.study.runner import run_study
from search.study.study_file import load_study_file

SPACE = """\
params:
  arch: {value: resnet20}
  width: {choices: [0.25, 2.0]}
  ps: {low: 0.0, high: 0.5}
"""


def write_study(tmp_path, extra="", n_trials=3, enqueue=""):
    return write_tiny_study(tmp_path, name="cost", db="cost", space=SPACE, n_trials=n_trials, subset=300, epochs=3,
                            seed=0, extra=f"{extra}\nenqueue:\n{enqueue}")


def test_a_candidate_projected_over_the_cap_stops_after_its_first_epoch(tmp_path):
    path = write_study(tmp_path, "max_trial_seconds: 0.001", n_trials=1,
                       enqueue="  - {width: 0.25, ps: 0.2}")
    study = run_study(load_study_file(path))
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["pruned_reason"].startswith("projected to train for ")
    assert "over max_trial_seconds 0.001" in trial.user_attrs["pruned_reason"]
    assert list(trial.intermediate_values) == [1]


def test_a_candidate_predicted_over_the_cap_is_not_trained(tmp_path):
    cheap = "\n".join(f"  - {{width: 0.25, ps: {ps}}}" for ps in (0.1, 0.2, 0.3))
    path = write_study(tmp_path, n_trials=3, enqueue=cheap)
    study = run_study(load_study_file(path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    slowest = max(t.user_attrs["train_s"] for t in study.trials)
    # width 2.0 has ~60x the MACs of width 0.25: predicted far over a cap of 10x the slowest cheap trial;
    # another cheap one is predicted under it and trains
    path = write_study(tmp_path, f"max_trial_seconds: {10 * slowest:.3f}", n_trials=5, enqueue=cheap)
    study = optuna.load_study(study_name="cost", storage=f"sqlite:///{tmp_path / 'cost.db'}")
    for params in ({"width": 2.0, "ps": 0.1}, {"width": 0.25, "ps": 0.4}):
        study.enqueue_trial(params)
    study = run_study(load_study_file(path))
    wide, cheap4 = study.trials[3], study.trials[4]
    assert wide.params["width"] == 2.0 and wide.state == TrialState.PRUNED
    assert wide.user_attrs["pruned_reason"].startswith("predicted to train for ")
    assert not wide.intermediate_values  # not a single epoch spent
    assert wide.user_attrs["predicted_train_s"] > 10 * slowest
    assert cheap4.state == TrialState.COMPLETE


def test_the_cap_is_checked(tmp_path):
    import pytest

    from search.errors import ConfigError

    with pytest.raises(ConfigError, match="max_trial_seconds must be a number of seconds > 0"):
        load_study_file(write_study(tmp_path, "max_trial_seconds: -5"))


class StopAt:
    """A stopper that stops every trial at one epoch."""

    sees = "complete"

    def __init__(self, epoch):
        self.epoch = epoch

    def should_stop(self, epoch, accuracy, costs, finished, dense_epochs=None):
        return f"told to stop at epoch {epoch}" if epoch == self.epoch else None


def test_no_stopper_throws_away_a_trial_that_trained_to_its_last_epoch(tmp_path, monkeypatch):
    from search.study.study_file import StopperConfig

    # MO-ASHA may put a rung on the last epoch (min_epochs 2, reduction_factor 2, 4 epochs): stopping there saves
    # nothing and would lose a finished candidate that is not dominated
    monkeypatch.setattr(StopperConfig, "build", lambda self, floor: StopAt(3))
    study = run_study(load_study_file(write_study(tmp_path, n_trials=1, enqueue="  - {width: 0.25, ps: 0.2}")))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    monkeypatch.setattr(StopperConfig, "build", lambda self, floor: StopAt(2))
    study = run_study(load_study_file(write_study(tmp_path, n_trials=2, enqueue="  - {width: 0.25, ps: 0.3}")))
    assert study.trials[1].state == TrialState.PRUNED and list(study.trials[1].intermediate_values) == [1, 2]
