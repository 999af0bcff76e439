"""``micronet-search front``: the Pareto front of a study as a table, as JSON, or as a plot."""

from __future__ import annotations

import json

from optuna import load_study
from rich.console import Console
from rich.table import Table

from search.space.params import columns
from search.study import final
from search.study.final import load_stage
from search.study.storage import ENV_STORAGE


def add_parser(commands) -> None:
    p = commands.add_parser("front", help="show a study's Pareto front", description=__doc__)
    p.add_argument("--storage", help=f"storage URL (or set {ENV_STORAGE})")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--stage", choices=("final", "search"), default="final",
                   help="final (default): the final stage's front once it has a complete trial; search: the search "
                        "stage's")
    p.add_argument("--json", action="store_true", help="print the front as a JSON list")
    p.add_argument("--plot", metavar="FILE", help="write all trials with the front highlighted (.png or .html)")
    p.add_argument("--min-accuracy", type=float, help="only front members with at least this accuracy")
    p.add_argument("--mixed-hardware", action="store_true",
                   help="accept latencies measured on different hardware in one front")
    p.set_defaults(handler=run)


def run(args) -> int:
    from search.results.front import front_rows, plot
    from search.trial.objectives import Objectives

    study = load_stage(args.storage, args.study, args.stage)
    if args.plot:
        path = plot(study, args.plot, args.mixed_hardware)
        print(f"wrote {path}")
    rows = front_rows(study, args.min_accuracy, args.mixed_hardware)
    if args.json:
        print(json.dumps(rows))
    elif not args.plot:
        print_front(rows, f"{stage_title(study)} of {study.study_name}", Objectives.of_study(study), empty=None)
        if not rows:
            print(why_empty(study, args.min_accuracy))
        print_costs(study)
    return 0


def why_empty(study, min_accuracy: float | None) -> str:
    """Why a front shows no member: no completed trial, none above the accuracy floor, or none above --min-accuracy;
    with the best accuracy reached."""
    from optuna.trial import TrialState

    from search.trial.objectives import Objectives

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return "no completed trial yet"
    objectives = Objectives.of_study(study)
    best = max(done, key=lambda t: (objectives.accuracy(t), -t.number))
    reached = f"the best accuracy reached is {objectives.accuracy(best):.4f} (trial {best.number})"
    floor = (study.user_attrs.get("micronet_config") or {}).get("accuracy_floor")
    if min_accuracy is None and floor is not None:
        return f"none of the {len(done)} completed trials meets the accuracy floor {floor:g}; {reached}"
    return f"no front member has accuracy >= {min_accuracy:g}; {reached}"


def stage_title(study) -> str:
    return "Final front" if study.study_name.endswith(final.SUFFIX) else "Pareto front"


def print_costs(study) -> None:
    """One line: what the bases, the search and the final stage cost (studies with bases or a final stage)."""
    from search import optuna_compat as compat
    from search.results.front import describe_costs, stage_costs

    name = study.study_name
    if name.endswith(final.SUFFIX):
        search = load_study(study_name=name[:-len(final.SUFFIX)], storage=compat.storage_of(study))
        costs = stage_costs(search, study)
    else:
        costs = stage_costs(study, final.final_study(compat.storage_of(study), name))
    if costs["bases"] or "final_trials" in costs:
        print(describe_costs(costs))


# the objectives' columns: short titles and formats (others: the metric name and the objective's own format)
COLUMNS = {"accuracy": ("val acc", ".2%"), "score": ("score", ".4f"), "micronet2019": ("mn2019", ".4f"),
           "latency": ("ms", ".3f")}


def print_front(rows: list[dict], title: str, objectives=None, empty: str | None = "no completed trial yet") -> None:
    from search.trial.objectives import Objectives

    objectives = objectives or Objectives.parse(None)
    table = Table(title=title)
    shown = [(m.metric_name, *COLUMNS.get(m.name, (m.metric_name, m.fmt))) for m in objectives]
    params = columns()  # the search parameters' columns (search.space.params)
    for col in ("trial", *(title for _, title, _ in shown), "measured", *(p.column[0] for p in params), "params",
                "MACs", "epochs", "time s", "base"):
        table.add_column(col, justify="left" if col == "arch" else "right")
    for r in rows:
        table.add_row(
            str(r["trial"]), *(_f(r[key], fmt) for key, _, fmt in shown), _f(r["measured_score"], ".4f"),
            *(_param(r[p.name], p.column[1]) for p in params),
            _f(r["params"], ","), _f(r["macs"], ","), _f(r["epochs_run"], "d"), _f(r["wall_s"], ".0f"),
            _base(r),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a file or pipe: don't squeeze the columns into 80
    console.print(table)
    if not rows and empty:
        print(empty)


def _base(r: dict) -> str:
    """The base a member started from: whether this trial trained it or loaded it, and its accuracy (base:)."""
    how = {True: "reused", False: "trained"}.get(r["base_reused"], "-")
    return how if r.get("base_val_accuracy") is None else f"{how} {r['base_val_accuracy']:.1%}"


def _param(value, fmt: str) -> str:
    if fmt == "yes/no":
        return "-" if value is None else ("yes" if value else "no")
    return "-" if value is None else format(value, fmt) if fmt else str(value)


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)
