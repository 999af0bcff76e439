"""Where studies live: the storage URL (flag > MICRONET_STORAGE > study file > SQLite default), passwords masked in
everything we print, unreachable databases reported in one line, and the artifact store for checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore

from search.errors import MicronetError

ENV_STORAGE = "MICRONET_STORAGE"


class StorageError(MicronetError):
    """A storage that cannot be reached or used."""


def default_storage(study_name: str) -> str:
    return f"sqlite:///studies/{study_name}.db"


def resolve_storage(flag: str | None, from_file: str | None, study_name: str) -> str:
    return flag or os.environ.get(ENV_STORAGE) or from_file or default_storage(study_name)


def mask(url: str) -> str:
    """The URL with its password replaced by ***."""
    if url.startswith("journal:") or "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://***"


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None):
    """An Optuna storage for ``url``: an RDB URL (sqlite, postgresql, mysql) or ``journal:PATH`` (a journal file)."""
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if str(path) and not str(path).startswith(":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if heartbeat_interval:
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                      failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=3))
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except MicronetError:
        raise
    except Exception as e:
        raise StorageError(f"cannot open storage {mask(url)}: {_reason(e)}; check the URL, that the server runs and "
                           f"the database exists (set it with --storage or {ENV_STORAGE})") from None


def _reason(e: Exception) -> str:
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def artifact_store(path: str | Path) -> FileSystemArtifactStore:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))
