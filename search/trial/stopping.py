"""Early stopping for a multi-objective study (Optuna's ``Trial.report`` / ``should_prune`` refuse several objectives).

A stopper looks at the trial's validation accuracy at epoch k, its costs (the objectives known before training, each
to minimize: the score by default, :mod:`search.trial.objectives`), and the learning curves of the finished trials, and
returns the reason to stop it, or None to go on. A single cost may be given as a number.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from search.errors import ConfigError


def as_costs(costs) -> tuple[float, ...]:
    """One cost (a number) or several (a sequence), as a tuple."""
    return (float(costs),) if isinstance(costs, (int, float)) else tuple(costs)


def dominates(a, b) -> bool:
    """(accuracy, cost, ...) a dominates b: accuracy no lower, every cost no higher, and better in one."""
    return a[0] >= b[0] and all(x <= y for x, y in zip(a[1:], b[1:], strict=True)) and tuple(a) != tuple(b)


def _show(costs: tuple[float, ...]) -> str:
    return ", ".join(f"{c:.4g}" for c in costs)


@dataclass(frozen=True)
class Finished:
    """A completed trial as the stopper sees it: its costs (a number or a tuple, see the module), validation
    accuracy per epoch (1-based) and the epoch it was compressed after (``dense_epochs``; None when unknown)."""

    costs: float | tuple[float, ...]
    curve: dict[int, float]
    dense_epochs: int | None = None

    @property
    def cost(self) -> tuple[float, ...]:
        return as_costs(self.costs)

    @property
    def final(self) -> float:
        return self.curve[max(self.curve)] if self.curve else math.nan

    def like(self, epoch: int, dense_epochs: int | None) -> float | None:
        """Its accuracy at the point of its run that matches ``epoch`` of a trial compressed after
        ``dense_epochs``: the same epoch in the dense phase, the same number of epochs after compression in the
        compressed phase (compression costs accuracy for an epoch or two, at a point ``compress_at`` moves).
        None when it has no such point (it never got there, or one of the two is compressed and the other not yet)."""
        if dense_epochs is None or self.dense_epochs is None or dense_epochs == self.dense_epochs:
            return self.curve.get(epoch)
        if epoch <= dense_epochs:
            return self.curve.get(epoch) if epoch <= self.dense_epochs else None
        return self.curve.get(self.dense_epochs + epoch - dense_epochs)


class EarlyStopper(ABC):
    # Which trials ``finished`` holds: "complete" (the finished trials), or "all" (every other trial with a learning
    # curve: complete, stopped early and still running; successive halving compares a trial with all of them).
    sees = "complete"

    @abstractmethod
    def should_stop(self, epoch: int, accuracy: float, costs, finished: list[Finished],
                    dense_epochs: int | None = None) -> str | None:
        """The reason to stop a trial of ``costs`` at ``epoch`` with ``accuracy``, or None to let it run.
        ``dense_epochs``: the epoch the trial is compressed after, so that rivals are compared like with like
        (:meth:`Finished.like`)."""


class NoStopper(EarlyStopper):
    def should_stop(self, epoch, accuracy, costs, finished, dense_epochs=None):
        return None


@dataclass(frozen=True)
class ParetoStopper(EarlyStopper):
    """Stop a trial that the finished trials which would dominate it are clearly beating.

    At epoch k (from ``warmup_epochs`` on), the trials that could dominate this one are the finished ones with
    every cost no worse (≤). If at least ``min_trials`` of them reached epoch k and this trial's accuracy is below the
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
            raise ConfigError(f"stopper warmup_epochs must be an integer >= 1, got {self.warmup_epochs!r}")
        if not isinstance(self.min_trials, int) or self.min_trials < 1:
            raise ConfigError(f"stopper min_trials must be an integer >= 1, got {self.min_trials!r}")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not 0 <= self.percentile <= 100:
            raise ConfigError(f"stopper percentile must be in [0, 100], got {self.percentile!r}")

    def should_stop(self, epoch, accuracy, costs, finished, dense_epochs=None):
        if epoch < self.warmup_epochs:
            return None
        costs = as_costs(costs)
        rivals = [a for f in finished if all(x <= y for x, y in zip(f.cost, costs, strict=True))
                  and (a := f.like(epoch, dense_epochs)) is not None]
        if len(rivals) >= self.min_trials:
            bar = float(np.percentile(rivals, self.percentile))
            if accuracy < bar:
                return (f"epoch {epoch}: validation accuracy {accuracy:.4f} is below the {self.percentile:g}th "
                        f"percentile {bar:.4f} of {len(rivals)} finished trials with costs <= {_show(costs)}")
        if self.accuracy_floor is not None:
            gains = [f.final - f.curve[epoch] for f in finished if epoch in f.curve]
            if len(gains) >= self.min_trials and accuracy + max(gains) < self.accuracy_floor:
                return (f"epoch {epoch}: validation accuracy {accuracy:.4f} cannot reach the floor "
                        f"{self.accuracy_floor:g} (the largest gain after epoch {epoch} was {max(gains):.4f})")
        return None


@dataclass(frozen=True)
class MOASHAStopper(EarlyStopper):
    """Asynchronous successive halving for several objectives (MO-ASHA, Schmucker et al. 2021), stopping variant.

    Rungs lie at epochs ``min_epochs · reduction_factor^k``. A trial that reaches a rung is ranked with every other
    trial that reached it (complete, stopped or running) on the objectives at that rung: validation accuracy
    there (higher is better) and the costs known before training (lower is better). Ranks come from non-dominated
    sorting, ties within a front from the crowding distance (NSGA-II): the extremes of each front first, so the ends
    of the front are kept. The trial goes on if it is among the best ``ceil(n / reduction_factor)`` of the ``n``;
    with fewer than ``min_trials`` at the rung it goes on in any case. Unlike the Pareto stopper it needs no finished
    rival, so it bounds what one candidate may spend before there is evidence for it.

    Syne Tune's ``MOASHA`` was the reference read; the sorting below is written here because Optuna's
    non-dominated sort is private API and the sets are small (the trials of one study at one rung).
    """

    sees = "all"
    min_epochs: int = 1
    reduction_factor: float = 3.0
    min_trials: int = 3

    def __post_init__(self):
        if isinstance(self.min_epochs, bool) or not isinstance(self.min_epochs, int) or self.min_epochs < 1:
            raise ConfigError(f"moasha min_epochs must be an integer >= 1, got {self.min_epochs!r}")
        if isinstance(self.reduction_factor, bool) or not isinstance(self.reduction_factor, (int, float)) \
                or not self.reduction_factor > 1:
            raise ConfigError(f"moasha reduction_factor must be a number > 1, got {self.reduction_factor!r}")
        if isinstance(self.min_trials, bool) or not isinstance(self.min_trials, int) or self.min_trials < 1:
            raise ConfigError(f"moasha min_trials must be an integer >= 1, got {self.min_trials!r}")

    def rungs(self, max_epoch: int) -> list[int]:
        """The rung epochs up to ``max_epoch`` (rounded down, without repeats)."""
        out, r = [], float(self.min_epochs)
        while int(r) <= max_epoch:
            if not out or int(r) != out[-1]:
                out.append(int(r))
            r *= self.reduction_factor
        return out

    def should_stop(self, epoch, accuracy, costs, finished, dense_epochs=None):
        if epoch not in self.rungs(epoch):
            return None
        costs = as_costs(costs)
        points = [(accuracy, *costs)] + [(a, *f.cost) for f in finished
                                         if (a := f.like(epoch, dense_epochs)) is not None]
        n = len(points)
        if n < self.min_trials:
            return None
        keep = math.ceil(n / self.reduction_factor)
        position = rank_order(points).index(0)
        if position < keep:
            return None
        return (f"rung at epoch {epoch}: rank {position + 1} of {n} trials there by non-dominated sorting of "
                f"(accuracy {accuracy:.4f}, costs {_show(costs)}); only the best {keep} go on")


def rank_order(points: list[tuple[float, ...]]) -> list[int]:
    """Indices of ``points`` (accuracy to maximize, then costs to minimize), best first: by non-dominated front, then
    by crowding distance within the front (largest first), then by index."""
    remaining = list(range(len(points)))
    order: list[int] = []
    while remaining:
        front = [i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining if j != i)]
        crowding = _crowding(front, points)
        order += sorted(front, key=lambda i: (-crowding[i], i))
        remaining = [i for i in remaining if i not in front]
    return order


def _crowding(front: list[int], points) -> dict[int, float]:
    distance = dict.fromkeys(front, 0.0)
    for k in range(len(points[front[0]])):
        ordered = sorted(front, key=lambda i: points[i][k])
        span = points[ordered[-1]][k] - points[ordered[0]][k]
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        if span > 0:
            for j in range(1, len(ordered) - 1):
                distance[ordered[j]] += (points[ordered[j + 1]][k] - points[ordered[j - 1]][k]) / span
    return distance


def make_stopper(name: str, **options) -> EarlyStopper:
    if name in ("none", "off"):
        if options:
            raise ConfigError(f"stopper 'none' takes no options, got {', '.join(options)}")
        return NoStopper()
    if name == "pareto":
        try:
            return ParetoStopper(**options)
        except TypeError:
            known = "warmup_epochs, min_trials, percentile"
            bad = sorted(set(options) - set(known.split(", ")))
            raise ConfigError(f"unknown stopper option {bad[0]!r}; the pareto stopper takes {known}") from None
    if name == "moasha":
        options.pop("accuracy_floor", None)  # rungs rank by both objectives; the floor stays a constraint
        known = "min_epochs, reduction_factor, min_trials"
        bad = sorted(set(options) - set(known.split(", ")))
        if bad:
            raise ConfigError(f"unknown stopper option {bad[0]!r}; the moasha stopper takes {known}")
        return MOASHAStopper(**options)
    raise ConfigError(f"unknown stopper {name!r}; use pareto, moasha or none")
