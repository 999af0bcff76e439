"""``micronet-search ensemble``: a majority vote of trained trials, exported like ``export``.

Each member predicts independently; the ensemble outputs scores whose argmax is the majority vote, ties broken by
the members' summed softmax probabilities (seed 000's ensemble). The card gives the ensemble's score by seed 000's
convention, the sum of the members' scores, and the vote's test accuracy measured now.
"""

from __future__ import annotations

import argparse

from search.cli.export import add_common_arguments, choose_and_export


def add_parser(commands) -> None:
    p = commands.add_parser("ensemble", help="export a majority-vote ensemble of trials", description=__doc__)
    add_common_arguments(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trials", type=trial_list, metavar="N,N,...", help="these trials, e.g. 3,7,9")
    which.add_argument("--top-k", type=int, metavar="K", help="the K front members with the best validation accuracy")
    p.set_defaults(handler=run)


def trial_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected trial numbers like 3,7,9, got {text!r}") from None


def run(args) -> int:
    from search.export import export_ensemble, select_members

    return choose_and_export(
        args, lambda study: select_members(study, trials=args.trials, top_k=args.top_k), export_ensemble,
        lambda members: f"ensemble of trials {', '.join(str(t.number) for t in members)} of {args.study}")
