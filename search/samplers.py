"""Samplers for the two-objective study (accuracy, score)."""

from __future__ import annotations

import optuna


class _FirstDirection:
    """A study seen with ``direction`` = its first objective's direction (accuracy, maximize).

    TPESampler ranks pruned trials by their last intermediate value using ``study.direction``, which raises for a
    multi-objective study (Optuna assumes such studies have no intermediate values, since ``Trial.report`` refuses
    them). Ours store validation accuracy per epoch, so the accuracy direction is the right one to rank them by.
    """

    def __init__(self, study):
        self._study = study

    def __getattr__(self, name):
        return getattr(self._study, name)

    @property
    def direction(self):
        return self._study.directions[0]


class ParetoTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE (multi-objective), able to learn from trials our early stopping pruned."""

    def infer_relative_search_space(self, study, trial):
        return super().infer_relative_search_space(_FirstDirection(study), trial)

    def sample_relative(self, study, trial, search_space):
        return super().sample_relative(_FirstDirection(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return super().sample_independent(_FirstDirection(study), trial, param_name, param_distribution)
