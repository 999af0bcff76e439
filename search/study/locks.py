"""Locks shared by all workers of a study, held in the study's own storage.

Two things must happen once however many workers start together: claiming the next trial (so the study ends with
exactly ``n_trials`` finished trials, not one per worker too many) and training the distillation teacher. Optuna has
no lock, so each storage kind gets the one its server offers; all are released when the holder dies, so a killed
worker never blocks the others:

- PostgreSQL: a session-level advisory lock (``pg_advisory_lock``) on a connection of its own;
- MySQL / MariaDB: ``GET_LOCK`` on a connection of its own;
- SQLite and journal files: a lock file next to the database (``filelock``; ``flock`` underneath).

Over a database outage (:mod:`search.study.outage`), taking a server lock retries until the storage is back or the
outage
outlasts ``storage_outage_s``. A lock held while its session dies (the server restarted) is gone: the server has
released it, and another worker may take it while the holder is still inside. For the claim that window is the short
moment between counting the trials and creating one, so an outage landing exactly there can make one trial more
than ``n_trials``; for the teacher, a second worker may train it too (both upload it; the study keeps the last).
Releasing a lock whose session died is a no-op.
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from pathlib import Path

from search.errors import MicronetError


class LockError(MicronetError):
    """A lock that could not be taken."""


class StudyLock(ABC):
    """A named lock across processes and machines; re-entrant use is not supported, ``release`` is idempotent."""

    def __init__(self, name: str):
        self.name = name
        self.held = False

    @abstractmethod
    def _acquire(self) -> None: ...

    @abstractmethod
    def _release(self) -> None: ...

    def acquire(self) -> None:
        self._acquire()
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def advisory_key(name: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock``."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


class _ServerLock(StudyLock):
    """A lock held by a database session: its own connection, autocommit, closed on release (or on death)."""

    def __init__(self, url: str, name: str):
        super().__init__(name)
        self.url = url
        self.connection = None

    def _acquire(self) -> None:
        from search.study.outage import tracker

        outages = tracker(self.url)  # set when the study's storage was opened with storage_outage_s
        if outages is None:
            self._lock()
            return

        def attempt() -> None:
            try:
                self._lock()
            except Exception:
                self._drop()  # a half-made session: start over on a new one
                raise

        outages.retry(attempt)

    def _lock(self) -> None: ...

    def _drop(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:
                pass  # already dead

    def _connect(self):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        from search.study.outage import POSTGRES_KEEPALIVES, tracker

        args: dict = {"connect_timeout": 10}
        if tracker(self.url) is not None and isinstance(self, PostgresLock):
            args.update(POSTGRES_KEEPALIVES)  # a lock awaited for minutes (the teacher's) notices a vanished server
        engine = sqlalchemy.create_engine(self.url, poolclass=NullPool, connect_args=args)
        return engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def _release(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                self._unlock(connection)
            except Exception as e:
                from search.study.outage import is_transient

                if not is_transient(e):
                    raise
                # the session died (an outage): the server dropped the lock with it
            finally:
                try:
                    connection.close()  # the server drops the lock with the session in any case
                except Exception:
                    pass

    def _unlock(self, connection) -> None: ...


class PostgresLock(_ServerLock):
    def _lock(self) -> None:
        from sqlalchemy import text

        self.connection = self._connect()
        self.connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": advisory_key(self.name)})

    def _unlock(self, connection) -> None:
        from sqlalchemy import text

        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": advisory_key(self.name)})


class MySQLLock(_ServerLock):
    def _lock_name(self) -> str:
        return "micronet-" + hashlib.blake2b(self.name.encode(), digest_size=16).hexdigest()  # names: <= 64 chars

    def _lock(self) -> None:
        from sqlalchemy import text

        self.connection = self._connect()
        while self.connection.execute(text("SELECT GET_LOCK(:n, 30)"), {"n": self._lock_name()}).scalar() != 1:
            pass  # timed out after 30 s: someone holds it for long (a teacher in training); keep waiting

    def _unlock(self, connection) -> None:
        from sqlalchemy import text

        connection.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self._lock_name()})


def lock_file(database: Path, name: str) -> Path:
    """The file of lock ``name`` of the SQLite or journal file ``database``: hidden, next to it."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).hexdigest()
    return database.parent / f".{database.name}.{digest}.lock"


class FileLock(StudyLock):
    def __init__(self, path: Path, name: str):
        super().__init__(name)
        import filelock

        self.path = lock_file(path, name)
        self.lock = filelock.FileLock(str(self.path))

    def remove_if_free(self) -> bool:
        """Remove the lock file if nobody holds the lock now (taken without waiting, removed while held); whether
        it was removed. Only for a lock nobody will wait on again (``gc``: the lock of a base that is stored)."""
        import filelock

        if not self.path.exists():
            return False
        try:
            self.lock.acquire(timeout=0)
        except filelock.Timeout:
            return False
        try:
            self.path.unlink(missing_ok=True)
        finally:
            self.lock.release()
        return True

    def _acquire(self) -> None:
        self.lock.acquire()

    def _release(self) -> None:
        self.lock.release()


_memory_locks: dict[str, threading.Lock] = {}


class ThreadLock(StudyLock):
    """In-memory SQLite: one process only."""

    def __init__(self, name: str):
        super().__init__(name)
        self.lock = _memory_locks.setdefault(name, threading.Lock())

    def _acquire(self) -> None:
        self.lock.acquire()

    def _release(self) -> None:
        self.lock.release()


def study_lock(url: str, name: str) -> StudyLock:
    """The lock called ``name`` in the storage at ``url``."""
    if url.startswith("journal:"):
        return FileLock(Path(url[len("journal:"):]), name)
    if url.startswith("sqlite://"):
        path = url[len("sqlite:///"):]
        if not path or path.startswith(":memory:") or "mode=memory" in path:
            return ThreadLock(name)
        return FileLock(Path(path.split("?", 1)[0]), name)
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme in ("postgresql", "postgres"):
        return PostgresLock(url, name)
    if scheme in ("mysql", "mariadb"):
        return MySQLLock(url, name)
    raise LockError(f"no lock for storages of kind {scheme!r}; use sqlite, postgresql, mysql or journal:")
