"""Run a study as one worker: open (or join) it, load the data and teacher once, and run trials until the storage
holds ``n_trials`` finished ones or ``timeout`` passes. Any number of workers may run this against one storage.

Claiming a trial happens under the study's lock (see :mod:`search.locks`): a worker counts finished, running and
queued trials and asks for a new one only while they are fewer than ``n_trials``, so the study ends with exactly
``n_trials`` finished trials. When the rest are running elsewhere it waits: if one of their workers dies, the
heartbeat marks its trial FAILED and re-queues it, and a waiting worker picks it up.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable

import optuna
import torch
from optuna.trial import TrialState

from search.data import load_data
from search.device import pick_device
from search.locks import study_lock
from search.objective import Objective
from search.storage import artifact_store, retry_callback
from search.study import LoadedStudy, open_study
from search.teacher import get_shared_teacher

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ENV_THREADS = "MICRONET_THREADS"


def needs_teacher(loaded: LoadedStudy) -> bool:
    """Whether the space (or an enqueued configuration) can switch distillation on."""
    for spec in loaded.space.params:
        if spec.name == "distillation" and (spec.value is True if spec.fixed else True in (spec.choices or ())):
            return True
    return any(e.get("distillation") for e in loaded.config.enqueue)


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def set_threads() -> None:
    """``MICRONET_THREADS`` torch threads (set by ``run --workers``); several workers on one machine must share its
    cores: oversubscribed, a training step here ran 50x slower."""
    threads = os.environ.get(ENV_THREADS)
    if threads:
        torch.set_num_threads(max(1, int(threads)))


def run_study(loaded: LoadedStudy, on_epoch=None, on_trial: Callable | None = None, on_teacher_epoch=None,
              study: optuna.Study | None = None, on_event: Callable[[str], None] | None = None,
              artifacts: str | None = None) -> optuna.Study:
    """Run trials of ``loaded`` (opened here unless ``study`` is given) until the study's budget is spent.

    ``on_event(text)`` hears what the worker does besides training: waiting, re-queueing, the teacher.
    """
    cfg = loaded.config
    say = on_event or (lambda text: None)
    if study is None:
        study = open_study(loaded)
    if cfg.n_trials is not None and finished_count(study) >= cfg.n_trials:
        return study
    set_threads()
    import ptflops  # noqa: F401  (the score's MAC counter takes seconds to import: once here, not in trial 1)

    device = pick_device(cfg.device)
    data = load_data(cfg.data, device)
    store = artifact_store(artifacts or cfg.artifact_dir)
    teacher = None
    if needs_teacher(loaded):
        lock = study_lock(loaded.storage_url, f"{cfg.name}:teacher")
        teacher = get_shared_teacher(cfg.teacher, cfg.data, data, study, store, lock, on_epoch=on_teacher_epoch,
                                     on_event=say)
    claim = study_lock(loaded.storage_url, f"{cfg.name}:claim")
    objective = Objective(loaded, data, teacher, store, cfg.pruner.build(cfg.accuracy_floor), on_epoch=on_epoch,
                          on_start=claim.release, worker=worker_name())
    callbacks = [] if on_trial is None else [lambda study, trial: on_trial(study, trial)]
    deadline = None if cfg.timeout is None else time.monotonic() + cfg.timeout
    # Optuna's journal storage has no heartbeats: there a dead worker's trial is never marked FAILED
    heartbeats = bool(cfg.heartbeat.interval) and not loaded.storage_url.startswith("journal:")
    waiting_for = None
    while deadline is None or time.monotonic() < deadline:
        with claim:
            state = _claim_state(study, cfg.n_trials, heartbeats)
            if state == "done":
                break
            if state == "go":
                waiting_for = None
                try:
                    # the objective releases the claim as soon as Optuna has created (or dequeued) its trial
                    # no gc_after_trial: a full collection took 0.22 s per trial here (1 % of a quickstart trial);
                    # a trial's model goes with its last reference, Python's own collector takes any cycles
                    study.optimize(objective, n_trials=1, callbacks=callbacks, catch=(RuntimeError,))
                except KeyboardInterrupt:
                    _requeue(study, objective.current_trial_id, cfg.heartbeat.max_retry, say)
                    raise
                continue
        if state != waiting_for:
            say(f"waiting: the study's other {state} trial(s) are running on other workers")
            waiting_for = state
        time.sleep(_poll_seconds(cfg.heartbeat.interval))
    return study


def _claim_state(study: optuna.Study, n_trials: int | None, heartbeats: bool) -> str | int:
    """'go' (start a trial), 'done' (the study is finished for this worker) or the number of trials to wait for."""
    if heartbeats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # re-queues the trials of dead workers
    if n_trials is None:
        return "go"
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in FINISHED for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    if finished >= n_trials:
        return "done"
    if waiting or finished + running < n_trials:
        return "go"  # a queued trial (a retry, an enqueued configuration) or a new one
    if not heartbeats:
        # without heartbeats a trial whose worker died stays RUNNING forever: do not wait for it
        return "done"
    return running


def _poll_seconds(heartbeat_interval: int) -> float:
    return min(5.0, max(0.5, heartbeat_interval / 2))


def _requeue(study: optuna.Study, trial_id: int | None, max_retry: int, say) -> None:
    """A worker stopped by Ctrl-C or SIGTERM (a pre-empted job) queues its trial again, as a dead worker's would
    be after the grace period, so a later worker resumes it from its last epoch checkpoint."""
    if trial_id is None:
        return
    trial = study._storage.get_trial(trial_id)
    if trial.state != TrialState.FAIL:
        return
    before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    retry_callback(max_retry)(study, trial)
    if len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) > before:
        epoch = (trial.user_attrs.get("resume") or {}).get("epoch")
        say(f"trial {trial.number} stopped and queued again" + (f"; it resumes after epoch {epoch}" if epoch else ""))
