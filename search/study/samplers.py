"""Samplers for the two-objective study (accuracy, score)."""

from __future__ import annotations

import numpy as np
import optuna

from search.optuna_compat import FirstDirection, random_states


class ParetoTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE (multi-objective), able to learn from trials our early stopping pruned."""

    def infer_relative_search_space(self, study, trial):
        return super().infer_relative_search_space(FirstDirection(study), trial)

    def sample_relative(self, study, trial, search_space):
        return super().sample_relative(FirstDirection(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return super().sample_independent(FirstDirection(study), trial, param_name, param_distribution)


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Any Optuna sampler, its random state re-seeded before each trial from (study seed, trial number).

    Workers of one study each build the sampler from the study file's seed. Seeded once, N workers draw the same
    start-up candidates, and given the same history the same later ones too: up to (N-1)/N of the budget trained
    twice. Trial numbers are unique in a study, so seeding per trial makes every worker's draws differ, while a
    study run again with the same history (one worker, or the same interleaving) draws the same candidates.
    Optuna's own ``reseed_rng`` draws a fresh random seed (for ``n_jobs``), which gives up reproducibility.
    """

    def __init__(self, sampler: optuna.samplers.BaseSampler, seed: int):
        self.sampler, self.seed = sampler, seed
        self._states: list | None = None

    def __str__(self) -> str:
        return f"{type(self.sampler).__name__}(per-trial seeds from {self.seed})"

    def _random_states(self) -> list:
        return random_states(self.sampler)

    def before_trial(self, study, trial) -> None:
        if self._states is None:
            self._states = self._random_states()
        seeds = np.random.SeedSequence([self.seed, trial.number]).generate_state(len(self._states))
        for state, seed in zip(self._states, seeds, strict=True):
            state.rng.seed(int(seed))
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()
