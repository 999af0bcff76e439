"""Secrets never stored or printed: a storage URL's password, in either form, is masked in every line and left out
of what the study keeps."""

import optuna
import pytest

from search import optuna_compat as compat
from search.study.storage import mask, scrub
from search.study.study_file import load_study_file, open_study


@pytest.mark.parametrize("url, secrets, shown", [
    ("postgresql://u:pw1@h:5432/db", ["pw1"], "postgresql://u:***@h:5432/db"),
    ("postgresql://u@h/db?password=pw2", ["pw2"], "postgresql://u@h/db?password=***"),
    ("mysql+pymysql://u:pw3@h/db?charset=utf8mb4&sslpassword=pw4", ["pw3", "pw4"],
     "mysql+pymysql://u:***@h/db?charset=utf8mb4&sslpassword=***"),
    ("postgresql://u@h/db?sslmode=require&auth_token=pw5", ["pw5"], "postgresql://u@h/db?auth_token=***&sslmode=require"),
])
def test_mask_hides_the_password_in_the_authority_and_in_the_query(url, secrets, shown):
    assert mask(url) == shown
    assert not any(s in mask(url) for s in secrets)
    line = f"connection to h failed: password {' and '.join(secrets)} rejected"
    assert not any(s in scrub(line, url) for s in secrets)
    assert "***" in scrub(line, url)


def test_mask_leaves_urls_without_secrets_alone():
    for url in ("sqlite:///studies/x.db", "journal:studies/x.log", "postgresql://u@h/db?sslmode=require"):
        assert mask(url) == url


def test_the_study_keeps_no_storage_url(tmp_path):
    (tmp_path / "space.yaml").write_text("params:\n  arch: {value: resnet20}\n  width: {value: 0.25}\n")
    url = f"sqlite:///{tmp_path / 's.db'}"
    path = tmp_path / "s.yaml"
    # the file names a server with a password; --storage (here a SQLite file) wins, as a user's flag would
    path.write_text(f"name: s\nspace: {tmp_path / 'space.yaml'}\nstorage: postgresql://u:hunter2@db/s?password=x9\n"
                    f"data: {{name: digits}}\n")
    open_study(load_study_file(path, storage=url))
    study = optuna.load_study(study_name="s", storage=url)
    storage = compat.storage_of(study)
    stored = repr(study.user_attrs) + repr(storage.get_study_system_attrs(storage.get_study_id_from_name("s")))
    assert "hunter2" not in stored and "x9" not in stored and "storage" not in study.user_attrs["micronet_config"]


@pytest.mark.parametrize("artifact_id", ["victim", "base-0123456789abcdef0123", "resume-../../victim",
                                         "resume-" + "0" * 31, 7])
def test_a_resume_pointer_set_by_someone_else_deletes_and_loads_nothing(tmp_path, artifact_id):
    """The resume pointer is a user attribute the dashboard and enqueue_trial can write: only an id of the form
    resume checkpoints have is ever loaded or removed."""
    import io

    from optuna.artifacts import FileSystemArtifactStore

    from search.candidate.candidate import Candidate
    from search.trial.resume import ResumeCheckpoints

    store = FileSystemArtifactStore(str(tmp_path))
    for name in ("victim", "base-0123456789abcdef0123", "resume-" + "0" * 31):
        store.write(name, io.BytesIO(b"someone else's"))
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial({}, user_attrs={"resume": {"artifact_id": artifact_id, "epoch": 1}})
    trial = study.ask()
    # a retry: it would resume
    compat.storage_of(study).set_trial_system_attr(compat.trial_id(trial), "failed_trial", 0)
    checkpoints = ResumeCheckpoints(store)
    assert checkpoints.load(trial, Candidate()) is None
    assert "names no resume checkpoint" in trial.user_attrs["resume_error"]
    checkpoints.drop(trial)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["victim", "base-0123456789abcdef0123",
                                                                 "resume-" + "0" * 31])
    assert trial.user_attrs["resume"] is None


def test_a_trials_own_resume_checkpoint_is_still_replaced_and_dropped(tmp_path):
    from optuna.artifacts import FileSystemArtifactStore

    from search.candidate.candidate import Candidate
    from search.trial.resume import RESUME_ID, ResumeCheckpoints

    checkpoints = ResumeCheckpoints(FileSystemArtifactStore(str(tmp_path)))
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    checkpoints.save(trial, Candidate(), 1, {"epoch": 1})
    first = trial.user_attrs["resume"]["artifact_id"]
    assert RESUME_ID.fullmatch(first) and [p.name for p in tmp_path.iterdir()] == [first]
    checkpoints.save(trial, Candidate(), 2, {"epoch": 2})
    second = trial.user_attrs["resume"]["artifact_id"]
    assert [p.name for p in tmp_path.iterdir()] == [second]  # the previous one removed
    checkpoints.drop(trial)
    assert list(tmp_path.iterdir()) == []


def test_the_artifact_store_replaces_a_planted_link_and_never_writes_or_reads_through_it(tmp_path):
    import io
    import os

    from optuna.artifacts.exceptions import ArtifactNotFound

    from search.study.storage import artifact_store

    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    store = artifact_store(tmp_path / "store")
    link = tmp_path / "store" / "base-0123456789abcdef0123"
    os.symlink(outside, link)  # planted between the key being recorded and the base being written
    with pytest.raises(ArtifactNotFound, match="a link"):
        store.open_reader("base-0123456789abcdef0123")
    store.write("base-0123456789abcdef0123", io.BytesIO(b"the base"))
    assert outside.read_text() == "precious"  # not written through
    assert not link.is_symlink() and link.read_bytes() == b"the base"
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["base-0123456789abcdef0123"]  # no temporary left
    with store.open_reader("base-0123456789abcdef0123") as f:
        assert f.read() == b"the base"


@pytest.mark.parametrize("artifact_id", ["../outside.txt", "/etc/passwd", "sub/dir", ".hidden", "a..b", ""])
def test_the_artifact_store_refuses_ids_that_are_not_plain_names(tmp_path, artifact_id):
    import io

    from search.study.storage import artifact_store

    store = artifact_store(tmp_path / "store")
    for call in (lambda: store.write(artifact_id, io.BytesIO(b"x")), lambda: store.open_reader(artifact_id),
                 lambda: store.remove(artifact_id)):
        with pytest.raises(ValueError, match="not an artifact id"):
            call()


def test_a_full_artifact_store_fails_the_trial_queues_it_again_and_the_worker_goes_on(tmp_path, monkeypatch, caplog):
    import errno
    import re

    from optuna.trial import TrialState

    from search.study import storage
    from search.study.runner import run_study

    (tmp_path / "space.yaml").write_text("params:\n  arch: {value: resnet20}\n  width: {value: 0.25}\n"
                                         "  ps: {low: 0.1, high: 0.5}\n")
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nspace: {tmp_path / 'space.yaml'}\nstorage: sqlite:///{tmp_path / 's.db'}\n"
                    f"artifacts: {tmp_path / 'artifacts'}\ndata: {{name: digits, subset: 200}}\n"
                    f"train: {{epochs: 1, batch_size: 32}}\nstopper: {{name: none, skip_dominated: false}}\n"
                    f"sampler: {{name: random, seed: 0}}\nn_trials: 2\n")
    refused = []
    write = storage._ArtifactStore.write

    def full_once(self, artifact_id, body):
        if re.fullmatch(r"[0-9a-f-]{36}", artifact_id) and not refused:  # the first trial checkpoint (a uuid)
            refused.append(artifact_id)
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, artifact_id, body)

    monkeypatch.setattr(storage._ArtifactStore, "write", full_once)
    said = []
    study = run_study(load_study_file(path), on_event=said.append)
    trials = study.get_trials()
    assert refused and trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["store_error"] == "No space left on device"
    assert "the artifact store refused the checkpoint of trial 0 (No space left on device)" in said
    assert any(s.startswith("trial 0 stopped and queued again") for s in said)
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == trials[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == trials[0].params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2  # the worker went on: nothing lost
    assert not [r for r in caplog.records if r.exc_info]  # no traceback


def test_an_unwritable_artifact_store_is_one_line_at_start(tmp_path):
    from search.study.storage import StorageError, artifact_store

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(StorageError, match=r"the artifact store .*not-a-folder/artifacts is not writable"):
        artifact_store(blocker / "artifacts")


def test_a_resume_checkpoint_the_store_refuses_keeps_the_previous_one_in_charge(tmp_path):
    import errno

    from optuna.artifacts import FileSystemArtifactStore

    from search.candidate.candidate import Candidate
    from search.trial.resume import ResumeCheckpoints

    class Full(FileSystemArtifactStore):
        full = False

        def write(self, artifact_id, body):
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            super().write(artifact_id, body)

    store = Full(str(tmp_path))
    checkpoints = ResumeCheckpoints(store)
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    checkpoints.save(trial, Candidate(), 1, {"epoch": 1})
    first = trial.user_attrs["resume"]
    store.full = True
    checkpoints.save(trial, Candidate(), 2, {"epoch": 2})  # training goes on
    assert trial.user_attrs["resume"] == first and (tmp_path / first["artifact_id"]).is_file()
    assert trial.user_attrs["resume_error"] == "cannot write a resume checkpoint: No space left on device"
