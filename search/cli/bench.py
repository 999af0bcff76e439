"""``micronet-search bench``: the trial-throughput benchmarks (training images/s per architecture against the
classic loop, epoch time, concurrent trials per device, orchestration overhead, peak memory). Prints the table and
appends it to BENCHMARKS.md. Under 10 minutes on a 2-core CPU; ``--quick`` is a smoke run of a minute."""

from __future__ import annotations

import sys


def add_parser(commands) -> None:
    p = commands.add_parser("bench", help="measure trial throughput; append the table to BENCHMARKS.md",
                            description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that every benchmark runs")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default="BENCHMARKS.md", help="file to append the table to (default BENCHMARKS.md)")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.set_defaults(handler=run)


def run(args) -> int:
    import time

    import torch

    from search.bench.report import append, machine, markdown, print_table
    from search.bench.suite import FULL, QUICK, run_suite
    from search.device import pick_device

    device = pick_device(args.device or "auto")
    start = time.perf_counter()
    rows = run_suite(QUICK if args.quick else FULL, str(device),
                     say=lambda text: print(f"bench: {text}", file=sys.stderr, flush=True))
    minutes = (time.perf_counter() - start) / 60
    title = "Trial throughput" + (" (quick sizes)" if args.quick else "")
    print_table(f"{title}: {machine(device)}", rows)
    print(f"{minutes:.1f} min", file=sys.stderr)
    if not args.no_write:
        command = "micronet-search bench" + "".join(f" {a}" for a in sys.argv[2:])
        append(args.out, markdown(title, rows, machine(device), command,
                                  f"The whole run took {minutes:.1f} min ({torch.get_num_threads()} threads)."))
        print(f"appended to {args.out}", file=sys.stderr)
    return 0
