"""Spending bases deliberately (``base:``): once the study's budget for bases is spent, the next search trial takes
the architecture configuration of a base already trained, and the sampler draws only its compression and training
knobs. Without this, a space with many architecture configurations would keep drawing new ones, each refused before
training (:func:`search.trial.decisions.no_budget_for_base`): a finished trial spent on nothing.

The budget is spent once ``max_bases`` bases are trained, or when no architecture configuration of the space
without a base fits what is left of the bases' share (each one's dense MACs measured, lazily, at the pace of the bases
trained so far). The base with the fewest trials goes next (ties: the one trained first), so every trained base gets
its share of compressions; which compressions is the sampler's choice, with the fixed architecture in view.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import optuna
from optuna.trial import TrialState

from search.candidate.complexity import measure
from search.errors import ConfigError
from search.space.params import architecture_names, candidate_from
from search.trial.decisions import base_refusal, trained_bases
from search.trial.record import TrialRecord


def fixed_architecture(study: optuna.Study, loaded, num_classes: int,
                       input_size: tuple[int, ...]) -> tuple[dict | None, str | None]:
    """(the architecture parameters to fix for the next search trial of ``loaded`` (a LoadedStudy), why) or
    (None, None) while some architecture without a base still fits the budget: the sampler then draws freely (and a
    candidate whose new base would not fit is stopped before training). Called under the study's claim lock."""
    cfg = loaded.config
    if cfg.base is None:
        return None, None
    trials = study.get_trials(deepcopy=False)
    bases, workers = trained_bases(trials)
    if not bases:
        return None, None
    names = architecture_names(loaded.space.names())
    first: dict[str, optuna.trial.FrozenTrial] = {}
    uses: Counter = Counter()
    for t in trials:
        key = TrialRecord.of(t).base_key
        if key in bases and t.state != TrialState.FAIL:
            uses[key] += 1
            if key not in first and TrialRecord.of(t).base_reused is False:
                first[key] = t
    trained = [{n: first[k].params[n] for n in names if n in first[k].params} for k in first]

    def refusal(macs: int) -> str | None:
        return base_refusal(bases, workers, cfg.base, macs, cfg.timeout, cfg.n_trials, cfg.train.epochs)[0]

    configs = loaded.space.combinations(names)
    if (reason := refusal(0)) is not None:  # max_bases, or the share spent whatever the next base would cost
        pass
    elif configs is None:  # a continuous architecture parameter: the cheapest trained base stands for the cheapest
        reason = refusal(min(r.dense_macs or 0 for r in bases.values()))
    else:
        untrained = [c for c in configs if c not in trained]
        random.Random(len(trials)).shuffle(untrained)  # measured lazily, in a seeded order, until one fits
        reason = next((None for c in untrained if (macs := _dense_macs(c, cfg, num_classes, input_size)) is not None
                       and refusal(macs) is None),
                      refusal(10**18) if untrained else "every architecture of the space has its base")
    if reason is None or not first:
        return None, None
    key = min(first, key=lambda k: (uses[k], first[k].number))
    params = first[key].params
    return {n: params[n] for n in names if n in params}, reason.replace("its architecture has no base, and ", "")


_MACS: dict[str, int | None] = {}


def _dense_macs(values: dict, cfg, num_classes: int, input_size: tuple[int, ...]) -> int | None:
    """The dense MACs of the architecture ``values`` (measured once per process); None for a combination that can
    never build (groups that do not divide a layer's channels): it will never need a base."""
    key = json.dumps([values, num_classes, list(input_size), cfg.train.tta_flip], sort_keys=True, default=str)
    if key not in _MACS:
        try:
            candidate = candidate_from(values, cfg.train, cfg.candidate_compress_at)
            _MACS[key] = measure(candidate.build(num_classes), input_size).macs
        except ConfigError:
            _MACS[key] = None
    return _MACS[key]
