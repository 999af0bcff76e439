"""The ``micronet-search`` command. Thin: parse, call the library, render.

Each subcommand is a module with ``add_parser(subparsers)`` that sets ``handler`` on its parser.
"""

from __future__ import annotations

import argparse
import sys

from search import __version__
from search.errors import MicronetError

PROG = "micronet-search"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error convention: one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> ArgumentParser:
    from search.cli import bench, dashboard, ensemble, export, front, gc, report, run, score, teacher, train, worker

    parser = ArgumentParser(prog=PROG, description="Find small, accurate image classifiers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    score.add_parser(commands)
    train.add_parser(commands)
    teacher.add_parser(commands)
    run.add_parser(commands)
    worker.add_parser(commands)
    front.add_parser(commands)
    report.add_parser(commands)
    dashboard.add_parser(commands)
    export.add_parser(commands)
    ensemble.add_parser(commands)
    gc.add_parser(commands)
    bench.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except MicronetError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BaseException as e:
        from search.study.outage import EXIT_CODE, find_outage

        outage = find_outage(e)  # the storage stayed away too long (search.study.outage); maybe behind Optuna's errors
        if outage is None:
            raise
        print(f"{PROG}: error: {outage}", file=sys.stderr)
        return EXIT_CODE
