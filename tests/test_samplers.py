"""Workers that share a study draw different candidates, and a study stays reproducible.

Each worker builds the study file's sampler with the same seed. The samplers are re-seeded per trial number
(``TrialSeededSampler``), so two workers asking for trials in turn never replay each other's draws.
"""

import optuna
import pytest

from search.space.space import parse_space
from search.study.samplers import TrialSeededSampler
from search.study.study_file import SamplerConfig

SPACE = parse_space({"params": {
    "arch": {"choices": ["resnet20", "resnet18", "densenet"]},
    "width": {"low": 0.25, "high": 1.0},
    "qw": {"choices": [2, 4, 8, 16, 32]},
    "ps": {"low": 0.0, "high": 0.6},
    "lr": {"low": 0.01, "high": 0.2, "log": True},
}})


def fake_values(params: dict) -> tuple[float, float]:
    return params["width"] - params["ps"] / 2, params["width"] * params["qw"] / 32


def draw(samplers: list, n: int) -> list[dict]:
    """``n`` trials of one study, asked by the workers (one sampler each) in turn, as parallel workers do."""
    storage = optuna.storages.InMemoryStorage()
    studies = [optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"],
                                   sampler=samplers[0], load_if_exists=True)]
    studies += [optuna.load_study(study_name="s", storage=storage, sampler=s) for s in samplers[1:]]
    drawn = []
    for i in range(n):
        study = studies[i % len(studies)]
        trial = study.ask()
        params = SPACE.sample(trial)
        study.tell(trial, fake_values(params))
        drawn.append(params)
    return drawn


def keys(drawn):
    return [tuple(sorted(p.items())) for p in drawn]


@pytest.mark.parametrize("name, distinct", [("random", 16), ("tpe", 16), ("nsga2", 8), ("gp", 16)])
def test_workers_with_one_seed_draw_different_candidates(name, distinct):
    config = SamplerConfig(name=name, seed=7, n_startup_trials=4, population_size=8)
    drawn = draw([config.build() for _ in range(4)], 16)  # past TPE's start-up and NSGA-II's first generation
    # NSGA-II's children may copy a parent whole (one worker or many): only its random first generation must differ
    assert len(set(keys(drawn[:distinct]))) == distinct, keys(drawn)


@pytest.mark.parametrize("name", ["random", "tpe", "nsga2", "gp"])
def test_the_same_seed_and_history_draw_the_same_candidates(name):
    config = SamplerConfig(name=name, seed=7, n_startup_trials=4, population_size=4)
    one = draw([config.build()], 12)
    assert draw([config.build()], 12) == one
    other = draw([SamplerConfig(name=name, seed=8, n_startup_trials=4, population_size=4).build()], 12)
    assert keys(other) != keys(one)
    # the draws of a study do not depend on how many workers asked for them
    assert draw([config.build(), config.build()], 12)[:4] == one[:4]


def test_every_random_state_of_a_sampler_is_found():
    sampler = SamplerConfig(name="nsga2", seed=1).build()
    inner = sampler.sampler
    states = sampler._random_states()
    assert inner._rng in states and inner._random_sampler._rng in states
    assert isinstance(SamplerConfig(name="tpe").build(), TrialSeededSampler)
    gp = SamplerConfig(name="gp", seed=1).build()
    assert gp.sampler._rng in gp._random_states()
