"""Every use of an Optuna internal, in one place (each has a test in tests/test_optuna_compat.py).

Optuna's public API does not give these, and the workers need them: a trial's storage id (to end or re-queue a trial
that a Ctrl-C interrupted before the objective started), the study's storage (to write trial state), the random
states inside a sampler (to seed them per trial), the cache Optuna puts around an RDB storage and the heartbeat
interface (the outage-tolerant storage wraps both), and TPE's ranking of pruned trials by a single direction, and
its exact hypervolume in any dimension. An Optuna upgrade that moves one of them breaks this module and its test,
visibly, and nothing else.
"""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial

__all__ = ["BaseHeartbeat", "FirstDirection", "cached_storage", "hypervolume", "random_states", "storage_of",
           "trial_id"]


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The trial's id in its storage (unique across studies; ``number`` is unique within one study)."""
    return trial._trial_id


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage ``study`` reads and writes, as Optuna wrapped it."""
    return study._storage


def cached_storage(storage: BaseStorage) -> BaseStorage:
    """The cache Optuna itself puts around an RDBStorage when given a URL (``optuna.storages.get_storage``)."""
    return optuna.storages._CachedStorage(storage)


def hypervolume(losses, reference) -> float:
    """The exact hypervolume of ``losses`` (n × m, every objective minimized) up to ``reference`` (m), in any
    dimension (WFG from 3 on): Optuna's own routine, which its public API reaches only through plots."""
    from optuna._hypervolume import compute_hypervolume

    return compute_hypervolume(losses, reference)


def random_states(sampler) -> list:
    """Every ``LazyRandomState`` inside ``sampler`` (its own, its fallback random sampler's, its strategies'), found
    by walking its attributes, so that samplers added later are covered without a list here."""
    from optuna.samplers._lazy_random_state import LazyRandomState

    found, seen, todo = [], set(), [sampler]
    while todo:
        obj = todo.pop(0)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, LazyRandomState):
            found.append(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            todo.extend(v for v in vars(obj).values() if hasattr(v, "__dict__"))
    return found


class FirstDirection:
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
