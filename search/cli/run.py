"""``micronet-search run STUDY.yaml``: create or resume a study and run trials; print the Pareto front at the end."""

from __future__ import annotations

import sys
import time

from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from search.cli.front import print_front
from search.front import front_rows
from search.storage import mask
from search.study import load_study_file, open_study


def add_parser(commands) -> None:
    p = commands.add_parser("run", help="run (or resume) a study", description=__doc__)
    p.add_argument("study", help="study file, e.g. studies/quickstart.yaml")
    p.add_argument("--storage", help="storage URL (default: the study file's, or sqlite:///studies/NAME.db); "
                                     "MICRONET_STORAGE also sets it")
    p.add_argument("--n-trials", type=int, help="finished trials the study should hold (all runs together)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.set_defaults(handler=run)


class StudyProgress:
    """A study bar (complete / pruned / failed / front size) and an epoch bar for the running trial on a
    terminal; one plain line per event otherwise."""

    def __init__(self, total: int | None, epochs: int):
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
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
            self.progress.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

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
            what = f"accuracy {trial.values[0]:.2%}, score {trial.values[1]:.4g}"
        else:
            what = trial.user_attrs.get("pruned_reason", trial.state.name.lower())
        self.log(f"trial {trial.number} {trial.state.name.lower()}: {what}")
        if self.live:
            self.progress.update(self.study_task, completed=counts[TrialState.COMPLETE] + counts[TrialState.PRUNED],
                                 status=status)
        else:
            self.log(f"study: {status}")


def run(args) -> int:
    import optuna

    from search.runner import run_study  # heavy imports only once the arguments are good

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines say the same, shorter

    loaded = load_study_file(args.study, args.storage, args.n_trials, args.timeout)
    cfg = loaded.config
    study = open_study(loaded)
    print(f"study {cfg.name} in {mask(loaded.storage_url)}, artifacts in {cfg.artifact_dir}", file=sys.stderr)
    start = time.perf_counter()
    with StudyProgress(cfg.n_trials, cfg.train.epochs) as progress:
        study = run_study(loaded, on_epoch=progress.on_epoch, on_trial=progress.on_trial,
                          on_teacher_epoch=progress.on_teacher_epoch, study=study)
    rows = front_rows(study)
    print_front(rows, f"Pareto front of {cfg.name} ({len(study.trials)} trials, {time.perf_counter() - start:.0f} s)")
    return 0
