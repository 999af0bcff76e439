"""Run a study: open (or resume) it, load the data and teacher once, and let Optuna run trials until the
storage holds ``n_trials`` finished ones or ``timeout`` passes."""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from search.data import load_data
from search.device import pick_device
from search.objective import Objective
from search.storage import artifact_store
from search.study import LoadedStudy, open_study
from search.teacher import get_teacher

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def needs_teacher(loaded: LoadedStudy) -> bool:
    """Whether the space (or an enqueued configuration) can switch distillation on."""
    for spec in loaded.space.params:
        if spec.name == "distillation" and (spec.value is True if spec.fixed else True in (spec.choices or ())):
            return True
    return any(e.get("distillation") for e in loaded.config.enqueue)


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_study(loaded: LoadedStudy, on_epoch=None, on_trial: Callable | None = None, on_teacher_epoch=None,
              heartbeat_interval: int | None = None, grace_period: int | None = None,
              study: optuna.Study | None = None) -> optuna.Study:
    """Run trials of ``loaded`` (opened here unless ``study`` is given) until the budget is spent."""
    cfg = loaded.config
    if study is None:
        study = open_study(loaded, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    remaining = None if cfg.n_trials is None else cfg.n_trials - finished_count(study)
    if remaining is not None and remaining <= 0:
        return study
    device = pick_device(cfg.device)
    data = load_data(cfg.data, device)
    teacher = get_teacher(cfg.teacher, cfg.data, data, on_epoch=on_teacher_epoch) if needs_teacher(loaded) else None
    objective = Objective(loaded, data, teacher, artifact_store(cfg.artifact_dir), cfg.pruner.build(cfg.accuracy_floor),
                          on_epoch=on_epoch)
    callbacks = []
    if cfg.n_trials is not None:
        # Counted in the storage, so several runs and workers together stop at n_trials.
        callbacks.append(MaxTrialsCallback(cfg.n_trials, states=FINISHED))
    if on_trial is not None:
        callbacks.append(lambda study, trial: on_trial(study, trial))
    study.optimize(objective, n_trials=remaining, timeout=cfg.timeout, callbacks=callbacks, catch=(RuntimeError,),
                   gc_after_trial=True)
    return study
