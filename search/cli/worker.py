"""``micronet-search worker STUDY.yaml``: join a study as one worker; run trials until the storage holds
``n_trials`` finished trials (all workers together) or the timeout passes. Start as many as you like, on as many
machines as can reach the storage; set the storage with ``MICRONET_STORAGE`` to keep its password out of ``ps``."""

from __future__ import annotations

import sys

from search.cli.common import StudyProgress, add_data_path_argument, add_threads_argument, use_threads_argument
from search.study.session import check_data, stop_on_sigterm
from search.study.storage import mask
from search.study.study_file import load_study_file, open_study


def add_parser(commands) -> None:
    p = commands.add_parser("worker", help="join a study as one worker (many machines, one storage)",
                            description=__doc__)
    p.add_argument("study", help="study file, e.g. studies/cifar10.yaml")
    p.add_argument("--storage", help="storage URL (default: MICRONET_STORAGE, then the study file's)")
    p.add_argument("--n-trials", type=int, help="finished trials the study should hold (all workers together)")
    p.add_argument("--timeout", type=float, help="this worker starts no trial after this many seconds")
    p.add_argument("--artifacts", metavar="DIR",
                   help="artifact folder (default: the study file's); shared by all workers of the study")
    add_data_path_argument(p)
    add_threads_argument(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    import optuna

    from search.study.runner import finished_count, run_study, worker_name

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    use_threads_argument(args)
    loaded = load_study_file(args.study, args.storage, args.n_trials, args.timeout, data_path=args.data_path,
                             artifacts=args.artifacts)
    cfg = loaded.config
    name = worker_name()
    data = check_data(loaded)  # missing or unreadable data: one line, before the storage is touched
    study = open_study(loaded)
    print(f"[{name}] worker on study {cfg.name} in {mask(loaded.storage_url)}", file=sys.stderr, flush=True)
    with StudyProgress(cfg.n_trials, cfg.train.epochs, live=False, prefix=f"[{name}] ") as progress:
        with stop_on_sigterm():
            study = run_study(loaded, on_epoch=progress.on_epoch, on_trial=progress.on_trial,
                              on_teacher_epoch=progress.on_teacher_epoch, study=study, on_event=progress.log,
                              artifacts=args.artifacts, data=data)
    print(f"[{name}] done: the study holds {finished_count(study)} finished trials", file=sys.stderr, flush=True)
    return 0
