"""Early stopping for a multi-objective study (Optuna's ``Trial.report`` / ``should_prune`` refuse several objectives).

A stopper looks at the trial's validation accuracy at epoch k, its costs (the objectives known before training, each
to minimize: the score by default, :mod:`search.trial.objectives`), and the learning curves of the finished trials, and
returns the reason to stop it, or None to go on. A single cost may be given as a number.

Each stopper is a frozen dataclass whose fields are its options, declared there once: :data:`STOPPERS` maps the study
file's ``stopper: {name: ...}`` to it, the study file's other ``stopper:`` keys are made from the fields
(:func:`study_options`), and :func:`make_stopper` names the options from them when one is unknown. Dominance and the
non-dominated sort are :mod:`search.pareto`'s.
"""

from __future__ import annotations

import math
import typing
from abc import ABC, abstractmethod
from dataclasses import MISSING, dataclass, field, fields

import numpy as np

from search.errors import ConfigError
from search.pareto import rank_order, weakly_dominates

# Marks a stopper field that the study's ``accuracy_floor`` sets (a constraint of the study, not an option of
# ``stopper:``).
FROM_STUDY = "from_study"


def as_costs(costs) -> tuple[float, ...]:
    """One cost (a number) or several (a sequence), as a tuple."""
    return (float(costs),) if isinstance(costs, (int, float)) else tuple(costs)


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


@dataclass(frozen=True)
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

    warmup_epochs: int = 2        # the first epoch it decides after
    min_trials: int = 4           # finished rivals needed at the epoch
    percentile: float = 50.0      # of the rivals' accuracies at the epoch: the bar
    accuracy_floor: float | None = field(default=None, metadata={FROM_STUDY: True})

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
        rivals = [a for f in finished if weakly_dominates(f.cost, costs)
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

    Syne Tune's ``MOASHA`` was the reference read; the sorting is :func:`search.pareto.rank_order` (Optuna's
    non-dominated sort is private API, and the sets are small: the trials of one study at one rung).
    """

    sees = "all"
    min_epochs: int = 1           # the first rung
    reduction_factor: float = 3.0  # rungs at min_epochs * reduction_factor^k; 1/reduction_factor go on
    min_trials: int = 4           # trials at a rung needed (the Pareto stopper's option of that name and default)

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
        # ranked on losses (accuracy negated); the crowding measured on the points as they are (rank_order's spread)
        position = rank_order([(-a, *c) for a, *c in points], spread=points).index(0)
        if position < keep:
            return None
        return (f"rung at epoch {epoch}: rank {position + 1} of {n} trials there by non-dominated sorting of "
                f"(accuracy {accuracy:.4f}, costs {_show(costs)}); only the best {keep} go on")


STOPPERS: dict[str, type[EarlyStopper]] = {"pareto": ParetoStopper, "moasha": MOASHAStopper, "none": NoStopper}
ALIASES = {"off": "none"}


def stopper_class(name: str) -> type[EarlyStopper]:
    """The stopper a study file's ``stopper: {name: ...}`` names."""
    cls = STOPPERS.get(ALIASES.get(name, name))
    if cls is None:
        *others, last = STOPPERS
        raise ConfigError(f"unknown stopper {name!r}; use {', '.join(others)} or {last}")
    return cls


def options(cls: type[EarlyStopper]) -> list[str]:
    """The options ``stopper:`` may set for the stopper ``cls``: its dataclass fields, less those the study sets."""
    return [f.name for f in fields(cls) if f.init and not f.metadata.get(FROM_STUDY)]


def study_options() -> list[tuple[str, object, object]]:
    """(name, type, default) of every stopper's options, each once, in the order the stoppers declare them: the keys
    a study file's ``stopper:`` takes beside ``name`` (:class:`search.study.study_file.StopperConfig`). An option two
    stoppers share (``min_trials``) has one type and one default."""
    out: dict[str, tuple[str, object, object]] = {}
    for cls in STOPPERS.values():
        hints = typing.get_type_hints(cls)
        declared = {f.name: f for f in fields(cls)}
        for name in options(cls):
            default = declared[name].default
            if default is MISSING:
                raise TypeError(f"{cls.__name__}.{name}: a stopper option needs a default")
            option = (name, hints[name], default)
            if out.setdefault(name, option) != option:
                raise TypeError(f"stopper option {name!r} is declared twice, as {out[name][1:]} and {option[1:]}")
    return list(out.values())


def make_stopper(name: str, accuracy_floor: float | None = None, **given) -> EarlyStopper:
    """The stopper ``name`` with the ``given`` options; ``accuracy_floor`` (the study's) goes to those that use it."""
    cls = stopper_class(name)
    name = next(n for n, c in STOPPERS.items() if c is cls)
    known = options(cls)
    bad = sorted(set(given) - set(known))
    if bad and not known:
        raise ConfigError(f"stopper {name!r} takes no options, got {', '.join(given)}")
    if bad:
        raise ConfigError(f"unknown stopper option {bad[0]!r}; the {name} stopper takes {', '.join(known)}")
    return cls(**given, **{f.name: accuracy_floor for f in fields(cls) if f.metadata.get(FROM_STUDY)})
