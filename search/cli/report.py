"""``micronet-search report``: one page about a study (the front, how it grew, learning curves, what matters,
what stopping saved, what failed), as self-contained HTML or as Markdown. Works on a running study too."""

from __future__ import annotations

import sys

from search.study.final import load_stage
from search.study.storage import ENV_STORAGE


def add_parser(commands) -> None:
    p = commands.add_parser("report", help="write a readable report of a study (HTML or Markdown)",
                            description=__doc__)
    p.add_argument("--storage", help=f"storage URL (or set {ENV_STORAGE})")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--stage", choices=("final", "search"), default="final",
                   help="final (default): the final stage's front once it has a complete trial; search: the search "
                        "stage's")
    p.add_argument("--out", help="file to write (default: REPORT-<study>.html or .md); '-' prints to stdout")
    p.add_argument("--format", choices=("html", "md"), help="html (default, or from --out's suffix) or md")
    p.set_defaults(handler=run)


def run(args) -> int:
    from search.results import report

    fmt = args.format or ("md" if args.out and args.out.endswith(".md") else "html")
    out = args.out or f"REPORT-{args.study}.{fmt}"
    report.check_out(out)
    study = load_stage(args.storage, args.study, args.stage)
    built = report.build(study)
    text = report.to_html(built) if fmt == "html" else report.to_markdown(built)
    if out == "-":
        sys.stdout.write(text)
        return 0
    report.write(text, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0
