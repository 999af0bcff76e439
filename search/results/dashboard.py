"""optuna-dashboard on a study storage, with the studies' artifact store attached, so each trial's checkpoint shows
next to its learning curve (the per-epoch validation accuracy) and the Pareto front.

The server is optuna-dashboard's own WSGI app (``optuna_dashboard.wsgi``, what ``run_server`` builds too) under a
threaded wsgiref server that we bind ourselves: a port in use is reported before anything is printed, the printed
address is the one that answers, and the page's parallel requests are not served one at a time.
"""

from __future__ import annotations

import errno
import socket
import socketserver
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from search.errors import MicronetError
from search.study.storage import StorageError, mask, open_storage

ARTIFACT_ATTR = "artifact_dir"  # the study user attribute search.study.study_file.open_study writes


class DashboardError(MicronetError):
    """A dashboard that cannot be started as asked."""


@dataclass
class DashboardSource:
    """An existing storage, its studies and the artifact folder to show."""

    storage: object
    url: str
    studies: list[str]
    artifact_dir: Path | None
    notes: list[str] = field(default_factory=list)  # one-line warnings for stderr


def open_dashboard_source(url: str, artifacts: str | Path | None = None) -> DashboardSource:
    """Open an existing storage with at least one study and pick the artifact folder.

    The folder is ``artifacts`` when given, else the ``artifact_dir`` attribute the studies share. Studies that
    disagree need ``artifacts``. Nothing is created: a missing SQLite or journal file is an error, not a new one.
    """
    _refuse_missing_file(url)
    storage = open_storage(url)
    try:
        import optuna

        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    except MicronetError:
        raise
    except Exception as e:
        raise StorageError(f"cannot read studies from {mask(url)}: {_first_line(e)}") from None
    if not summaries:
        raise StorageError(f"no study in {mask(url)}; run one first (micronet-search run STUDY.yaml)")
    names = sorted(s.study_name for s in summaries)
    notes: list[str] = []
    if artifacts is not None:
        folder = Path(artifacts).expanduser().resolve()
        if not folder.is_dir():
            raise DashboardError(f"--artifacts {artifacts}: no such folder")
        return DashboardSource(storage, url, names, folder, notes)
    dirs = {s.study_name: s.user_attrs.get(ARTIFACT_ATTR) for s in summaries}
    known = {d for d in dirs.values() if d}
    if len(known) > 1:
        listing = "; ".join(f"{n}: {d}" for n, d in sorted(dirs.items()) if d)
        raise DashboardError(f"the studies in {mask(url)} keep their checkpoints in different folders ({listing}); "
                             f"choose one with --artifacts DIR")
    folder = Path(known.pop()) if known else None
    if folder is None:
        notes.append(f"no study in {mask(url)} records an artifact folder; checkpoints will not show "
                     f"(give --artifacts DIR)")
    elif not folder.is_dir():
        notes.append(f"the artifact folder {folder} of the studies is not on this machine; checkpoints will not "
                     f"show (give --artifacts DIR)")
        folder = None
    return DashboardSource(storage, url, names, folder, notes)


def _refuse_missing_file(url: str) -> None:
    if url.startswith("journal:"):
        path = url[len("journal:"):]
    elif url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?", 1)[0]
        if not path or path.startswith(":memory:"):
            raise StorageError(f"no study in {url}: an in-memory database is empty")
    else:
        return
    if not Path(path).is_file():
        raise StorageError(f"no study in {mask(url)}: {path} does not exist")


def build_app(source: DashboardSource):
    """optuna-dashboard's WSGI app on the source's storage and artifact store."""
    import optuna_dashboard

    from search.study.storage import artifact_store

    store = artifact_store(source.artifact_dir, check=False) if source.artifact_dir is not None else None
    return optuna_dashboard.wsgi(source.storage, artifact_store=store)


class _QuietHandler(WSGIRequestHandler):
    def address_string(self):  # no reverse DNS lookup per request
        return self.client_address[0]

    def log_message(self, format, *args):  # no line per request
        pass


class DashboardServer(socketserver.ThreadingMixIn, WSGIServer):
    """A threaded wsgiref server that skips the reverse DNS lookup at bind and stays quiet when a browser drops a
    connection."""

    daemon_threads = True
    request_queue_size = 64  # a page load opens several connections at once

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)  # HTTPServer's version calls socket.getfqdn, slow when offline
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()

    def handle_error(self, request, client_address):
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def make_server(app, host: str = "127.0.0.1", port: int = 8080) -> DashboardServer:
    """Bind ``host:port`` (port 0: any free port); a one-line error when that cannot be done."""
    if not 0 <= port <= 65535:
        raise DashboardError(f"--port must be in 0..65535, got {port}")
    server_class = DashboardServer
    if ":" in host:
        server_class = type("DashboardServer6", (DashboardServer,), {"address_family": socket.AF_INET6})
    try:
        server = server_class((host, port), _QuietHandler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise DashboardError(f"port {port} on {host} is in use; choose another with --port") from None
        if e.errno == errno.EACCES:
            raise DashboardError(f"not allowed to listen on {host}:{port}; choose a port above 1023") from None
        raise DashboardError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    server.set_app(app)
    return server


def address(server: DashboardServer) -> str:
    """The dashboard's http address."""
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/dashboard/"


def _first_line(e: Exception) -> str:
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]
