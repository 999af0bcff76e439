"""Spending bases deliberately (``base:``): once the study's budget for bases is spent, the next search trial takes
the architecture configuration of a base already trained, and the sampler draws only its compression and training
knobs. Without this, a space with many architecture configurations would keep drawing new ones, each refused before
training (:func:`search.trial.decisions.no_budget_for_base`): a finished trial spent on nothing.

The base with the fewest trials goes next (ties: the one trained first), so every trained base gets its share of
compressions; which compressions is the sampler's choice, with the fixed architecture in view.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import optuna
from optuna.trial import TrialState

from search.space.params import architecture_names
from search.trial.decisions import base_refusal, trained_bases
from search.trial.record import TrialRecord


def fixed_architecture(study: optuna.Study, loaded) -> tuple[dict | None, str | None]:
    """(the architecture parameters to fix for the next search trial of ``loaded`` (a LoadedStudy), why) or
    (None, None) while a new base is still within the budget. Called under the study's claim lock."""
    cfg = loaded.config
    if cfg.base is None:
        return None, None
    trials = study.get_trials(deepcopy=False)
    bases, workers = trained_bases(trials)
    if not bases:
        return None, None
    typical = int(np.median([r.dense_macs or 0 for r in bases.values()]))
    reason, _ = base_refusal(bases, workers, cfg.base, typical, cfg.timeout, cfg.n_trials, cfg.train.epochs)
    if reason is None:
        return None, None
    names = architecture_names(loaded.space.names())
    first: dict[str, optuna.trial.FrozenTrial] = {}
    uses: Counter = Counter()
    for t in trials:
        key = TrialRecord.of(t).base_key
        if key in bases and t.state != TrialState.FAIL:
            uses[key] += 1
            if key not in first and bases[key] is not None and TrialRecord.of(t).base_reused is False:
                first[key] = t
    usable = [k for k in bases if k in first]
    if not usable:
        return None, None
    key = min(usable, key=lambda k: (uses[k], first[k].number))
    params = first[key].params
    return {n: params[n] for n in names if n in params}, reason.replace("its architecture has no base, and ", "")
