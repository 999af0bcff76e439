import pytest

from search.errors import ConfigError
from search.trial.stopping import Finished, NoStopper, ParetoStopper, make_stopper


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
    with pytest.raises(ConfigError, match="unknown stopper 'median'"):
        make_stopper("median")
    with pytest.raises(ConfigError, match="percentile"):
        ParetoStopper(percentile=120)


# --- MO-ASHA: successive halving ranked by non-dominated sorting ---

from search.pareto import rank_order  # noqa: E402
from search.trial.stopping import MOASHAStopper  # noqa: E402


def test_moasha_rungs():
    assert MOASHAStopper(min_epochs=1, reduction_factor=3).rungs(30) == [1, 3, 9, 27]
    assert MOASHAStopper(min_epochs=2, reduction_factor=2.5).rungs(40) == [2, 5, 12, 31]


def test_rank_order_sorts_fronts_then_keeps_a_front_s_ends_first():
    points = [(0.90, 1.0), (0.80, 0.5), (0.70, 0.2), (0.60, 0.6), (0.85, 0.9), (0.50, 0.7)]
    order = rank_order([(-a, c) for a, c in points])  # losses: accuracy negated
    assert set(order[:4]) == {0, 1, 2, 4}  # the first front: no point beats another on both objectives
    assert order[:2] == [0, 2]              # its ends (most accurate, cheapest) first
    assert order[4:] == [3, 5]              # 3 (dominated by 1 and 2) before 5 (dominated by 3 as well)


RUNG = [Finished(s, {1: a, 3: a + 0.1}) for s, a in
        [(1.0, 0.80), (0.8, 0.75), (0.6, 0.70), (0.5, 0.60), (0.9, 0.50), (0.7, 0.40), (0.95, 0.30), (0.85, 0.20)]]


def test_moasha_stops_a_dominated_trial_at_a_rung_and_keeps_a_cheap_one():
    stopper = MOASHAStopper(min_epochs=1, reduction_factor=3, min_trials=3)
    # 9 trials at epoch 3 with this one: the best ceil(9/3) = 3 go on
    reason = stopper.should_stop(3, 0.45, 0.9, RUNG)  # beaten on both objectives by several
    assert reason and reason.startswith("rung at epoch 3: rank ") and "only the best 3 go on" in reason
    # the least accurate trial goes on when it is the cheapest: it is an end of the first front
    assert stopper.should_stop(3, 0.10, 0.05, RUNG) is None
    # and so does the most accurate one
    assert stopper.should_stop(3, 0.95, 2.0, RUNG) is None


def test_moasha_decides_only_at_rungs_and_with_enough_trials():
    stopper = MOASHAStopper(min_epochs=1, reduction_factor=3, min_trials=3)
    assert stopper.should_stop(2, 0.0, 10.0, RUNG) is None  # epoch 2 is no rung
    assert stopper.should_stop(3, 0.0, 10.0, RUNG[:1]) is None  # 2 trials at the rung, 3 needed
    assert stopper.should_stop(3, 0.0, 10.0, RUNG[:2]) is not None  # 3 there: only the best 1 goes on


@pytest.mark.parametrize("options, fragment", [
    ({"reduction_factor": 1}, "reduction_factor must be a number > 1"),
    ({"min_epochs": 0}, "min_epochs must be an integer >= 1"),
    ({"percentile": 50}, "unknown stopper option 'percentile'; the moasha stopper takes"),
])
def test_moasha_options_are_checked(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_stopper("moasha", **options)


def test_moasha_sees_stopped_and_running_trials_too():
    """The objective hands a stopper that sees "all" every other trial with a curve, not only complete ones."""
    import optuna

    from search.trial.decisions import rivals
    from search.trial.objectives import Objectives

    study = optuna.create_study(directions=["maximize", "minimize"])
    made = []
    for state in ("complete", "pruned", "running", "running-no-curve", "me"):
        t = study.ask()
        t.set_user_attr("score", 0.5)
        if state != "running-no-curve":
            study._storage.set_trial_intermediate_value(t._trial_id, 1, 0.3)
        if state == "complete":
            study.tell(t, (0.3, 0.5))
        elif state == "pruned":
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        made.append(t)
    me = made[-1]
    objectives = Objectives.parse(None)  # accuracy, score
    seen = rivals(MOASHAStopper(), objectives, me)
    assert len(seen) == 3  # complete, pruned, running with a curve; not itself, not a trial without a curve
    assert all(f.cost == (0.5,) for f in seen)  # the score: from the values, or the record before training
    assert len(rivals(NoStopper(), objectives, me)) == 1


def test_moasha_is_chosen_in_the_study_file(tmp_path):
    from search.study.study_file import load_study_file

    (tmp_path / "space.yaml").write_text("params:\n  qw: {choices: [8, 32]}\n")
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\nspace: {tmp_path / 'space.yaml'}\n"
                     "stopper: {name: moasha, min_epochs: 2, reduction_factor: 2, min_trials: 5}\n")
    stopper = load_study_file(study).config.stopper.build(0.8)
    assert stopper == MOASHAStopper(min_epochs=2, reduction_factor=2, min_trials=5)
    study.write_text(study.read_text().replace("reduction_factor: 2", "reduction_factor: 0.5"))
    with pytest.raises(ConfigError, match="reduction_factor must be a number > 1, got 0.5"):
        load_study_file(study)


def test_rivals_compressed_at_another_epoch_are_compared_like_with_like():
    # compressed after epoch 4: accuracy dips at epoch 5, then recovers
    late = [Finished(0.1, curve(0.50, 0.60, 0.70, 0.80, 0.40, 0.75), dense_epochs=4) for _ in range(4)]
    stopper = ParetoStopper(warmup_epochs=1, min_trials=4, percentile=50)
    # a trial compressed after epoch 2 is in its own dip at epoch 3: its like is the rivals' epoch 5 (0.40), not
    # their dense epoch 3 (0.70), which a raw same-epoch comparison would stop it against
    assert stopper.should_stop(3, 0.45, 0.2, late, dense_epochs=2) is None
    assert stopper.should_stop(3, 0.45, 0.2, late) is not None  # without the phase: epoch against epoch
    assert stopper.should_stop(3, 0.35, 0.2, late, dense_epochs=2) is not None  # below the rivals' dip
    # in the dense phase epochs compare as they are; a rival still dense has no like for a compressed epoch
    assert late[0].like(2, 2) == 0.60 and late[0].like(4, 2) == 0.75 and late[0].like(3, 5) == 0.70
    assert Finished(0.1, curve(0.5, 0.6), dense_epochs=4).like(3, 2) is None
    moasha = MOASHAStopper(min_epochs=3, reduction_factor=2, min_trials=3)
    assert moasha.should_stop(3, 0.45, 0.2, late, dense_epochs=2) is None  # rank 1 of 5 against the dips
    assert moasha.should_stop(3, 0.45, 0.2, late) is not None             # last of 5 against dense epoch 3


def test_the_old_pruner_key_is_read_as_stopper_with_one_line(tmp_path, capsys):
    from search.study.study_file import load_study_file

    (tmp_path / "space.yaml").write_text("params:\n  qw: {choices: [8, 32]}\n")
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\nspace: {tmp_path / 'space.yaml'}\npruner: {{name: pareto, percentile: 75}}\n")
    assert load_study_file(study).config.stopper.percentile == 75
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "'pruner:' is now called 'stopper:'" in err
    study.write_text(study.read_text() + "stopper: {name: none}\n")
    with pytest.raises(ConfigError, match="both 'pruner' and 'stopper'"):
        load_study_file(study)


def test_moasha_ranks_a_tie_at_a_rung_as_it_always_did():
    # this trial (0.6, score 2.0) ties a rival; with (0.5, 1.0) there, all three are in the first front. The crowding
    # is measured on (accuracy, score) as before search.pareto: the rival copy is the end of the accuracy axis, this
    # trial is inside both axes, ranks 3 of 3, and only the best ceil(3 / 2) = 2 go on
    stopper = MOASHAStopper(min_epochs=1, reduction_factor=2, min_trials=3)
    rivals = [Finished(2.0, {1: 0.6}), Finished(1.0, {1: 0.5})]
    reason = stopper.should_stop(1, 0.6, 2.0, rivals)
    assert reason and "rank 3 of 3" in reason and "only the best 2 go on" in reason
    assert stopper.should_stop(1, 0.6, 2.0, rivals[::-1]) == reason  # the rivals' order does not matter here


def test_the_study_file_s_stopper_keys_are_the_stoppers_own_fields(tmp_path):
    from dataclasses import fields

    from search.study.study_file import StopperConfig, load_study_file

    assert [f.name for f in fields(StopperConfig)] == ["name", "warmup_epochs", "min_trials", "percentile",
                                                       "min_epochs", "reduction_factor", "skip_dominated",
                                                       "skip_accuracy"]
    assert StopperConfig().build(0.8) == ParetoStopper(accuracy_floor=0.8)  # the floor is the study's, not an option
    (tmp_path / "space.yaml").write_text("params:\n  qw: {choices: [8, 32]}\n")
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\nspace: {tmp_path / 'space.yaml'}\nstopper: {{name: moasha}}\n")
    stopper = load_study_file(study).config.stopper.build(0.8)
    assert stopper == MOASHAStopper() and stopper.min_trials == 4  # the study file's default, as before
    study.write_text(study.read_text().replace("{name: moasha}", "{name: moasha, accuracy_floor: 0.5}"))
    with pytest.raises(ConfigError, match="unknown key 'accuracy_floor'; known keys: name, warmup_epochs, "
                                          "min_trials, percentile, min_epochs, reduction_factor, skip_dominated, "
                                          "skip_accuracy$"):
        load_study_file(study)
    with pytest.raises(ConfigError, match="^unknown stopper option 'min_epochs'; the pareto stopper takes "
                                          "warmup_epochs, min_trials, percentile$"):
        make_stopper("pareto", min_epochs=2)
    with pytest.raises(ConfigError, match="^stopper 'none' takes no options, got percentile$"):
        make_stopper("off", percentile=50)


CHAIN = [Finished(c, {2: a}) for a, c in [(0.9, 0.1), (0.8, 0.2), (0.7, 0.3), (0.6, 0.4), (0.5, 0.5), (0.4, 0.6)]]


def test_moasha_keeps_exactly_the_best_ceil_n_over_eta_at_the_cut_off():
    """Seven trials at the rung in a chain (each dominates the next: its rank is its place), reduction factor 2:
    ceil(7/2) = 4 go on. A trial in 4th place goes on (floor would stop it), one in 5th stops (<= would keep it)."""
    stopper = MOASHAStopper(min_epochs=2, reduction_factor=2, min_trials=3)
    assert stopper.should_stop(2, 0.65, 0.35, CHAIN) is None  # 4th of 7
    reason = stopper.should_stop(2, 0.55, 0.45, CHAIN)  # 5th of 7
    assert reason == ("rung at epoch 2: rank 5 of 7 trials there by non-dominated sorting of (accuracy 0.5500, "
                      "costs 0.45); only the best 4 go on")


def test_within_a_front_the_ends_come_first_then_the_most_isolated():
    # one front of five (losses); crowding distances of the middle three: 0.7, 1.5, 1.3 (normalized per objective)
    points = [(0, 10), (1, 9), (2, 5), (8, 1), (10, 0)]
    assert rank_order(points) == [0, 4, 2, 3, 1]
