import pytest

from search.errors import ConfigError
from search.pruner import Finished, NoStopper, ParetoStopper, make_stopper


def curve(*accs):
    return {i + 1: a for i, a in enumerate(accs)}


FINISHED = [
    Finished(0.10, curve(0.50, 0.70, 0.80, 0.90)),
    Finished(0.20, curve(0.55, 0.75, 0.85, 0.92)),
    Finished(0.30, curve(0.60, 0.80, 0.88, 0.95)),
    Finished(0.40, curve(0.40, 0.60, 0.70, 0.80)),
    Finished(0.05, curve(0.20, 0.30, 0.40, 0.50)),
]


def test_stops_a_trial_its_dominators_beat():
    stopper = ParetoStopper(warmup_epochs=2, min_trials=3, percentile=50)
    # score 0.35: trials with score <= 0.35 are 0.10, 0.20, 0.30, 0.05 → at epoch 2: 0.70, 0.75, 0.80, 0.30
    reason = stopper.should_stop(2, 0.60, 0.35, FINISHED)
    assert reason and "below the 50th percentile 0.7250 of 4 finished trials" in reason
    assert stopper.should_stop(2, 0.73, 0.35, FINISHED) is None


def test_only_trials_with_a_score_no_worse_count():
    stopper = ParetoStopper(warmup_epochs=1, min_trials=2, percentile=50)
    # score 0.06: only the 0.05 trial could dominate it → fewer than min_trials: keep going
    assert stopper.should_stop(2, 0.01, 0.06, FINISHED) is None
    # the cheapest trial so far has no rival at all
    assert stopper.should_stop(3, 0.01, 0.01, FINISHED) is None


def test_warmup_and_minimum_trials():
    assert ParetoStopper(warmup_epochs=3, min_trials=1).should_stop(2, 0.0, 1.0, FINISHED) is None
    assert ParetoStopper(warmup_epochs=1, min_trials=6).should_stop(2, 0.0, 1.0, FINISHED) is None
    assert ParetoStopper(warmup_epochs=1, min_trials=5).should_stop(2, 0.0, 1.0, FINISHED) is not None


def test_percentile_is_the_bar():
    low = ParetoStopper(warmup_epochs=1, min_trials=1, percentile=0)
    high = ParetoStopper(warmup_epochs=1, min_trials=1, percentile=100)
    # rivals at epoch 3 for score 1.0: 0.80, 0.85, 0.88, 0.70, 0.40
    assert low.should_stop(3, 0.45, 1.0, FINISHED) is None
    assert low.should_stop(3, 0.39, 1.0, FINISHED) is not None
    assert high.should_stop(3, 0.87, 1.0, FINISHED) is not None
    assert high.should_stop(3, 0.88, 1.0, FINISHED) is None


def test_accuracy_floor():
    stopper = ParetoStopper(warmup_epochs=1, min_trials=3, percentile=0, accuracy_floor=0.9)
    # largest gain from epoch 2 to the end among finished trials: 0.95 - 0.80 = 0.15 (and 0.20 for the 0.05 trial)
    reason = stopper.should_stop(2, 0.65, 0.01, FINISHED)
    assert reason and "cannot reach the floor 0.9" in reason
    assert stopper.should_stop(2, 0.71, 0.01, FINISHED) is None


def test_trials_that_never_reached_the_epoch_do_not_count():
    short = [Finished(0.1, curve(0.9, 0.95))] * 5
    assert ParetoStopper(warmup_epochs=1, min_trials=1).should_stop(3, 0.0, 1.0, short) is None


def test_no_stopper_and_factory():
    assert NoStopper().should_stop(10, 0.0, 9.0, FINISHED) is None
    assert isinstance(make_stopper("none"), NoStopper)
    assert make_stopper("pareto", percentile=25).percentile == 25
    with pytest.raises(ConfigError, match="unknown pruner 'median'"):
        make_stopper("median")
    with pytest.raises(ConfigError, match="percentile"):
        ParetoStopper(percentile=120)
