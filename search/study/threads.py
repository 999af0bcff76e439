"""A fair share of this machine's cores for each worker, without being told.

Several workers on one machine must split its cores: three hand-started workers on 2 cores, each with torch's
default of one thread per core, finished no trial in 6 minutes where one worker alone finished 16. Each worker
(``run`` or ``worker``, of any study) registers in a folder on this host and holds a lock on its own file for as
long as it lives; the live workers are the files whose lock is held (a killed worker's lock goes with its process,
so it stops counting at once). Before each trial and after each epoch a worker sets its torch threads to
``cores // live workers`` (at least 1). ``--threads N`` or ``MICRONET_THREADS`` fixes the number instead.

The registry is host-local on purpose: the cores are this host's, and a file lock needs no storage round trip.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import filelock

from search.machine import available_cores

ENV_THREADS = "MICRONET_THREADS"
ENV_REGISTRY = "MICRONET_WORKER_DIR"  # where workers register (default: a folder in the temp dir, per user)
RECHECK_S = 5.0  # how often a running worker looks again: a directory listing and a few lock attempts


def fixed_threads() -> int | None:
    """The thread count set by ``--threads`` / ``MICRONET_THREADS``, or None for the fair share."""
    value = os.environ.get(ENV_THREADS, "").strip()
    if not value or value == "auto":
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        from search.errors import ConfigError

        raise ConfigError(f"{ENV_THREADS} must be an integer >= 1 or 'auto', got {value!r}")
    return threads


def registry_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"micronet-search-workers-{os.getuid() if hasattr(os, 'getuid') else 0}"
    return Path(os.environ.get(ENV_REGISTRY) or default)


class HostWorkers:
    """This worker's entry in the host's registry; ``live()`` counts the registered workers still running."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder or registry_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{os.getpid()}-{time.monotonic_ns()}.worker"
        self.lock = filelock.FileLock(str(self.path), is_singleton=False)
        self.cpus = _affinity()

    def __enter__(self):
        # the cores this worker may run on, beside the lock file (whose content the lock may truncate): jobs pinned
        # to other cores of a shared host (SLURM, taskset) do not share this worker's cores, so they do not count
        if self.cpus is not None:
            _cpus_file(self.path).write_text(",".join(map(str, sorted(self.cpus))))
        self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()
        self.path.unlink(missing_ok=True)
        _cpus_file(self.path).unlink(missing_ok=True)

    def live(self) -> int:
        """Registered workers whose lock is held (this one included). A file whose lock can be taken belongs to a
        worker that died without cleaning up: it is removed."""
        count = 0
        for path in self.folder.glob("*.worker"):
            if path == self.path:
                count += self.lock.is_locked
                continue
            probe = filelock.FileLock(str(path), timeout=0, is_singleton=False)
            try:
                probe.acquire()
            except filelock.Timeout:
                count += self._shares_cores(path)  # held: its worker is alive
            except OSError:
                continue  # removed meanwhile
            else:
                probe.release()
                path.unlink(missing_ok=True)
                _cpus_file(path).unlink(missing_ok=True)
        return max(1, count)

    def _shares_cores(self, path: Path) -> bool:
        try:
            theirs = {int(c) for c in _cpus_file(path).read_text().split(",") if c}
        except (OSError, ValueError):
            return True  # unknown: assume it competes for the same cores
        return self.cpus is None or not theirs or bool(theirs & self.cpus)


def _cpus_file(path: Path) -> Path:
    return path.with_suffix(".cpus")


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return None


class FairThreads:
    """Keeps torch's thread count at this worker's share of the host's cores; call ``update()`` often."""

    def __init__(self, workers: HostWorkers | None, cores: int | None = None, fixed: int | None = None):
        self.workers, self.cores, self.fixed = workers, cores or available_cores(), fixed
        self.threads: int | None = None
        self._checked = -float("inf")

    def share(self) -> int:
        if self.fixed is not None:
            return self.fixed
        live = self.workers.live() if self.workers is not None else 1
        return max(1, self.cores // live)

    def update(self, force: bool = False) -> int:
        """Set torch's threads to the current share (looked up at most every ``RECHECK_S`` seconds)."""
        now = time.monotonic()
        if force or self.threads is None or now - self._checked >= RECHECK_S:
            self._checked = now
            threads = self.share()
            if threads != self.threads:
                import torch

                torch.set_num_threads(threads)
                self.threads = threads
        return self.threads
