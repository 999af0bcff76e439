"""Early stopping for a multi-objective study (Optuna's ``Trial.report`` / ``should_prune`` refuse several objectives).

A stopper looks at the trial's validation accuracy at epoch k, its score (known before training), and the learning
curves of the finished trials, and returns the reason to stop it, or None to go on.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from search.errors import ConfigError


@dataclass(frozen=True)
class Finished:
    """A completed trial as the stopper sees it: its score and validation accuracy per epoch (1-based)."""

    score: float
    curve: dict[int, float]

    @property
    def final(self) -> float:
        return self.curve[max(self.curve)] if self.curve else math.nan


class EarlyStopper(ABC):
    @abstractmethod
    def should_stop(self, epoch: int, accuracy: float, score: float, finished: list[Finished]) -> str | None:
        """The reason to stop a trial of ``score`` at ``epoch`` with ``accuracy``, or None to let it run."""


class NoStopper(EarlyStopper):
    def should_stop(self, epoch, accuracy, score, finished):
        return None


@dataclass(frozen=True)
class ParetoStopper(EarlyStopper):
    """Stop a trial that the finished trials which would dominate it are clearly beating.

    At epoch k (from ``warmup_epochs`` on), the trials that could dominate this one are the finished ones with a
    score no worse (≤). If at least ``min_trials`` of them reached epoch k and this trial's accuracy is below the
    ``percentile`` of theirs at k, it is unlikely to end up non-dominated: stop it. With an ``accuracy_floor``, a
    trial is also stopped when even the largest gain any finished trial made from epoch k to its end would leave it
    below the floor.
    """

    warmup_epochs: int = 2
    min_trials: int = 4
    percentile: float = 50.0
    accuracy_floor: float | None = None

    def __post_init__(self):
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 1:
            raise ConfigError(f"pruner warmup_epochs must be an integer >= 1, got {self.warmup_epochs!r}")
        if not isinstance(self.min_trials, int) or self.min_trials < 1:
            raise ConfigError(f"pruner min_trials must be an integer >= 1, got {self.min_trials!r}")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not 0 <= self.percentile <= 100:
            raise ConfigError(f"pruner percentile must be in [0, 100], got {self.percentile!r}")

    def should_stop(self, epoch, accuracy, score, finished):
        if epoch < self.warmup_epochs:
            return None
        rivals = [f.curve[epoch] for f in finished if f.score <= score and epoch in f.curve]
        if len(rivals) >= self.min_trials:
            bar = float(np.percentile(rivals, self.percentile))
            if accuracy < bar:
                return (f"epoch {epoch}: validation accuracy {accuracy:.4f} is below the {self.percentile:g}th "
                        f"percentile {bar:.4f} of {len(rivals)} finished trials with score <= {score:.4g}")
        if self.accuracy_floor is not None:
            gains = [f.final - f.curve[epoch] for f in finished if epoch in f.curve]
            if len(gains) >= self.min_trials and accuracy + max(gains) < self.accuracy_floor:
                return (f"epoch {epoch}: validation accuracy {accuracy:.4f} cannot reach the floor "
                        f"{self.accuracy_floor:g} (the largest gain after epoch {epoch} was {max(gains):.4f})")
        return None


def make_stopper(name: str, **options) -> EarlyStopper:
    if name in ("none", "off"):
        if options:
            raise ConfigError(f"pruner 'none' takes no options, got {', '.join(options)}")
        return NoStopper()
    if name == "pareto":
        try:
            return ParetoStopper(**options)
        except TypeError:
            known = "warmup_epochs, min_trials, percentile"
            bad = sorted(set(options) - set(known.split(", ")))
            raise ConfigError(f"unknown pruner option {bad[0]!r}; the pareto pruner takes {known}") from None
    raise ConfigError(f"unknown pruner {name!r}; use pareto or none")
