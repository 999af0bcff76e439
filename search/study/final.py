"""The final stage: the search front turned into deployable models.

A search trial is a short fine-tune that ranks candidates; the final stage fine-tunes the search front's members (at
most ``final.members``, spread along the cost axes, above the accuracy floor) for ``final.epochs`` from their bases,
as the trials of a companion study ``<name>-final`` in the same storage. Its trials are enqueued with the members'
parameters, so every worker shares them with the search's fault tolerance (claims, heartbeats, retries, resume
checkpoints); they are trained to the end (no early stopping, no skip) and ranked by validation accuracy like the
search. The study's ``timeout`` covers both stages: each worker keeps back the time the final stage is predicted to
take (:func:`reserve_seconds`) and switches when only that is left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search import optuna_compat as compat
from search.candidate.recipe import MAX_EPOCHS
from search.config import number
from search.errors import ConfigError
from search.pareto import rank_order
from search.trial.objectives import Objectives
from search.trial.record import TrialRecord

SUFFIX = "-final"


@dataclass(frozen=True)
class FinalConfig:
    """The study file's ``final:``: ``epochs`` of fine-tuning per finalist (the study's ``train:`` recipe with these
    epochs, and ``lr`` if given), at most ``members`` finalists, and the share ``margin`` added to the predicted time
    kept back for the stage. ``bounds``: first-cost (score) bounds a user will export at; the most accurate search
    member within each is a finalist before the others are chosen by spread."""

    epochs: int = 20
    members: int = 4
    lr: float | None = None
    margin: float = 0.15
    bounds: tuple[float, ...] = ()

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or not 1 <= self.epochs <= MAX_EPOCHS:
            raise ConfigError(f"final epochs must be an integer from 1 to {MAX_EPOCHS}, got {self.epochs!r}")
        if isinstance(self.members, bool) or not isinstance(self.members, int) or self.members < 1:
            raise ConfigError(f"final members must be an integer >= 1, got {self.members!r}")
        if self.lr is not None and (not number(self.lr) or self.lr <= 0):
            raise ConfigError(f"final lr must be a number > 0 (or null: the study's), got {self.lr!r}")
        if not number(self.margin) or self.margin < 0:
            raise ConfigError(f"final margin must be a number >= 0, got {self.margin!r}")
        if not isinstance(self.bounds, tuple) or not all(number(b) and b > 0 for b in self.bounds):
            raise ConfigError(f"final bounds must be a list of scores > 0 (e.g. [0.03, 0.01]), got {self.bounds!r}")


def final_name(name: str) -> str:
    return f"{name}{SUFFIX}"


def finalists(study: optuna.Study, members: int, bounds: tuple[float, ...] = ()) -> list[FrozenTrial]:
    """The search front's members to fine-tune, by their first cost: all of them when they are at most ``members``,
    else first the most accurate member within each of ``bounds`` (the scores a user will export at; tightest first),
    then the extremes of each cost and the most isolated of the others (crowding distance), so that the finalists
    span the front. Spread alone can leave out the member a user wants: on cifar10-dev one run's three finalists
    skipped everything between scores 0.004 and 0.058. The front holds feasible trials only: none under the
    accuracy floor."""
    objectives = Objectives.of_study(study)
    front = sorted(study.best_trials, key=lambda t: (objectives.first_cost(t), t.number))
    if len(front) <= members:
        return front
    keep: list[int] = []
    for bound in sorted(bounds):
        within = [i for i, t in enumerate(front) if objectives.first_cost(t) <= bound]
        if within:
            best = max(within, key=lambda i: (objectives.accuracy(front[i]), -front[i].number))
            if best not in keep:
                keep.append(best)
    for i in rank_order([objectives.loss(t.values) for t in front]):
        if i not in keep:
            keep.append(i)
    chosen = set(keep[:members])
    return [t for i, t in enumerate(front) if i in chosen]


def enqueue_finalists(final: optuna.Study, chosen: list[FrozenTrial]) -> int:
    """Queue each finalist once in the companion study (``search_trial``: its search trial's number); a worker that
    finds them queued already adds nothing. Called under the study's claim lock. The number of finalists."""
    queued = {t.user_attrs.get("search_trial") for t in final.get_trials(deepcopy=False)}
    for t in chosen:
        if t.number not in queued:
            final.enqueue_trial(t.params, user_attrs={"search_trial": t.number})
    return len(queued - {None}) if queued - {None} else len(chosen)


def reserve_seconds(study: optuna.Study, final, workers: int) -> float | None:
    """The wall time the final stage is predicted to take: the finalists that the front holds now, each trained for
    ``final.epochs`` at the seconds per epoch its search trial took, shared by ``workers``, plus ``final.margin``.
    None until a trial has completed."""
    chosen = finalists(study, final.members, final.bounds)
    per_epoch = []
    for t in chosen:
        r = TrialRecord.of(t)
        trained = (r.epochs_run or 0) - (r.epochs_saved or 0)
        if r.train_s and trained > 0:
            per_epoch.append(r.train_s / trained)
    if not per_epoch:
        return None
    # the finalists split over the workers: the stage lasts as long as the busiest worker's share
    rounds = -(-len(chosen) // max(1, workers))
    return float(np.mean(per_epoch)) * final.epochs * rounds * (1 + final.margin)


def final_study(storage, name: str) -> optuna.Study | None:
    """The companion study of search study ``name`` when it exists with a complete trial, else None."""
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if final_name(name) not in names:
        return None
    study = optuna.load_study(study_name=final_name(name), storage=storage)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study


STAGES = ("final", "search")


def load_stage(storage: str | None, name: str, stage: str = "final") -> optuna.Study:
    """The study the reading commands (``front``, ``report``, ``export``) show: with ``stage`` final (the default),
    the final stage's companion study of ``name`` once it has a complete trial, else ``name`` itself."""
    from search.study.storage import load_existing_study

    study = load_existing_study(storage, name)
    if stage == "search" or name.endswith(SUFFIX):
        return study
    return final_study(compat.storage_of(study), name) or study


def kendall_tau(final: optuna.Study, search: optuna.Study) -> tuple[float | None, int]:
    """How well the search stage ranked the finalists: Kendall's τ-b (scipy) between each complete finalist's
    search-stage and final validation accuracy, and how many finalists it is over (None under two)."""
    from scipy.stats import kendalltau

    objectives = Objectives.of_study(search)
    searched = search.get_trials(deepcopy=False)
    pairs = []
    for t in final.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        number = t.user_attrs.get("search_trial")
        if isinstance(number, int) and 0 <= number < len(searched):
            before = searched[number]
            if before.state == TrialState.COMPLETE:
                pairs.append((objectives.accuracy(before), objectives.accuracy(t)))
    if len(pairs) < 2:
        return None, len(pairs)
    tau = kendalltau([a for a, _ in pairs], [b for _, b in pairs]).statistic
    return (None if tau != tau else float(tau)), len(pairs)
