"""``micronet-search gc``: what no trial or study of the storage references is removed (or listed with --dry-run);
whatever a live trial, a finished trial's checkpoint, the teacher or a later study's bases need is kept."""

import os
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState, create_trial

RESUME = "resume-" + "a" * 32


def make(tmp_path):
    folder = tmp_path / "artifacts"
    folder.mkdir()
    url = f"sqlite:///{tmp_path / 's.db'}"
    files = {"ckpt-1": "done's checkpoint", RESUME: "running trial's resume", "resume-" + "b" * 32: "orphan resume",
             "base-" + "1" * 20: "a base a trial names", "base-" + "2" * 20: "a base nobody names",
             "teacher-1": "teacher", "ckpt-final": "the final stage's checkpoint", "stray": "unreferenced",
             "ckpt-pruned": "a stopped trial's leftover"}
    for name, text in files.items():
        (folder / name).write_text(text)
    old = folder / ".write-x.tmp"
    old.write_text("cut-off write")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    (folder / ".write-y.tmp").write_text("a write going on now")
    (folder / "link").symlink_to(tmp_path / "s.db")
    search = [
        create_trial(values=[0.5, 0.1], user_attrs={"checkpoint_artifact_id": "ckpt-1", "base_key": "1" * 20}),
        create_trial(state=TrialState.RUNNING, user_attrs={"resume": {"artifact_id": RESUME, "epoch": 2}}),
        create_trial(state=TrialState.PRUNED, user_attrs={"resume": {"artifact_id": "resume-" + "b" * 32, "epoch": 1}})]
    final = [create_trial(values=[0.6, 0.1], user_attrs={"checkpoint_artifact_id": "ckpt-final"})]
    for name, trials in (("s", search), ("s-final", final)):
        study = optuna.create_study(study_name=name, storage=url, directions=["maximize", "minimize"])
        study.set_user_attr("artifact_dir", str(folder))
        if name == "s":
            study.set_user_attr("teacher_artifact:resnet18-x", "teacher-1")
        for t in trials:
            study.add_trial(t)
    return url, folder


def gc(url, *args):
    return subprocess.run([sys.executable, "-m", "search", "gc", "--storage", url, "--study", "s", *args],
                          capture_output=True, text=True, timeout=120)


def test_gc_lists_then_removes_only_what_nothing_references(tmp_path):
    url, folder = make(tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    dry = gc(url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    listed = sorted(line.rsplit("/", 1)[1] for line in dry.stdout.splitlines() if line.startswith("would remove"))
    assert listed == sorted([".write-x.tmp", "ckpt-pruned", "resume-" + "b" * 32, "stray"])
    assert "studies s, s-final" in dry.stdout
    assert sorted(p.name for p in folder.iterdir()) == before  # a dry run removes nothing
    done = gc(url)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [".write-y.tmp", "base-" + "1" * 20, "base-" + "2" * 20, "ckpt-1", "ckpt-final", "link", RESUME,
         "teacher-1"])
    assert (tmp_path / "s.db").exists()  # a link is never followed
    gc(url, "--bases")
    assert not (folder / ("base-" + "2" * 20)).exists() and (folder / ("base-" + "1" * 20)).exists()


def test_gc_removes_the_free_lock_files_of_stored_bases_and_with_logs_the_worker_logs(tmp_path, monkeypatch):
    """Each base leaves a lock file next to a SQLite database. Once the base is stored, gc removes its file if
    nobody holds the lock; a held one, the claim lock and a removed base's lock stay. --logs removes the studies'
    worker logs, but not while a trial runs."""
    from search.study.locks import study_lock

    url, folder = make(tmp_path)
    stored, orphan, missing = "1" * 20, "2" * 20, "3" * 20  # base-1 and base-2 are in the folder, base-3 is not
    locks = {k: study_lock(url, f"s:base:{k}") for k in (stored, orphan, missing)}
    for lock in locks.values():
        with lock:  # a lock taken once leaves its file
            pass
    claim = study_lock(url, "s:claim")
    with claim:
        pass
    logs = tmp_path / "studies" / "logs" / "s"
    logs.mkdir(parents=True)
    (logs / "worker-0.log").write_text("a worker's log")
    monkeypatch.chdir(tmp_path)

    held = study_lock(url, f"s:base:{orphan}")
    held.acquire()  # another worker holds base-2's lock now
    try:
        dry = gc(url, "--dry-run", "--logs")
        assert dry.returncode == 0, dry.stderr
        listed = [line.split(" ", 2)[2] for line in dry.stdout.splitlines() if line.startswith("would remove")]
        assert str(locks[stored].path) in listed and str(locks[orphan].path) in listed
        assert str(locks[missing].path) not in listed and str(claim.path) not in listed
        assert not [p for p in listed if p.endswith(".log")]  # trial 1 of s is running: its worker may be writing
        assert all(lock.path.exists() for lock in locks.values())  # a dry run removes nothing
        assert gc(url).returncode == 0
        assert not locks[stored].path.exists()  # free, its base stored: nobody waits on it again
        assert locks[orphan].path.exists()  # held: left alone
        assert locks[missing].path.exists() and claim.path.exists()  # its base not stored; the claim lock
    finally:
        held.release()
    assert gc(url).returncode == 0
    assert not locks[orphan].path.exists()  # free now

    study = optuna.load_study(study_name="s", storage=url)
    (running,) = study.get_trials(states=(TrialState.RUNNING,))
    study._storage.set_trial_state_values(running._trial_id, TrialState.FAIL)
    assert gc(url).returncode == 0 and (logs / "worker-0.log").exists()  # only with --logs
    done = gc(url, "--logs")
    assert done.returncode == 0 and "1 worker log(s)" in done.stdout
    assert not (logs / "worker-0.log").exists()
