"""Where studies live: the storage URL (flag > MICRONET_STORAGE > study file > SQLite default), passwords masked in
everything we print, unreachable databases reported in one line, outages of database servers ridden out
(:mod:`search.study.outage`), and the artifact store for checkpoints."""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from search.errors import ConfigError, MicronetError
from search.study.locks import study_lock

ENV_STORAGE = "MICRONET_STORAGE"


class StorageError(MicronetError):
    """A storage that cannot be reached or used."""


def default_storage(study_name: str) -> str:
    return f"sqlite:///studies/{study_name}.db"


SQLITE_BUSY_TIMEOUT_S = 60.0
URL_FORMS = ("sqlite:///FILE.db", "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
             "mysql+pymysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE", "journal:FILE")


def resolve_storage(flag: str | None, from_file: str | None, study_name: str) -> str:
    url = flag or os.environ.get(ENV_STORAGE) or from_file or default_storage(study_name)
    check_url(url)
    return url


def given_storage(flag: str | None) -> str:
    """The storage of a command that reads an existing study (``front``, ``report``, ``export``, ``dashboard``):
    ``--storage``, else MICRONET_STORAGE; there is no study file to fall back on."""
    url = flag or os.environ.get(ENV_STORAGE)
    if not url:
        raise ConfigError(f"give the storage: --storage URL or {ENV_STORAGE}")
    return url


def load_existing_study(storage: str | None, name: str) -> optuna.Study:
    """The stored study ``name`` (``storage``: the ``--storage`` flag, see :func:`given_storage`), never created:
    a missing SQLite file or study name is one line saying what is there."""
    url = given_storage(storage)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise StorageError(f"no SQLite database at {url[len('sqlite:///'):]}; check --storage")  # don't create one
    store = open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
    if name not in names:
        raise StorageError(f"no study {name!r} in {mask(url)}; studies there: {', '.join(sorted(names)) or 'none'}")
    return optuna.load_study(study_name=name, storage=store)


def check_url(url: str) -> None:
    """Refuse, in one line naming the forms that work, a URL of a kind no storage here can open: an unknown scheme,
    or a database driver that is not installed."""
    if not isinstance(url, str):
        raise StorageError(f"storage must be a URL string, got {url!r}; use {', '.join(URL_FORMS)}")
    if url.startswith("journal:") and len(url) > len("journal:"):
        return
    scheme = url.split("://", 1)[0] if "://" in url else ""
    backend = scheme.partition("+")[0]
    fix = None
    if backend == "sqlite" and url.startswith("sqlite:///"):
        return
    if backend in ("postgresql", "mysql", "mariadb"):
        try:  # the dialect and its driver (DBAPI) module, as SQLAlchemy will load them
            from sqlalchemy.engine import make_url

            make_url(url).get_dialect().import_dbapi()
            return
        except Exception as e:
            installed = "postgresql://" if backend == "postgresql" else f"{backend}+pymysql://"
            fix = f"its driver cannot be loaded ({type(e).__name__}: {e}); {installed} uses the installed one"
    elif backend == "postgres":
        fix = "write postgresql://, not postgres://"
    raise StorageError(f"storage URL {mask(url)!r} is not one that works here" + (f": {fix}" if fix else "")
                       + f"; use {', '.join(URL_FORMS)}")


SECRET_QUERY_KEYS = ("pass", "secret", "token", "key", "auth", "credential")  # ?password=, ?sslpassword=, ...


def _secret_query_key(key: str) -> bool:
    return any(word in key.lower() for word in SECRET_QUERY_KEYS)


def mask(url: str) -> str:
    """The URL with its password and every secret-looking query value (``?password=``, ``?sslpassword=``,
    ``?token=``, ...) replaced by ***."""
    if url.startswith("journal:") or "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        query = {k: ("***" if _secret_query_key(k) else v) for k, v in u.query.items()}
        return u.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
    except Exception:
        return url.split("://", 1)[0] + "://***"


def retry_callback(max_retry: int):
    """Re-queue a trial whose worker died (or was stopped) with its parameters, user attributes (the pointer to
    its last epoch checkpoint among them) and learning curve, at most ``max_retry`` times."""
    with warnings.catch_warnings():  # experimental since Optuna 2.8, the documented way to retry stale trials
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int = 2, outage_s: float | None = None):
    """An Optuna storage for ``url``: an RDB URL (sqlite, postgresql, mysql) or ``journal:PATH`` (a journal file).

    With ``heartbeat_interval`` (RDB storages only: Optuna's journal storage has no heartbeats) a running trial
    whose worker stops beating for ``grace_period`` seconds is marked FAILED and re-queued. With ``outage_s``, calls
    to a database server (PostgreSQL, MySQL) ride out an outage of up to that many seconds (:mod:`search.study.outage`);
    SQLite and journal files are local files, with no server to lose. Opening fails at once, in one line: at the
    start a wrong URL is likelier than an outage.
    """
    check_url(url)
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    kwargs: dict = {}
    server = False
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if str(path) and not str(path).startswith(":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
        # several local workers (heartbeats, epoch reports, checkpoints) write one file: wait for its lock instead
        # of failing with "database is locked" after sqlite3's default 5 s (seen with 2 workers and heartbeats)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    elif url.split("://", 1)[0].split("+")[0] in ("postgresql", "postgres", "mysql", "mariadb"):
        # fail in seconds, not after the operating system's two-minute TCP timeout, when the host does not answer
        kwargs["engine_kwargs"] = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
        server = True
        if outage_s is not None:
            kwargs["engine_kwargs"].update(_outage_engine_kwargs(url))
    if heartbeat_interval:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                          heartbeat_stale_trial_callback=retry_callback(max_retry))
    try:
        # several workers opening a new database at once would race to create Optuna's tables
        with study_lock(url, "micronet:create-tables"), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, **kwargs)
    except MicronetError:
        raise
    except Exception as e:
        raise StorageError(describe_failure(url, e)) from None
    if not server or outage_s is None:
        return storage
    from search.optuna_compat import cached_storage
    from search.study.outage import ResilientStorage, configure

    grace = (grace_period or 2 * heartbeat_interval) if heartbeat_interval else None
    # the cache Optuna itself puts around an RDBStorage (around a storage of another class it puts none)
    return ResilientStorage(cached_storage(storage), configure(url, outage_s, mask(url)), grace)


def _outage_engine_kwargs(url: str) -> dict:
    """Connections that notice a dead server: after a restart the pooled connections are dead, and ``pool_pre_ping``
    replaces them before use instead of failing a call on each; PostgreSQL connections also notice a server that
    vanished without closing them (search.study.outage.POSTGRES_KEEPALIVES)."""
    from search.study.outage import POSTGRES_KEEPALIVES

    extra: dict = {"pool_pre_ping": True}
    if url.split("://", 1)[0].split("+")[0] in ("postgresql", "postgres"):
        extra["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S, **POSTGRES_KEEPALIVES}
    return extra


CONNECT_TIMEOUT_S = 10

# (what the driver says, what it means, how to fix it); {host}, {port}, {user}, {database} come from the URL
_FAILURES = (
    (("could not translate host name", "name or service not known", "unknown mysql server host",
      "nodename nor servname", "temporary failure in name resolution", "getaddrinfo failed"),
     "host {host} is unknown", "check the host name in the storage URL"),
    (("connection refused", "can't connect", "timeout expired", "timed out", "no route to host",
      "network is unreachable", "could not connect"),
     "no database server answers at {host}:{port}",
     "start it (scripts/start_postgres.sh for a local PostgreSQL) or fix the host and port in the storage URL"),
    (("password authentication failed", "access denied", "authentication failed", "no password supplied",
      "role \"", "no pg_hba.conf entry"),
     "{host} refused user {user}", "check the user name and password in the storage URL"),
    (("does not exist", "unknown database"),
     "database {database} does not exist on {host}",
     "create it ({create}) or fix its name in the storage URL"),
)


def describe_failure(url: str, error: Exception) -> str:
    """One line: which storage (password masked), what went wrong, how to fix it."""
    reason = scrub(_reason(error), url)
    lowered = reason.lower()
    parts = _url_parts(url)
    for needles, what, fix in _FAILURES:
        if any(n in lowered for n in needles):
            return f"cannot open storage {mask(url)}: {what.format(**parts)}; {fix.format(**parts)}"
    return (f"cannot open storage {mask(url)}: {reason}; check the URL, that the server runs and the database exists "
            f"(set it with --storage or {ENV_STORAGE})")


def _url_parts(url: str) -> dict:
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        default_port = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}.get(u.get_backend_name(), "")
        host, db = u.host or "localhost", u.database or "(none)"
        create = (f"createdb -h {host} {db}" if u.get_backend_name() == "postgresql"
                  else f"mysql -h {host} -e 'CREATE DATABASE {db}'")
        return {"host": host, "port": u.port or default_port, "user": u.username or "(none)", "database": db,
                "create": create}
    except Exception:
        return {"host": "?", "port": "?", "user": "?", "database": "?", "create": "CREATE DATABASE"}


def scrub(text: str, url: str) -> str:
    """``text`` with the URL's password and secret query values replaced by ***, wherever a driver repeated them."""
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        secrets = [u.password] + [v for k, v in u.query.items() if _secret_query_key(k)]
    except Exception:
        secrets = []
    for secret in secrets:
        for value in (secret if isinstance(secret, tuple) else (secret,)):
            if value:
                text = text.replace(str(value), "***")
    return text


def _reason(e: Exception) -> str:
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def artifact_store(path: str | Path, check: bool = True) -> FileSystemArtifactStore:
    """The study's artifact store at ``path`` (made if missing), with ``check`` checked writable by writing and
    removing a probe: a worker that could not store a single checkpoint says so now, in one line, not after its first
    training."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        store = _ArtifactStore(str(path))
        if not check:
            return store
        probe = f"probe-{os.getpid()}-{os.urandom(4).hex()}"
        store.write(probe, io.BytesIO(b"probe"))
        FileSystemArtifactStore.remove(store, probe)
    except OSError as e:
        raise StorageError(f"the artifact store {path} is not writable ({e.strerror or e}); free space there, fix "
                           f"its permissions, or give another folder (artifacts: in the study file, --artifacts)") \
            from None
    return store


def existing_artifact_store(path: str | Path) -> FileSystemArtifactStore:
    """The artifact store at ``path`` for reading (export): nothing is made."""
    return _ArtifactStore(str(path))


ARTIFACT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")  # uuid4 (Optuna's), resume-<hex>, base-<hex>


class _ArtifactStore(FileSystemArtifactStore):
    """Optuna's file store, hardened: whoever can write the folder (another worker, a user, the dashboard's upload)
    is not trusted.

    - An id is a plain file name (:data:`ARTIFACT_ID`): no path, no ``..``.
    - A write goes to a temporary file in the folder and is renamed into place: a link planted under the id is
      replaced, never written through, and a reader never sees half a file.
    - A read refuses a link (``O_NOFOLLOW``): a link is no artifact this store wrote.
    - A removal waits until the storage writes made before are delivered (search.study.outage): during an outage a
      trial's new resume checkpoint is written but the storage still names the previous one, which must stay until
      it names the new one.
    """

    def _get_filepath(self, artifact_id: str) -> Path:
        if not isinstance(artifact_id, str) or not ARTIFACT_ID.fullmatch(artifact_id) or ".." in artifact_id:
            raise ValueError(f"not an artifact id: {artifact_id!r}")
        return super()._get_filepath(artifact_id)

    def write(self, artifact_id: str, content_body) -> None:
        path = self._get_filepath(artifact_id)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".write-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(content_body, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def open_reader(self, artifact_id: str):
        path = self._get_filepath(artifact_id)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError as e:
            raise ArtifactNotFound(f"{artifact_id}: not found") from e
        except OSError as e:  # ELOOP: a link
            raise ArtifactNotFound(f"{artifact_id}: a link, not an artifact ({e.strerror})") from e
        return os.fdopen(fd, "rb")

    def remove(self, artifact_id: str) -> None:
        from search.study.outage import after_buffered_writes

        self._get_filepath(artifact_id)  # a bad id is refused now, not after the buffered writes
        after_buffered_writes(lambda: super(_ArtifactStore, self).remove(artifact_id))
