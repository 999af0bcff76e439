"""``micronet-search export``: one trained trial as TorchScript, ONNX and a state dict, with a model card.

The trial is chosen by number (``--trial``), as the cheapest front member with enough validation accuracy
(``--min-accuracy``) or as the front's knee (``--knee``). Its test accuracy is measured now, on the dataset's test
split. ``--verify`` reloads every written file and checks it against the card before the folder is put in place.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from search.study.final import load_stage
from search.study.storage import ENV_STORAGE

FORMAT_HELP = "comma-separated: torchscript, onnx, state_dict (default: all three)"


def add_parser(commands) -> None:
    p = commands.add_parser("export", help="export one trial's model with a model card", description=__doc__)
    add_common_arguments(p)
    # one of --trial, --knee or the bounds (--min-accuracy, --max-score, --max-latency-ms); select_trial checks
    p.add_argument("--trial", type=int, metavar="N", help="this trial (complete, with a checkpoint)")
    p.add_argument("--min-accuracy", type=float, metavar="A",
                   help="the lowest-score front member with validation accuracy >= A (and latency <= "
                        "--max-latency-ms if given)")
    p.add_argument("--max-score", type=float, metavar="S",
                   help="the most accurate front member with score <= S (with --min-accuracy: the lowest-score one "
                        "that has both)")
    p.add_argument("--max-latency-ms", type=float, metavar="L",
                   help="studies that measure latency: a front member with latency <= L ms (alone: the most "
                        "accurate such member)")
    p.add_argument("--knee", action="store_true",
                   help="the front's knee: farthest from the line between the extreme members, objectives "
                        "normalized over the front (1-2 members: the most accuracy per unit of score; 3 or more "
                        "objectives: nearest the ideal point)")
    p.add_argument("--mixed-hardware", action="store_true",
                   help="accept latencies measured on different hardware in one front")
    p.set_defaults(handler=run)


def add_common_arguments(p) -> None:
    p.add_argument("--storage", help=f"storage URL (or set {ENV_STORAGE})")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--stage", choices=("final", "search"), default="final",
                   help="final (default): the final stage's front once it has a complete trial; search: the search "
                        "stage's")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty; written atomically)")
    p.add_argument("--format", default="torchscript,onnx,state_dict", help=FORMAT_HELP)
    p.add_argument("--verify", action="store_true",
                   help="reload every written file and re-check it on the test split (accuracy within 0.5 %%, "
                        "ONNX outputs within 1e-3 of torch's)")
    p.add_argument("--force", action="store_true", help="replace DIR if it holds an earlier export")
    p.add_argument("--data-path", help="where the study's dataset is on this machine, if not where it was trained")


def run(args) -> int:
    from search.export import export_model, select_trial

    return choose_and_export(
        args, lambda study: select_trial(study, trial=args.trial, min_accuracy=args.min_accuracy, knee=args.knee,
                                         max_latency_ms=args.max_latency_ms, mixed_hardware=args.mixed_hardware,
                                         max_score=args.max_score),
        export_model, lambda trial: f"exported trial {trial.number} of {args.study}")


def choose_and_export(args, choose, export, title) -> int:
    """What ``export`` and ``ensemble`` share: open the study, ``choose`` what to export from it, ``export`` it with
    the common flags, print the summary titled ``title(chosen)``; a failed verification is exit 1."""
    from search.export import VerificationError, parse_formats

    formats = parse_formats(args.format)
    study = load_stage(args.storage, args.study, args.stage)
    chosen = choose(study)
    try:
        result = export(study, chosen, args.out, formats, force=args.force, verify_export=args.verify,
                        data_path=args.data_path)
    except VerificationError as e:
        print(f"micronet-search: {e}", file=sys.stderr)
        return 1
    print_summary(result, title(chosen))
    return 0


def print_summary(result, title: str) -> None:
    card = result.card
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    if card["kind"] == "ensemble":
        table.add_row("members", ", ".join(f"trial {m['trial']}" for m in card["members"]))
        table.add_row("score", f"{card['score']:.4f} (sum of the members')")
        table.add_row("val accuracy (vote)", f"{card['val_accuracy']:.2%}")
    else:
        c = card["candidate"]
        table.add_row("model", f"{c['arch']} width {c['width']:g}, ps {card['pruning']['ps']:.2f}, "
                               f"pu {card['pruning']['pu']:.2f}, qw {card['bits']['qw']}, qa {card['bits']['qa']}")
        table.add_row("score", f"{card['score']:.4f} (measured {_f(card['measured_score'], '.4f')})")
        table.add_row("nonzero params", _f(card["complexity"]["exported_nonzero_params"], ","))
        table.add_row("val accuracy", f"{card['val_accuracy']:.2%} (study)")
    table.add_row("test accuracy", f"{card['test_accuracy']:.2%} on {card['test_images']:,} images")
    table.add_row("files", ", ".join(card["files"].values()))
    report = result.verify
    if report is not None:
        checks = ", ".join(f"{name} {acc:.2%}" for name, acc in report.accuracy.items())
        table.add_row("verified", checks)
        if report.onnx_max_abs_diff is not None:
            bound = "" if report.onnx_tolerance is None else f" (≤ {report.onnx_tolerance:.2g})"
            table.add_row("ONNX vs torch", f"max |Δ| {report.onnx_max_abs_diff:.2g}{bound}, median "
                                           f"{report.onnx_median_abs_diff:.2g} (≤ {report.onnx_median_tolerance:.2g}), "
                                           f"same class {report.onnx_top1_agreement:.2%} ({report.onnx_rule})")
    table.add_row("folder", str(result.out))
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)
