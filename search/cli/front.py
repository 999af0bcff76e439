"""``micronet-search front``: the Pareto front of a study as a table, as JSON, or as a plot."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from search.space.params import columns
from search.study.storage import ENV_STORAGE, load_existing_study


def add_parser(commands) -> None:
    p = commands.add_parser("front", help="show a study's Pareto front", description=__doc__)
    p.add_argument("--storage", help=f"storage URL (or set {ENV_STORAGE})")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--json", action="store_true", help="print the front as a JSON list")
    p.add_argument("--plot", metavar="FILE", help="write all trials with the front highlighted (.png or .html)")
    p.add_argument("--min-accuracy", type=float, help="only front members with at least this accuracy")
    p.add_argument("--mixed-hardware", action="store_true",
                   help="accept latencies measured on different hardware in one front")
    p.set_defaults(handler=run)


def run(args) -> int:
    from search.results.front import front_rows, plot
    from search.trial.objectives import Objectives

    study = load_existing_study(args.storage, args.study)
    if args.plot:
        path = plot(study, args.plot, args.mixed_hardware)
        print(f"wrote {path}")
    rows = front_rows(study, args.min_accuracy, args.mixed_hardware)
    if args.json:
        print(json.dumps(rows))
    elif not args.plot:
        print_front(rows, f"Pareto front of {args.study}", Objectives.of_study(study))
    return 0


# the objectives' columns: short titles and formats (others: the metric name and the objective's own format)
COLUMNS = {"accuracy": ("val acc", ".2%"), "score": ("score", ".4f"), "micronet2019": ("mn2019", ".4f"),
           "latency": ("ms", ".3f")}


def print_front(rows: list[dict], title: str, objectives=None) -> None:
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
            {True: "reused", False: "trained"}.get(r["base_reused"], "-"),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a file or pipe: don't squeeze the columns into 80
    console.print(table)
    if not rows:
        print("no completed trial yet")


def _param(value, fmt: str) -> str:
    if fmt == "yes/no":
        return "-" if value is None else ("yes" if value else "no")
    return "-" if value is None else format(value, fmt) if fmt else str(value)


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)
