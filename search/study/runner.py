"""Run a study as one worker: open (or join) it, load the data and teacher once, and run trials until the storage
holds ``n_trials`` finished ones or ``timeout`` passes. Any number of workers may run this against one storage.

Claiming a trial happens under the study's lock (see :mod:`search.study.locks`): a worker counts finished, running and
queued trials and asks for a new one only while they are fewer than ``n_trials``, so the study ends with exactly
``n_trials`` finished trials. When the rest are running elsewhere it waits: if one of their workers dies, the
heartbeat marks its trial FAILED and re-queues it, and a waiting worker picks it up.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace

import optuna
from optuna.trial import TrialState

from search import optuna_compat as compat
from search.errors import ArtifactStoreError
from search.study import final as final_stage
from search.study.draw import fixed_architecture
from search.study.locks import study_lock
from search.study.storage import artifact_store, retry_callback
from search.study.study_file import LoadedStudy, open_study
from search.study.threads import ENV_THREADS, FairThreads, HostWorkers, fixed_threads
from search.training.data import Splits, load_data
from search.training.device import pick_device
from search.training.teacher import get_shared_teacher
from search.trial.pipeline import TrialPipeline
from search.trial.record import TrialRecord

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def needs_teacher(loaded: LoadedStudy) -> bool:
    """Whether the space (or an enqueued configuration) can switch distillation on with the study's teacher (with
    ``base:`` the base teaches, unless ``base.teacher`` is ``study``)."""
    if loaded.config.base is not None and loaded.config.base.teacher == "base":
        return False
    for spec in loaded.space.params:
        if spec.name == "distillation" and (spec.value is True if spec.fixed else True in (spec.choices or ())):
            return True
    return any(e.get("distillation") for e in loaded.config.enqueue)


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_study(loaded: LoadedStudy, on_epoch=None, on_trial: Callable | None = None, on_teacher_epoch=None,
              study: optuna.Study | None = None, on_event: Callable[[str], None] | None = None,
              artifacts: str | None = None, data: Splits | None = None) -> optuna.Study:
    """Run trials of ``loaded`` (opened here unless ``study`` is given) until the study's budget is spent.

    ``on_event(text)`` hears what the worker does besides training: waiting, re-queueing, the teacher. ``data``:
    the study's dataset when the caller loaded it already (the commands do, before they create the study).
    """
    cfg = loaded.config
    say = on_event or (lambda text: None)
    if study is None:
        study = open_study(loaded)
    if cfg.n_trials is not None and finished_count(study) >= cfg.n_trials:
        return study
    with HostWorkers() as host:
        threads = FairThreads(host, fixed=fixed_threads())
        threads.update(force=True)
        say(f"{threads.threads} torch thread(s): " + (f"fixed by --threads / {ENV_THREADS}" if threads.fixed else
                                                      f"{threads.cores} cores shared by the workers on this host"))

        def epoch_then_threads(number, report):
            if on_epoch is not None:
                on_epoch(number, report)
            threads.update()  # a worker that started or stopped on this host changes the share

        return _run(loaded, study, epoch_then_threads, on_trial, on_teacher_epoch, say, artifacts, threads, data)


def _run(loaded, study, on_epoch, on_trial, on_teacher_epoch, say, artifacts, threads, data) -> optuna.Study:
    cfg = loaded.config
    import ptflops  # noqa: F401  (the score's MAC counter takes seconds to import: once here, not in trial 1)

    started = time.monotonic()
    device = pick_device(cfg.device)
    data = load_data(cfg.data, device) if data is None else data.to(device)
    store = artifact_store(artifacts or cfg.artifact_dir)
    teacher = None
    if needs_teacher(loaded):
        lock = study_lock(loaded.storage_url, f"{cfg.name}:teacher")
        teacher = get_shared_teacher(cfg.teacher, cfg.data, data, study, store, lock, on_epoch=on_teacher_epoch,
                                     on_event=say)
    claim = study_lock(loaded.storage_url, f"{cfg.name}:claim")

    def pipeline(stage: LoadedStudy) -> TrialPipeline:
        return TrialPipeline(stage, data, teacher, store, stage.config.stopper.build(stage.config.accuracy_floor),
                             on_epoch=on_epoch, on_start=claim.release, worker=worker_name(),
                             on_base_epoch=lambda label, r: say(f"base {label} epoch {r.epoch}/{r.epochs}: "
                                                                f"val {r.val_accuracy:.2%}"))

    callbacks = [] if on_trial is None else [lambda study, trial: on_trial(study, trial)]
    deadline = None if cfg.timeout is None else started + cfg.timeout
    reserve = None
    if cfg.final is not None and deadline is not None:
        def reserve():  # the time the final stage is predicted to take, kept back from the search
            return final_stage.reserve_seconds(study, cfg.final, _workers(study)) or 0.0
    _trials(loaded, study, pipeline(loaded), claim, deadline, callbacks, threads, say, reserve,
            draw=lambda: fixed_architecture(study, loaded, data.num_classes, tuple(data.x_train.shape[1:])))
    if cfg.final is None:
        return study
    with claim:  # the first worker to get here picks the finalists; the others find them queued
        chosen = final_stage.finalists(study, cfg.final.members, cfg.final.bounds)
        if not chosen:
            say("final stage: the search front is empty (no complete trial above the accuracy floor): nothing to "
                "fine-tune")
            return study
        stage = replace(loaded, config=cfg.final_stage(len(chosen), artifacts))
        final = open_study(stage)
        count = final_stage.enqueue_finalists(final, chosen)
        stage = replace(loaded, config=cfg.final_stage(count, artifacts))
    left = "" if deadline is None else f", {max(0.0, deadline - time.monotonic()):.0f} s left"
    say(f"final stage: fine-tuning {count} front member(s) for {cfg.final.epochs} epochs in study "
        f"{stage.config.name}{left}")
    _trials(stage, final, pipeline(stage), claim, deadline, callbacks, threads, say, None)
    return study


def _workers(study: optuna.Study) -> int:
    """The workers seen in the study: the ones whose trials ran in the last hour (the final stage's sharers)."""
    now = datetime.datetime.now()
    return max(1, len({TrialRecord.of(t).worker for t in study.get_trials(deepcopy=False)
                       if t.datetime_start is not None and (now - t.datetime_start).total_seconds() < 3600}
                      - {None}))


def _trials(loaded, study, objective, claim, deadline, callbacks, threads, say, reserve, draw=None) -> None:
    """Run ``loaded``'s trials of ``study`` until it holds ``n_trials`` finished ones or ``deadline`` (monotonic)
    passes; ``reserve()``, the seconds kept back before the deadline for the final stage; ``draw()``, the
    parameters to fix for a new trial and why (:func:`search.study.draw.fixed_architecture`)."""
    cfg = loaded.config
    told = False
    # Optuna's journal storage has no heartbeats: there a dead worker's trial is never marked FAILED
    heartbeats = bool(cfg.heartbeat.interval) and not loaded.storage_url.startswith("journal:")
    waiting_for = None
    while True:
        if deadline is not None:
            kept = reserve() if reserve is not None else 0.0
            if time.monotonic() >= deadline - kept:
                if kept:
                    say(f"search stage ends: {kept:.0f} s kept for the final stage")
                return
        with claim:
            state = _claim_state(study, cfg.n_trials, heartbeats)
            if state == "done":
                return
            if state == "go":
                waiting_for = None
                threads.update(force=True)
                if draw is not None and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    fixed, why = draw()
                    if fixed:
                        study.enqueue_trial(fixed)
                        if not told:
                            say(f"bases spent ({why}): new trials take a trained base's architecture")
                            told = True
                # Ctrl-C can land while Optuna creates and samples the trial, before the objective knows its id:
                # the trials running before it tell which one is this worker's (no other worker starts one while
                # this one holds the claim)
                running_before = {compat.trial_id(t)
                                  for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
                objective.current_trial_id = None
                try:
                    # the objective releases the claim once its trial is sampled and checked for twins
                    # no gc_after_trial: a full collection took 0.22 s per trial here (1 % of a quickstart trial);
                    # a trial's model goes with its last reference, Python's own collector takes any cycles
                    with _quiet_interrupt():
                        study.optimize(objective, n_trials=1, callbacks=callbacks, catch=(RuntimeError,))
                except KeyboardInterrupt:
                    for trial_id in _interrupted(study, objective.current_trial_id, running_before):
                        _requeue(study, trial_id, cfg.heartbeat.max_retry, say)
                    raise
                if getattr(objective, "store_failed", False):  # the store refused its checkpoint: not its fault
                    failed = compat.storage_of(study).get_trial(objective.current_trial_id)
                    say(f"the artifact store refused the checkpoint of trial {failed.number} "
                        f"({TrialRecord.of(failed).store_error})")
                    _requeue(study, objective.current_trial_id, cfg.heartbeat.max_retry, say)
                    time.sleep(_poll_seconds(cfg.heartbeat.interval))  # a moment for the store to come back
                continue
        if state != waiting_for:
            say(f"waiting: the study's other {state} trial(s) are running on other workers")
            waiting_for = state
        time.sleep(_poll_seconds(cfg.heartbeat.interval))


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


def _interrupted(study: optuna.Study, current: int | None, running_before: set[int]) -> list[int]:
    """The trial this worker was running when it was interrupted: the objective's, or, when the interrupt came
    before the objective started (while Optuna created the trial or sampled it jointly), the trial that started
    running since ``running_before`` was taken, under this worker's claim."""
    if current is not None:
        return [current]
    return [compat.trial_id(t) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if compat.trial_id(t) not in running_before]


def _requeue(study: optuna.Study, trial_id: int, max_retry: int, say) -> None:
    """A worker stopped by Ctrl-C or SIGTERM (a pre-empted job) queues its trial again, as a dead worker's would
    be after the grace period, so a later worker resumes it from its last epoch checkpoint."""
    trial = compat.storage_of(study).get_trial(trial_id)
    if trial.state == TrialState.RUNNING:
        # interrupted outside the objective (Optuna fails only what the objective raises): nobody else will end it
        compat.storage_of(study).set_trial_state_values(trial_id, TrialState.FAIL)
        trial = compat.storage_of(study).get_trial(trial_id)
    if trial.state != TrialState.FAIL:
        return
    before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    retry_callback(max_retry)(study, trial)
    if len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) > before:
        epoch = (TrialRecord.of(trial).resume or {}).get("epoch")
        say(f"trial {trial.number} stopped and queued again" + (f"; it resumes after epoch {epoch}" if epoch else ""))
    else:
        say(f"trial {trial.number} stopped; not queued again: it was already retried {max_retry} time(s) "
            f"(heartbeat max_retry)")


class _InterruptFilter(logging.Filter):
    """Drops Optuna's two warnings about a trial failed by KeyboardInterrupt (the first with a 40-line traceback):
    a worker stopped by Ctrl-C or SIGTERM re-queues its trial and says so in one line (``_requeue``)."""

    def __init__(self):
        super().__init__()
        self.interrupted: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[0] is not None and issubclass(record.exc_info[0], (
                KeyboardInterrupt, ArtifactStoreError)):  # each said in one line by the runner
            self.interrupted.add(message.split(" failed", 1)[0])  # "Trial N"
            return False
        return not (" failed with value " in message and message.split(" failed", 1)[0] in self.interrupted)


@contextmanager
def _quiet_interrupt():
    logger = logging.getLogger("optuna.study._optimize")
    quiet = _InterruptFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
