"""``micronet-search score``: parameters, MACs and score of an architecture under a compression setting."""

from __future__ import annotations

import copy
import json

from rich.console import Console
from rich.table import Table

from search.candidate import micronet2019
from search.candidate.score import ScoreReference, score_model
from search.compress.compression import Compression
from search.errors import ConfigError
from search.models import build_model
from search.space.params import add_arguments, flags


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--blocks takes layer counts separated by commas, e.g. 16,16,16; got {text!r}") from None


def add_parser(commands) -> None:
    p = commands.add_parser("score", help="count parameters and MACs of an architecture and compute its score",
                            description=__doc__)
    # the search parameters' flags come from their table (search.space.params), with the candidate's defaults
    add_arguments(p, "score", defaults=True, required=("arch",))
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--reference-params", type=float, default=ScoreReference.params,
                   help="reference parameter count (default 5.6e6)")
    p.add_argument("--reference-macs", type=float, default=ScoreReference.macs,
                   help="reference MAC count (default 2.8e8)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(handler=run)


def run(args) -> int:
    # Validate the cheap settings before building a model.
    given = {p: getattr(args, p.name) for p in flags("score") if getattr(args, p.name) is not None}
    compression = Compression(**{p.key: v for p, v in given.items() if p.place == "compression"})
    reference = ScoreReference(params=args.reference_params, macs=args.reference_macs)
    model_kwargs = {"num_classes": args.num_classes, **{
        p.key: _int_list(v) if p.name == "blocks" else v for p, v in given.items()
        if p.place in ("candidate", "arch_options") and p.key != "arch"}}
    model = build_model(args.arch, **model_kwargs)
    challenge = micronet2019.count_candidate(copy.deepcopy(model), compression)
    scored = score_model(model, compression, reference)
    if args.json:
        print(json.dumps({"arch": args.arch, "groups": args.groups, "depthwise": args.depthwise,
                          "width": args.width, **scored.as_dict(),
                          "micronet2019": {"params": challenge.params, "mults": challenge.mults,
                                           "adds": challenge.adds, "score": challenge.score}}))
        return 0
    _print_table(args, scored, challenge)
    return 0


def _print_table(args, scored, challenge: micronet2019.Counts) -> None:
    c = scored.compression
    console = Console()
    console.print(f"[bold]{args.arch}[/]  groups={args.groups}  depthwise={'yes' if args.depthwise else 'no'}  "
                  f"width={args.width:g}  |  ps={c.ps:g}  pu={c.pu:g}  qw={c.qw}  qa={c.qa}")
    table = Table()
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{scored.params:,}")
    table.add_row("non-zero parameters", f"{scored.nonzero_params:,}")
    table.add_row("MACs", f"{scored.macs:,}")
    table.add_row("parameter term", f"{scored.score.param_term:.6f}")
    table.add_row("MAC term", f"{scored.score.macs_term:.6f}")
    table.add_row("score", f"{scored.score.total:.6f}", style="bold")
    table.add_section()
    table.add_row("MicroNet 2019: storage (32-bit parameters)", f"{challenge.params:,.0f}")
    table.add_row("MicroNet 2019: operations (32-bit)", f"{challenge.ops:,.0f}")
    table.add_row("MicroNet 2019 score (/ 36.5 M, / 10.49 B)", f"{challenge.score:.6f}", style="bold")
    console.print(table)
