"""``micronet-search run STUDY.yaml [--workers K]``: create or resume a study and run trials, in this process or in K
local worker processes; print the Pareto front at the end."""

from __future__ import annotations

import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from search.cli.front import print_front
from search.errors import ConfigError
from search.results.front import front_rows
from search.study.storage import mask
from search.study.study_file import load_study_file, open_study
from search.trial.objectives import Objectives
from search.trial.record import TrialRecord


def add_parser(commands) -> None:
    p = commands.add_parser("run", help="run (or resume) a study", description=__doc__)
    p.add_argument("study", help="study file, e.g. studies/quickstart.yaml")
    p.add_argument("--storage", help="storage URL (default: the study file's, or sqlite:///studies/NAME.db); "
                                     "MICRONET_STORAGE also sets it")
    p.add_argument("--n-trials", type=int, help="finished trials the study should hold (all runs together)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--workers", type=int, metavar="K",
                   help="run K worker processes on this machine (GPUs shared round robin, CPU cores split)")
    p.add_argument("--trials-per-gpu", type=int, metavar="M",
                   help="with GPUs: M workers per GPU (default 1; without --workers, starts GPUs x M workers)")
    p.add_argument("--artifacts", metavar="DIR", help="artifact folder (default: the study file's)")
    add_data_path_argument(p)
    add_threads_argument(p)
    p.set_defaults(handler=run)


def add_data_path_argument(p) -> None:
    p.add_argument("--data-path", metavar="PATH",
                   help="the data: an .npz file (name: npz) or the CIFAR folder; replaces the study file's data.path")


def add_threads_argument(p) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads per worker (default: this host's cores divided by its live workers, "
                        "looked at again every few seconds; MICRONET_THREADS also sets it)")


def use_threads_argument(args) -> None:
    """``--threads N`` travels in MICRONET_THREADS, where the runner (and the workers ``run`` starts) read it."""
    import os

    from search.study.threads import ENV_THREADS, fixed_threads

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be an integer >= 1, got {args.threads}")
        os.environ[ENV_THREADS] = str(args.threads)
    fixed_threads()  # a bad MICRONET_THREADS: one line now, before anything is written


class StudyProgress:
    """A study bar (complete / pruned / failed / front size) and an epoch bar for the running trial on a
    terminal; one plain line per event otherwise."""

    def __init__(self, total: int | None, epochs: int, live: bool | None = None, prefix: str = ""):
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal if live is None else live
        self.prefix = prefix
        self.epochs = epochs
        if self.live:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=self.console)
            self.study_task = self.progress.add_task("study", total=total, status="")
            self.trial_task = self.progress.add_task("trial", total=epochs, status="")

    def __enter__(self):
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.progress.stop()

    def log(self, text: str) -> None:
        if self.live:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            print(f"{self.prefix}{text}", file=sys.stderr, flush=True)

    def on_teacher_epoch(self, report) -> None:
        self.log(f"teacher epoch {report.epoch}/{report.epochs}: val {report.val_accuracy:.2%}")

    def on_epoch(self, number: int, report) -> None:
        status = f"loss {report.train_loss:.3f}  val {report.val_accuracy:.2%}"
        if self.live:
            self.progress.update(self.trial_task, description=f"trial {number}", completed=report.epoch,
                                 total=report.epochs, status=status)
        else:
            self.log(f"trial {number} epoch {report.epoch}/{report.epochs}: {status}")

    def on_trial(self, study, trial) -> None:
        trials = study.get_trials(deepcopy=False)
        counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                  TrialState.FAIL)}
        front = len(study.best_trials)
        status = (f"complete {counts[TrialState.COMPLETE]}  pruned {counts[TrialState.PRUNED]}  "
                  f"failed {counts[TrialState.FAIL]}  front {front}")
        if trial.state == TrialState.COMPLETE:
            objectives = Objectives.of_study(study)
            what = ", ".join(f"{m.name} {m.show(v)}" for m, v in zip(objectives, trial.values, strict=True))
        else:
            what = TrialRecord.of(trial).pruned_reason or trial.state.name.lower()
        worker = TrialRecord.of(trial).worker
        self.log(f"trial {trial.number} {trial.state.name.lower()}: {what}" + (f"  [{worker}]" if worker else ""))
        if self.live:
            self.progress.update(self.study_task, completed=counts[TrialState.COMPLETE] + counts[TrialState.PRUNED],
                                 status=status)
        else:
            self.log(f"study: {status}")


def run(args) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines say the same, shorter
    for flag, value in (("--workers", args.workers), ("--trials-per-gpu", args.trials_per_gpu)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be an integer >= 1, got {value}")
    use_threads_argument(args)
    loaded = load_study_file(args.study, args.storage, args.n_trials, args.timeout,  # a bad space stops here
                             data_path=args.data_path)
    cfg = loaded.config
    data = check_data(loaded)  # missing or unreadable data: one line, before the storage is touched
    study = open_study(loaded)  # bad storage, directions or space: one line here, before any worker starts
    print(f"study {cfg.name} in {mask(loaded.storage_url)}, artifacts in {args.artifacts or cfg.artifact_dir}",
          file=sys.stderr)
    start = time.perf_counter()
    if args.workers is None and args.trials_per_gpu is None:
        from search.study.runner import run_study  # heavy imports only once the arguments are good

        with StudyProgress(cfg.n_trials, cfg.train.epochs) as progress:
            with stop_on_sigterm():
                study = run_study(loaded, on_epoch=progress.on_epoch, on_trial=progress.on_trial,
                                  on_teacher_epoch=progress.on_teacher_epoch, study=study, on_event=progress.log,
                                  artifacts=args.artifacts, data=data)
        code = 0
    else:
        del data  # each worker loads its own
        code = run_workers(args, loaded, study)
    rows = front_rows(study)
    print_front(rows, f"Pareto front of {cfg.name} ({len(study.trials)} trials, {time.perf_counter() - start:.0f} s)",
                Objectives.of_study(study))
    return code


def check_data(loaded):
    """The study's dataset, loaded on the CPU: present, readable and big enough for its splits, or one line."""
    from search.training.data import load_data

    return load_data(loaded.config.data)


def run_workers(args, loaded, study) -> int:
    """K local worker processes; this one shows the study's progress from the storage and stops them on Ctrl-C."""
    from search.study.launcher import cpu_count, plan_workers, start_workers, stop_workers, visible_gpus, wait_workers
    from search.study.threads import fixed_threads

    cfg = loaded.config
    gpus = visible_gpus()
    per_gpu = args.trials_per_gpu or 1
    workers = args.workers or max(1, len(gpus)) * per_gpu
    plans = plan_workers(workers, gpus, cpu_count(), fixed_threads())
    extra = []
    for flag, value in (("--n-trials", args.n_trials), ("--timeout", args.timeout), ("--artifacts", args.artifacts),
                        ("--data-path", args.data_path)):
        if value is not None:
            extra += [flag, str(value)]
    log_dir = Path("studies") / "logs" / cfg.name
    where = ", ".join(f"GPU {p.gpu}" for p in plans) if gpus else f"CPU, {plans[0].threads} thread(s) each"
    print(f"starting {workers} workers ({where}); their logs: {log_dir}/worker-*.log", file=sys.stderr)
    seen: set[int] = set()
    with StudyProgress(cfg.n_trials, cfg.train.epochs) as progress:
        def poll():
            from search.study.outage import StorageUnreachable, without_waiting

            try:
                with without_waiting(loaded.storage_url):
                    for t in study.get_trials(deepcopy=False):
                        if t.state.is_finished() and t.number not in seen:
                            seen.add(t.number)
                            progress.on_trial(study, t)
            except StorageUnreachable:
                pass  # a database outage: the workers ride it out (storage_outage_s); show their trials when it ends

        for t in study.get_trials(deepcopy=False):  # finished before this run: not news
            if t.state.is_finished():
                seen.add(t.number)
        procs = start_workers(loaded.path, loaded.storage_url, plans, log_dir, extra)
        try:
            with stop_on_sigterm():
                wait_workers(procs, poll)
        except KeyboardInterrupt:
            progress.log("stopping the workers (each queues its running trial again) ...")
            stop_workers(procs)
            poll()
            raise
    failed = [w for w in procs if w.process.returncode != 0]
    for w in failed:
        print(f"worker {w.plan.index} exited with code {w.process.returncode}; see {w.log}", file=sys.stderr)
    return 1 if failed else 0


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
