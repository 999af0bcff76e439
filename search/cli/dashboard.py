"""``micronet-search dashboard``: optuna-dashboard on a study storage, with the trial checkpoints attached.

The Pareto front, each trial's learning curve (validation accuracy per epoch) and its checkpoint show in the browser.
The artifact folder is the one the studies record (``artifact_dir``) unless --artifacts names another. Ctrl-C stops
the server.
"""

from __future__ import annotations

import signal
import sys

from search.study.storage import ENV_STORAGE


def add_parser(commands) -> None:
    p = commands.add_parser("dashboard", help="browse studies in optuna-dashboard", description=__doc__)
    p.add_argument("--storage", help=f"storage URL (or set {ENV_STORAGE})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0 picks a free one)")
    p.add_argument("--artifacts", metavar="DIR",
                   help="artifact folder holding the checkpoints (default: the folder the studies record)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from search.results.dashboard import address, build_app, make_server, open_dashboard_source
    from search.study.storage import given_storage, mask

    url = given_storage(args.storage)
    source = open_dashboard_source(url, args.artifacts)
    server = make_server(build_app(source), args.host, args.port)
    for note in source.notes:
        print(f"micronet-search: warning: {note}", file=sys.stderr)
    print(f"storage:   {mask(url)} ({len(source.studies)} {'study' if len(source.studies) == 1 else 'studies'}: "
          f"{', '.join(source.studies)})")
    print(f"artifacts: {source.artifact_dir or 'none'}")
    print(f"dashboard: {address(server)}  (Ctrl-C stops it)", flush=True)
    # Ctrl-C and SIGTERM both stop the server cleanly, even when the parent process ignored SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", flush=True)
    finally:
        server.server_close()
    return 0
