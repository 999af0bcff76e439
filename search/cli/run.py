"""``micronet-search run STUDY.yaml [--workers K]``: create or resume a study and run trials, in this process or in K
local worker processes; print the Pareto front at the end."""

from __future__ import annotations

import sys
import time

from search.cli.common import StudyProgress, add_data_path_argument, add_threads_argument, use_threads_argument
from search.cli.front import print_costs, print_front, stage_title
from search.errors import ConfigError
from search.results.front import front_rows
from search.study.session import check_data, stop_on_sigterm
from search.study.storage import mask
from search.study.study_file import load_study_file, open_study
from search.trial.objectives import Objectives


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


def run(args) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines say the same, shorter
    for flag, value in (("--workers", args.workers), ("--trials-per-gpu", args.trials_per_gpu)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be an integer >= 1, got {value}")
    use_threads_argument(args)
    loaded = load_study_file(args.study, args.storage, args.n_trials, args.timeout,  # a bad space stops here
                             data_path=args.data_path, artifacts=args.artifacts)
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
    from search import optuna_compat as compat
    from search.study.final import final_study

    shown = (final_study(compat.storage_of(study), cfg.name) if cfg.final is not None else None) or study
    print_front(front_rows(shown), f"{stage_title(shown)} of {cfg.name} ({len(study.trials)} trials"
                f"{'' if shown is study else f' + {len(shown.trials)} final'}, {time.perf_counter() - start:.0f} s)",
                Objectives.of_study(shown))
    print_costs(shown)
    return code


def run_workers(args, loaded, study) -> int:
    """K local worker processes; this one shows the study's progress from the storage and stops them on Ctrl-C."""
    from search.study.session import plan_local_workers, run_local_workers, worker_log_dir

    cfg = loaded.config
    plans = plan_local_workers(args.workers, args.trials_per_gpu)
    extra = []
    for flag, value in (("--n-trials", args.n_trials), ("--timeout", args.timeout), ("--artifacts", args.artifacts),
                        ("--data-path", args.data_path)):
        if value is not None:
            extra += [flag, str(value)]
    gpus = any(p.gpu is not None for p in plans)
    where = ", ".join(f"GPU {p.gpu}" for p in plans) if gpus else f"CPU, {plans[0].threads} thread(s) each"
    print(f"starting {len(plans)} workers ({where}); their logs: {worker_log_dir(cfg.name)}/worker-*.log",
          file=sys.stderr)
    with StudyProgress(cfg.n_trials, cfg.train.epochs) as progress:
        failed = run_local_workers(
            loaded, study, plans, extra, on_trial=progress.on_trial,
            on_stop=lambda: progress.log("stopping the workers (each queues its running trial again) ..."))
    for w in failed:
        print(f"worker {w.plan.index} exited with code {w.process.returncode}; see {w.log}", file=sys.stderr)
    return 1 if failed else 0
