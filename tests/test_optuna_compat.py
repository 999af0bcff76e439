"""Each Optuna internal that search.optuna_compat reaches still does what the project relies on."""

import optuna
import pytest
from optuna.trial import TrialState

from search import optuna_compat as compat
from search.study.samplers import ParetoTPESampler
from search.study.study_file import SamplerConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)


def two_studies(url="sqlite:///:memory:"):
    storage = optuna.storages.RDBStorage(url)
    first = optuna.create_study(study_name="a", storage=storage, directions=["maximize", "minimize"])
    second = optuna.create_study(study_name="b", storage=storage, directions=["maximize", "minimize"])
    first.ask()
    return first, second


def test_trial_id_is_the_storage_id_not_the_number():
    _, study = two_studies()
    trial = study.ask()  # number 0 of study b, id 2 in the storage (study a's trial has id 1)
    assert trial.number == 0 and compat.trial_id(trial) != 0
    frozen = study.get_trials(deepcopy=False)[0]
    assert compat.trial_id(frozen) == compat.trial_id(trial)
    assert compat.storage_of(study).get_trial(compat.trial_id(trial)).number == 0


def test_storage_of_writes_trial_state():
    study, _ = two_studies()
    trial = study.get_trials(deepcopy=False)[0]
    compat.storage_of(study).set_trial_state_values(compat.trial_id(trial), TrialState.FAIL)
    assert study.get_trials(deepcopy=False)[0].state == TrialState.FAIL


def test_cached_storage_wraps_an_rdb_storage_and_keeps_its_heartbeat(tmp_path):
    rdb = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=60, grace_period=120)
    cached = compat.cached_storage(rdb)
    assert isinstance(cached, optuna.storages.BaseStorage) and isinstance(cached, compat.BaseHeartbeat)
    assert cached.get_heartbeat_interval() == 60
    study = optuna.create_study(study_name="c", storage=cached, directions=["maximize", "minimize"])
    study.tell(study.ask(), [0.5, 0.1])
    assert optuna.load_study(study_name="c", storage=rdb).trials[0].values == [0.5, 0.1]


def test_random_states_are_found_and_seed_the_draws():
    for name in ("random", "tpe", "nsga2", "gp"):
        sampler = SamplerConfig(name=name, seed=3).build().sampler
        states = compat.random_states(sampler)
        assert states, name
        draws = []
        for _ in range(2):
            for state in states:
                state.rng.seed(11)
            study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"])
            draws.append([study.ask().suggest_float("x", 0, 1) for _ in range(3)])
        assert draws[0] == draws[1], name


def test_first_direction_lets_tpe_learn_from_stopped_multi_objective_trials():
    study = optuna.create_study(directions=["maximize", "minimize"])
    assert compat.FirstDirection(study).direction == optuna.study.StudyDirection.MAXIMIZE
    assert compat.FirstDirection(study).directions == study.directions  # everything else passes through
    study.sampler = ParetoTPESampler(seed=0, n_startup_trials=2)
    for i in range(4):
        trial = study.ask()
        x = trial.suggest_float("x", 0, 1)
        compat.storage_of(study).set_trial_intermediate_value(compat.trial_id(trial), 1, x)
        if i % 2:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, [x, 1 - x])
    study.ask().suggest_float("x", 0, 1)  # TPE ranks the pruned trials by their last value: no error


@pytest.mark.parametrize("better", ["high", "low"])
def test_tpe_draws_where_the_stopped_trials_were_more_accurate(better):
    """Forty trials stopped after one epoch, accuracy there rising (or falling) with x: TPE, given only those, draws
    where they were more accurate. A sampler that ignored stopped trials would draw x uniformly (median 0.5)."""
    import numpy as np
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=ParetoTPESampler(seed=0, n_startup_trials=5))
    for x in np.random.default_rng(0).uniform(0, 1, 40):
        study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": float(x)},
                                     distributions={"x": FloatDistribution(0, 1)},
                                     intermediate_values={1: float(x if better == "high" else 1 - x)}))
    drawn = [study.ask({"x": FloatDistribution(0, 1)}).params["x"] for _ in range(30)]
    assert np.median(drawn) > 0.75 if better == "high" else np.median(drawn) < 0.25


def test_hypervolume_is_exact_in_two_and_three_dimensions():
    import numpy as np

    # two points, minimized, reference (1, 1): boxes 0.5 × 0.8 and 0.8 × 0.5 overlapping in 0.5 × 0.5
    assert compat.hypervolume(np.array([[0.5, 0.2], [0.2, 0.5]]), np.array([1.0, 1.0])) == pytest.approx(0.55)
    # three dimensions (WFG): a unit-cube corner and a point that adds a slab
    losses = np.array([[0.0, 0.0, 0.5], [0.5, 0.5, 0.0]])
    assert compat.hypervolume(losses, np.array([1.0, 1.0, 1.0])) == pytest.approx(0.5 + 0.25 * 0.5)
