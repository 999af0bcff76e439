"""What the ``run`` and ``worker`` commands do around :func:`search.study.runner.run_study`: check the data before
the storage is touched, take the thread count, stop on SIGTERM as on Ctrl-C, and run K local worker processes
(:mod:`search.study.launcher`) while reporting the trials they finish.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study.study_file import LoadedStudy

LOG_ROOT = Path("studies") / "logs"  # the local workers' logs: <LOG_ROOT>/<study>/worker-<i>.log


def check_data(loaded: LoadedStudy):
    """The study's dataset, loaded on the CPU: present, readable and big enough for its splits, or one line."""
    from search.training.data import load_data

    return load_data(loaded.config.data)


def use_threads(threads: int | None) -> None:
    """Torch CPU threads per worker: ``threads`` travels in MICRONET_THREADS, where the runner (and the workers
    :func:`run_local_workers` starts) read it; None leaves it alone. A bad MICRONET_THREADS is refused now, before
    anything is written."""
    from search.study.threads import ENV_THREADS, fixed_threads

    if threads is not None:
        os.environ[ENV_THREADS] = str(threads)
    fixed_threads()


@contextmanager
def stop_on_sigterm():
    """SIGTERM (a pre-empted job, a deleted pod, ``kill``) stops like Ctrl-C: the running trial is queued again.
    The first signal stops; later ones are ignored so that the clean-up (re-queueing the trial) can finish."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def state_counts(study: optuna.Study) -> dict[TrialState, int]:
    """How many of the study's trials are complete, pruned and failed."""
    trials = study.get_trials(deepcopy=False)
    return {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}


def worker_log_dir(study_name: str) -> Path:
    return LOG_ROOT / study_name


def plan_local_workers(workers: int | None, trials_per_gpu: int | None):
    """The local workers to start: ``workers`` of them (default: ``trials_per_gpu`` (default 1) per visible GPU, or
    one on a CPU-only machine), GPUs shared round robin and the CPU cores split (unless MICRONET_THREADS fixes
    the threads)."""
    from search.study.launcher import cpu_count, plan_workers, visible_gpus
    from search.study.threads import fixed_threads

    gpus = visible_gpus()
    per_gpu = trials_per_gpu or 1
    count = workers or max(1, len(gpus)) * per_gpu
    return plan_workers(count, gpus, cpu_count(), fixed_threads())


def run_local_workers(loaded: LoadedStudy, study: optuna.Study, plans, extra_args: list[str],
                      on_trial: Callable[[optuna.Study, FrozenTrial], None],
                      on_stop: Callable[[], None] = lambda: None) -> list:
    """Start ``plans`` as ``micronet-search worker`` processes on ``loaded`` (``extra_args``: their flags), logging to
    :func:`worker_log_dir`, and wait for them; ``on_trial(study, trial)`` hears each trial that finishes meanwhile
    (not those finished before). Ctrl-C or SIGTERM calls ``on_stop()``, stops the workers (each queues its running
    trial again) and is raised again. Returns the workers that exited with an error."""
    from search.study.launcher import start_workers, stop_workers, wait_workers
    from search.study.outage import StorageUnreachable, without_waiting

    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}  # before this run: not news

    def poll():
        try:
            with without_waiting(loaded.storage_url):
                for t in study.get_trials(deepcopy=False):
                    if t.state.is_finished() and t.number not in seen:
                        seen.add(t.number)
                        on_trial(study, t)
        except StorageUnreachable:
            pass  # a database outage: the workers ride it out (storage_outage_s); show their trials when it ends

    procs = start_workers(loaded.path, loaded.storage_url, plans, worker_log_dir(loaded.config.name), extra_args)
    try:
        with stop_on_sigterm():
            wait_workers(procs, poll)
    except KeyboardInterrupt:
        on_stop()
        stop_workers(procs)
        poll()
        raise
    return [w for w in procs if w.process.returncode != 0]
