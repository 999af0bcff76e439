"""``micronet-search bench``: the trial-throughput benchmarks (training images/s per architecture against the
classic loop, epoch time, concurrent trials per device, orchestration overhead, peak memory). Prints the table and
appends it to BENCHMARKS.md. Under 10 minutes on a 2-core CPU; ``--quick`` is a smoke run of a minute.

The other benchmarks are named: ``bench search``, ``bench recipe``, ``bench train`` (one architecture's throughput),
``bench profile`` (where a training step's time goes), ``bench workers`` (orchestration time per trial with more
workers), ``bench hand-workers`` (study throughput of hand-started workers) and ``bench stopper`` (Pareto-aware
early stopping against none)."""

from __future__ import annotations

import sys

from search.errors import ConfigError


def add_parser(commands) -> None:
    from search.candidate.recipe import PRECISIONS
    from search.space.params import add_arguments

    p = commands.add_parser("bench", help="measure trial throughput; append the table to BENCHMARKS.md",
                            description=__doc__)
    p.add_argument("what", nargs="?", choices=tuple(COMMANDS), default="throughput",
                   help="throughput (default): trial throughput; search: what a whole run delivers (held-out "
                        "accuracy at score 0.03 and 0.01, hypervolume, cost per stage) for today's study, the new "
                        "default, random sampling and a hand-trained ResNet20 on real images (about 110 min on 2 "
                        "cores; resumable); recipe: validation "
                        "accuracy of each training option on real images (about 100 min on 2 cores; resumable); "
                        "train: one architecture's training images/s against the classic loop (CPU); profile: "
                        "where the time of one CPU training step goes (prints only); workers: orchestration time "
                        "per trial with 1, 4 and 8 workers on PostgreSQL and SQLite; hand-workers: study throughput "
                        "of 1, 2 and 4 hand-started workers, fair thread share against torch's default (120 s "
                        "each); stopper: epochs and hypervolume of a study with and without the Pareto stopper")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that every benchmark runs")
    p.add_argument("--seeds", type=int, help="search, recipe: seeds per arm or recipe (default 3)")
    p.add_argument("--budget", type=float, help="search: seconds per run, its timeout (default 900)")
    p.add_argument("--parallel", type=int, help="search, recipe: runs at a time, one core each (default 2)")
    p.add_argument("--arms", help="search: comma-separated arms to run (default: today,new-default,random-final,hand;"
                                  " also one-long-base)")
    p.add_argument("--study", help="search: the study whose arms run (default studies/cifar10-dev.yaml); recipe: "
                                   "whose data and train config are used (default studies/cifar10-dev-scratch.yaml); "
                                   "stopper: the study both arms run (default "
                                   "studies/quickstart-scratch.yaml)")
    p.add_argument("--data-path", help="search, recipe: the .npz file (default: the study file's)")
    p.add_argument("--work", help="search, recipe: folder for the runs' records (default studies/bench-search"
                                  "[-quick] or studies/bench-recipe[-quick]); runs recorded there are not run again")
    p.add_argument("--device", help="throughput, search, recipe: cpu or cuda (default: cuda when available)")
    add_arguments(p, "bench", defaults=True)  # --arch, --batch-size (train, profile), from the parameter table
    p.set_defaults(batch_size=128)  # the benchmarks' batch, not the study's
    p.add_argument("--steps", type=int, help="train, profile: timed training steps (default 12; profile 20)")
    p.add_argument("--loader-workers", type=int, default=2,
                   help="train: DataLoader workers of the classic loop (default 2)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="train: both loops; profile: as the trainer's (default auto: bf16 autocast + channels_last "
                        "where native)")
    p.add_argument("--compressed", action="store_true", help="profile: the model at ps 0.5, qw 8, qa 8 (fake "
                                                             "quantization live), as the benchmark's compressed rows")
    p.add_argument("--workers", type=int, nargs="+",
                   help="workers: worker counts (default 1 4 8); hand-workers: worker counts (default 1 2 4)")
    p.add_argument("--trials-per-worker", type=int, default=4,
                   help="workers: trials per worker, at least 8 in all (default 4)")
    p.add_argument("--storages", nargs="+", default=["postgresql", "sqlite"], choices=["postgresql", "sqlite"],
                   help="workers: PostgreSQL at 127.0.0.1:5432 (a fresh database each) and/or SQLite (default both)")
    p.add_argument("--sampler", default="tpe", help="workers: the study's sampler (default tpe)")
    p.add_argument("--seconds", type=float, default=120.0, help="hand-workers: wall time per configuration "
                                                                "(default 120)")
    p.add_argument("--n-trials", type=int, default=24, help="stopper: trials per arm (default 24)")
    p.add_argument("--seed", type=int, default=1, help="stopper: the random sampler's seed in both arms (default 1)")
    p.add_argument("--out", default="BENCHMARKS.md", help="file to append the table to (default BENCHMARKS.md)")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.set_defaults(handler=run)


def run(args) -> int:
    return COMMANDS[args.what](args)


def command_line() -> str:
    """The command as BENCHMARKS.md records it."""
    return "micronet-search bench" + "".join(f" {a}" for a in sys.argv[2:])


def write(args, text: str, say=None, note: str = "") -> None:
    """Append ``text`` to ``--out`` (unless ``--no-write``) and say so on stderr."""
    if args.no_write:
        return

    from search.bench.table import append

    append(args.out, text)
    (say or (lambda line: print(line, file=sys.stderr)))(f"appended to {args.out}{note}")


def at_least(args, name: str, low: int = 1) -> None:
    value = getattr(args, name.lstrip("-").replace("-", "_"))
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v is not None and v < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {v}")


def run_throughput(args) -> int:
    import time

    import torch

    from search.bench.suite import FULL, QUICK, run_suite
    from search.bench.table import machine, markdown, print_table
    from search.training.device import pick_device

    device = pick_device(args.device or "auto")
    start = time.perf_counter()
    rows = run_suite(QUICK if args.quick else FULL, str(device),
                     say=lambda text: print(f"bench: {text}", file=sys.stderr, flush=True))
    minutes = (time.perf_counter() - start) / 60
    title = "Trial throughput" + (" (quick sizes)" if args.quick else "")
    print_table(f"{title}: {machine(device)}", rows)
    print(f"{minutes:.1f} min", file=sys.stderr)
    write(args, markdown(title, rows, machine(device), command_line(),
                         f"The whole run took {minutes:.1f} min ({torch.get_num_threads()} threads)."))
    return 0


def run_search(args) -> int:
    import dataclasses
    import time
    from pathlib import Path

    from search.bench import search as bench
    from search.bench.table import machine
    from search.errors import ConfigError
    from search.study.study_file import load_study_file
    from search.training.device import pick_device

    say = say_as("search")
    plan = bench.QUICK if args.quick else bench.Plan()
    changes = {k: v for k, v in {"study": args.study, "budget_s": args.budget, "parallel": args.parallel}.items()
               if v is not None}
    if args.seeds is not None:
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be an integer >= 1, got {args.seeds}")
        changes["seeds"] = tuple(range(args.seeds))
    if args.budget is not None and args.budget <= 0:
        raise ConfigError(f"--budget must be a number of seconds > 0, got {args.budget}")
    if args.parallel is not None and args.parallel < 1:
        raise ConfigError(f"--parallel must be an integer >= 1, got {args.parallel}")
    plan = dataclasses.replace(plan, **changes)
    arms = bench.ARMS
    if args.arms:
        names = args.arms.split(",")
        known = bench.ARMS + bench.EXTRA_ARMS
        unknown = [n for n in names if n not in {a.name for a in known}]
        if unknown:
            raise ConfigError(f"unknown arm {unknown[0]!r}; the arms are {', '.join(a.name for a in known)}")
        arms = tuple(next(a for a in known if a.name == n) for n in dict.fromkeys(names))
    for study in dict.fromkeys(a.study or plan.study for a in arms if not a.hand):
        loaded = load_study_file(study, data_path=args.data_path)  # a bad study file: one line, before any run
        if plan.quick_data is None:
            from search.study.session import check_data

            check_data(loaded)  # the npz must be there
    work = Path(args.work or ("studies/bench-search-quick" if args.quick else "studies/bench-search")).resolve()
    start = time.perf_counter()
    records = bench.run_all(plan, arms, work, args.data_path, say)
    rows = bench.summarize(records, arms)
    minutes = (time.perf_counter() - start) / 60
    text = bench.markdown(rows, plan, arms, machine(pick_device("cpu")), command_line(), minutes)
    print(text)
    write(args, "\n" + text, say, "")
    return 0


def run_recipe(args) -> int:
    import dataclasses
    import time
    from pathlib import Path

    from search.bench import recipe as bench
    from search.bench.table import machine
    from search.errors import ConfigError
    from search.study.study_file import load_study_file
    from search.training.device import pick_device

    say = say_as("recipe")
    plan = bench.QUICK if args.quick else bench.Plan()
    changes = {k: v for k, v in {"study": args.study, "parallel": args.parallel}.items() if v is not None}
    if args.seeds is not None:
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be an integer >= 1, got {args.seeds}")
        changes["seeds"] = tuple(range(args.seeds))
    if args.parallel is not None and args.parallel < 1:
        raise ConfigError(f"--parallel must be an integer >= 1, got {args.parallel}")
    plan = dataclasses.replace(plan, **changes)
    loaded = load_study_file(plan.study, data_path=args.data_path)  # a bad study file: one line, before any run
    if plan.quick_data is None:
        from search.study.session import check_data

        check_data(loaded)  # the npz must be there
    work = Path(args.work or ("studies/bench-recipe-quick" if args.quick else "studies/bench-recipe")).resolve()
    start = time.perf_counter()
    records, recipes, best, speeds = bench.run(plan, work, args.data_path, say)
    rows = bench.summarize(records, recipes, speeds)
    text = bench.markdown(rows, plan, machine(pick_device("cpu")), command_line(), (time.perf_counter() - start) / 60,
                          best, records)
    print(text)
    write(args, "\n" + text, say)
    return 0


def say_as(name: str):
    def say(text: str) -> None:
        print(f"bench {name}: {text}", file=sys.stderr, flush=True)

    return say


def run_train(args) -> int:
    for name in ("--steps", "--batch-size"):
        at_least(args, name)
    at_least(args, "--loader-workers", 0)
    from search.bench.table import machine, markdown, print_table
    from search.bench.train import STEPS, train_rows

    rows = train_rows(args.arch, args.steps or STEPS, args.batch_size, args.loader_workers, args.precision)
    print_table(f"{args.arch} training throughput", rows)
    write(args, markdown(f"Training throughput: {args.arch}", rows, machine(), command_line()))
    return 0


def run_profile(args) -> int:
    for name in ("--steps", "--batch-size"):
        at_least(args, name)
    from search.bench.profile import STEPS, profile_step

    print(profile_step(args.arch, args.steps or STEPS, args.batch_size, args.precision, args.compressed).render())
    return 0


def run_workers(args) -> int:
    for name in ("--workers", "--trials-per-worker"):
        at_least(args, name)
    from search.bench import worker_overhead as bench

    rows = bench.run(tuple(args.workers or bench.WORKERS), args.trials_per_worker, tuple(args.storages), args.sampler,
                     say_as("workers"))
    bench.print_table(rows)
    write(args, bench.markdown(rows, args.sampler, command_line()))
    return 0


def run_hand_workers(args) -> int:
    at_least(args, "--workers")
    if args.seconds <= 0:
        raise ConfigError(f"--seconds must be a number of seconds > 0, got {args.seconds}")
    from search.bench import hand_workers as bench

    rows = bench.run(tuple(args.workers or bench.WORKERS), args.seconds, say_as("hand-workers"))
    bench.print_table(rows, args.seconds)
    write(args, bench.markdown(rows, args.seconds, command_line()))
    return 0


def run_stopper(args) -> int:
    at_least(args, "--n-trials")
    from search.bench import early_stopping as bench
    from search.study.study_file import load_study_file

    study = args.study or bench.STUDY
    load_study_file(study)  # a bad study file: one line, before any run
    result = bench.compare(study, args.n_trials, args.seed)
    bench.print_table(result)
    write(args, bench.markdown(result, command_line()))
    return 0


COMMANDS = {"throughput": run_throughput, "search": run_search, "recipe": run_recipe, "train": run_train,
            "profile": run_profile, "workers": run_workers, "hand-workers": run_hand_workers, "stopper": run_stopper}
