"""``micronet-search gc``: what a study's artifact folder holds that nothing references any more.

A study leaves files behind: resume checkpoints of trials that ended while their worker could not remove them,
temporary files of writes cut off, probe files, worker logs. An artifact is kept when any study of the storage that
shares the folder (the search study, its ``-final`` companion, later studies reusing bases) references it:

- a trial's checkpoint (``checkpoint_artifact_id``, and the artifacts Optuna's ``upload_artifact`` registered);
- the resume checkpoint of a trial that may still go on (running, waiting, or failed and retryable);
- the study's teacher (``teacher_artifact:*``);
- bases (``base-*``): made to be reused by later studies, kept unless ``bases`` is asked for, and then only those
  no trial of these studies names.

Everything else in the folder is unreferenced: removed unless it is a dry run. Only plain files the store itself
could have written are considered (no links, no folders).

Beside the folder, on SQLite and journal storages each base leaves a lock file next to the database (one per base
key, :class:`search.study.locks.FileLock`). Once the base is stored nobody waits on that lock again: its file is
removed when the lock is free. The claim and teacher locks (three files a study) stay: a worker may take them at
any moment. With ``logs``, the local workers' logs of these studies (``studies/logs/<study>/``, where ``run``
writes them) are removed too, unless one of their trials is running.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.study.locks import FileLock, study_lock
from search.study.session import worker_log_dir
from search.study.storage import ARTIFACT_ID
from search.trial.record import TrialRecord

TEMPORARY_AGE_S = 3600.0  # a write's temporary file older than this was cut off


@dataclass
class Cleanup:
    folder: Path
    studies: list[str]
    kept: list[str] = field(default_factory=list)
    unreferenced: list[Path] = field(default_factory=list)
    locks: list[FileLock] = field(default_factory=list)  # of stored bases: removed if free when removing
    logs: list[Path] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return self.unreferenced + [lock.path for lock in self.locks] + self.logs

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.unreferenced + self.logs if p.exists())


def referenced(study: optuna.Study) -> set[str]:
    """The artifact ids ``study`` still needs."""
    keep = {v for k, v in study.user_attrs.items() if k.startswith("teacher_artifact:") and isinstance(v, str)}
    live = (TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)
    for t in study.get_trials(deepcopy=False):
        r = TrialRecord.of(t)
        if isinstance(r.checkpoint_artifact_id, str):
            keep.add(r.checkpoint_artifact_id)
        keep.update(k.split(":", 1)[1] for k in t.system_attrs if k.startswith("artifacts:"))
        if t.state in live and isinstance(r.resume, dict) and isinstance(r.resume.get("artifact_id"), str):
            keep.add(r.resume["artifact_id"])
        if r.base_key:
            keep.add(f"base-{r.base_key}")
    return keep


def plan(storage, name: str, bases: bool = False, url: str | None = None, logs: bool = False) -> Cleanup:
    """What ``gc`` would remove from the artifact folder of study ``name`` (``storage``: an Optuna storage; ``url``:
    its URL, which tells where its lock files are)."""
    study = optuna.load_study(study_name=name, storage=storage)
    folder = study.user_attrs.get("artifact_dir")
    if not folder or not Path(folder).is_dir():
        from search.errors import MicronetError

        raise MicronetError(f"study {name!r} records no artifact folder that exists here ({folder}); run gc where "
                            f"the study's artifacts are")
    folder = Path(folder)
    sharing = []
    keep: set[str] = set()
    running = False
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if summary.user_attrs.get("artifact_dir") == str(folder):
            sharing.append(summary.study_name)
            other = optuna.load_study(study_name=summary.study_name, storage=storage)
            keep |= referenced(other)
            running |= bool(other.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    out = Cleanup(folder, sorted(sharing))
    now = time.time()
    for path in sorted(folder.iterdir()):
        if path.is_symlink() or not path.is_file():
            continue
        if path.name.startswith(".write-") and path.name.endswith(".tmp"):
            if now - path.stat().st_mtime > TEMPORARY_AGE_S:
                out.unreferenced.append(path)
            continue
        if not ARTIFACT_ID.fullmatch(path.name):
            continue  # not a name the store writes: not ours to judge
        if path.name in keep or (path.name.startswith("base-") and not bases):
            out.kept.append(path.name)
        else:
            out.unreferenced.append(path)
    stored = [n[len("base-"):] for n in out.kept if n.startswith("base-")]
    for study_name in sharing if url else []:
        for key in stored:
            lock = study_lock(url, f"{study_name}:base:{key}")
            if isinstance(lock, FileLock) and lock.path.exists():
                out.locks.append(lock)
    if logs and not running:
        for study_name in sharing:
            folder = worker_log_dir(study_name)
            if folder.is_dir() and not folder.is_symlink():
                out.logs += [p for p in sorted(folder.iterdir()) if p.is_file() and not p.is_symlink()
                             and p.suffix == ".log"]
    return out


def remove(cleanup: Cleanup) -> int:
    """Remove the unreferenced files, the free lock files of stored bases and (if planned) the logs; the bytes
    freed."""
    freed = 0
    for path in cleanup.unreferenced + cleanup.logs:
        try:
            size = path.stat().st_size
            path.unlink()
            freed += size
        except FileNotFoundError:
            pass
    for lock in cleanup.locks:
        lock.remove_if_free()
    return freed
