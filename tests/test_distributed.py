"""Many workers on one study, against the real PostgreSQL (and once MariaDB) of this machine.

Each test gets a fresh database. Workers are real ``micronet-search worker`` processes training a tiny model on
synthetic data, one torch thread each.
"""

import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from search.study.locks import study_lock
from search.study.study_file import load_study_file, open_study

PG = "postgresql://postgres@127.0.0.1:5432"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

SPACE = """\
params:
  arch: {value: resnet20}
  width: {value: 0.25}
  groups: {choices: [1, 2]}
  ps: {low: 0.0, high: 0.5}
  qw: {choices: [8, 32]}
  lr: {low: 0.02, high: 0.1, log: true}
  distillation: {value: DISTILL}
"""


def write_study(tmp_path, n_trials, epochs=2, distill=False, heartbeat="{interval: 1, grace_period: 3}",
                size=192, space=SPACE):
    (tmp_path / "space.yaml").write_text(space.replace("DISTILL", "true" if distill else "false"))
    path = tmp_path / "dist.yaml"
    path.write_text(f"""\
name: dist
space: {tmp_path / 'space.yaml'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: synthetic, synthetic_size: {size}}}
sampler: {{name: random, seed: 0}}
train: {{epochs: {epochs}, batch_size: 32}}
stopper: {{name: none, skip_dominated: false}}
teacher: {{arch: resnet20, width: 0.25, epochs: 1}}
heartbeat: {heartbeat}
checkpoint_min_seconds: 0
n_trials: {n_trials}
""")
    return path


def env_for(storage, tmp_path):
    return {**os.environ, "MICRONET_STORAGE": storage, "MICRONET_THREADS": "1", "OMP_NUM_THREADS": "1",
            "MICRONET_CACHE": str(tmp_path / "cache")}


STARTED = []


@pytest.fixture(autouse=True)
def no_stray_workers():
    """A failing test must not leave workers training in the background."""
    yield
    while STARTED:
        p = STARTED.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


def start_worker(study, storage, tmp_path, *args):
    return spawn([sys.executable, "-m", "search", "worker", str(study), *args], env=env_for(storage, tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def spawn(*args, **kwargs):
    p = subprocess.Popen(*args, **kwargs)
    STARTED.append(p)
    return p


def finish(procs, timeout=240):
    outputs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outputs.append(out)
    return outputs


def load(storage):
    return optuna.load_study(study_name="dist", storage=storage)


def wait_for(predicate, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except KeyError:  # the study is not created yet
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def assert_exactly(study, n):
    trials = study.get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == n, [(t.number, t.state.name) for t in trials]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    return finished


def test_four_workers_finish_exactly_n_trials_and_train_the_teacher_once(postgres, tmp_path):
    study_file = write_study(tmp_path, n_trials=8, distill=True)
    procs = [start_worker(study_file, postgres, tmp_path) for _ in range(4)]
    outputs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    study = load(postgres)
    finished = assert_exactly(study, 8)
    assert not [t for t in study.trials if t.state == TrialState.FAIL]
    assert len({t.user_attrs["worker"] for t in finished}) >= 2  # the work was shared
    assert all(t.user_attrs["checkpoint_artifact_id"] for t in finished)
    log = "\n".join(outputs)
    assert log.count(": training (1 epochs, once for all workers)") == 1, log
    assert any(k.startswith("teacher_artifact:") for k in study.user_attrs)
    assert "postgres@127.0.0.1" in log  # the storage is named (it has no password to mask here)
    assert not list((tmp_path / "artifacts").glob("resume-*"))  # finished trials leave no resume checkpoints


def test_a_killed_worker_s_trial_is_retried_from_its_checkpoint(postgres, tmp_path):
    study_file = write_study(tmp_path, n_trials=5, epochs=6, size=384)
    procs = [start_worker(study_file, postgres, tmp_path) for _ in range(3)]
    by_pid = {p.pid: p for p in procs}

    def running_with_checkpoint():
        for t in load(postgres).get_trials(states=(TrialState.RUNNING,)):
            if (t.user_attrs.get("resume") or {}).get("epoch", 0) >= 2 and "worker" in t.user_attrs:
                return t
        return None

    victim = wait_for(running_with_checkpoint, what="a running trial with an epoch checkpoint")
    pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
    by_pid[pid].send_signal(signal.SIGKILL)
    killed = [t for t in load(postgres).get_trials() if t.user_attrs.get("worker") == victim.user_attrs["worker"]
              and t.state == TrialState.RUNNING]
    assert len(killed) == 1  # the trial running when it died (normally the victim itself)
    killed = killed[0]
    rest = [p for p in procs if p.pid != pid]
    outputs = finish(rest)
    assert [p.returncode for p in rest] == [0, 0], outputs
    by_pid[pid].wait()

    study = load(postgres)
    assert_exactly(study, 5)
    assert study.trials[killed.number].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    epoch = killed.user_attrs["resume"]["epoch"]
    assert retry.user_attrs["resumed_from_epoch"] == epoch
    assert retry.user_attrs["epochs_run"] == 6
    assert set(retry.intermediate_values) == set(range(1, 7))  # the curve before the kill was kept


def test_stop_all_workers_and_start_again(postgres, tmp_path):
    # 1,024 images: an epoch takes about a second, so a trial seen at epoch 1 or 2 cannot finish before the Ctrl-C
    study_file = write_study(tmp_path, n_trials=6, epochs=4, size=1024)
    env = env_for(postgres, tmp_path)
    cmd = [sys.executable, "-m", "search", "run", str(study_file), "--workers", "2"]
    run = spawn(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd=tmp_path)

    def two_done_and_one_checkpointed():
        trials = load(postgres).get_trials()
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        # stopped after epoch 1 or 2 of 4: it cannot finish before the Ctrl-C lands
        early = [t for t in trials if t.state == TrialState.RUNNING
                 and (t.user_attrs.get("resume") or {}).get("epoch") in (1, 2)]
        return early[0] if len(done) >= 2 and early else None

    target = wait_for(two_done_and_one_checkpointed, what="2 finished trials and one checkpointed")
    run.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 130, out
    assert "stopping the workers" in out
    before = load(postgres).get_trials()
    done_before = {t.number: t.values for t in before if t.state == TrialState.COMPLETE}
    assert len(done_before) >= 2
    assert not [t for t in before if t.state == TrialState.RUNNING]  # every worker stopped cleanly
    assert before[target.number].state == TrialState.FAIL
    requeued = [t for t in before
                if t.state == TrialState.WAITING and t.system_attrs.get("failed_trial") == target.number]
    assert len(requeued) == 1 and requeued[0].user_attrs["resume"]["epoch"] >= 1  # waits to resume its checkpoint

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    study = load(postgres)
    assert_exactly(study, 6)
    for number, values in done_before.items():
        assert study.trials[number].values == values
    assert study.trials[requeued[0].number].state == TrialState.COMPLETE
    assert study.trials[requeued[0].number].user_attrs["resumed_from_epoch"] >= 1
    assert "Pareto front of dist" in again.stdout
    assert (tmp_path / "studies" / "logs" / "dist" / "worker-1.log").is_file()


def test_two_workers_on_mariadb(mariadb, tmp_path):
    study_file = write_study(tmp_path, n_trials=4)
    procs = [start_worker(study_file, mariadb, tmp_path) for _ in range(2)]
    outputs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert_exactly(load(mariadb), 4)


def test_two_workers_on_a_journal_file(tmp_path):
    storage = f"journal:{tmp_path / 'journal.log'}"
    study_file = write_study(tmp_path, n_trials=4)
    procs = [start_worker(study_file, storage, tmp_path) for _ in range(2)]
    outputs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outputs
    from search.study.storage import open_storage

    assert_exactly(optuna.load_study(study_name="dist", storage=open_storage(storage)), 4)


def test_postgres_lock_excludes_a_second_holder(postgres):
    first, second = study_lock(postgres, "x"), study_lock(postgres, "x")
    other = study_lock(postgres, "y")
    first.acquire()
    with other:  # another name: free
        pass
    import threading

    got = threading.Event()

    def take():
        with second:
            got.set()

    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres, poolclass=sqlalchemy.pool.NullPool)

    def waiting_or_taken():  # the server's word that the second session waits: no guess at how long it takes
        if got.is_set():
            return "taken"
        with engine.connect() as c:
            waiting = c.execute(sqlalchemy.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())")).scalar()
        return "waiting" if waiting else None

    t = threading.Thread(target=take)
    t.start()
    assert wait_for(waiting_or_taken, 30, "the second holder to wait or take the lock") == "waiting"
    assert not got.is_set()  # blocked while the first holds it
    first.release()
    assert got.wait(10.0)
    t.join()
    engine.dispose()


def bad(study_file, storage, tmp_path):
    return subprocess.run([sys.executable, "-m", "search", "worker", str(study_file)],
                          env=env_for(storage, tmp_path), capture_output=True, text=True, timeout=120)


def assert_one_line(result, *needles, secret=None):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    if secret:
        assert secret not in result.stderr + result.stdout


@pytest.mark.needs("postgresql", "mariadb")
def test_bad_storages_fail_in_one_line(tmp_path):
    study_file = write_study(tmp_path, n_trials=2)
    r = bad(study_file, "postgresql://micronet:s3cretpw@127.0.0.1:1/micronet", tmp_path)
    assert_one_line(r, "micronet:***@127.0.0.1:1", "no database server answers at 127.0.0.1:1", secret="s3cretpw")
    r = bad(study_file, "postgresql://micronet:s3cretpw@no-such-host.invalid/micronet", tmp_path)
    assert_one_line(r, "no-such-host.invalid is unknown", secret="s3cretpw")
    r = bad(study_file, f"{PG}/micronet_missing_{uuid.uuid4().hex[:6]}", tmp_path)
    assert_one_line(r, "does not exist on 127.0.0.1", "createdb -h 127.0.0.1")
    r = bad(study_file, "mysql+pymysql://root:wr0ngpass@127.0.0.1:3306/mysql", tmp_path)
    assert_one_line(r, "127.0.0.1 refused user root", "password", secret="wr0ngpass")


def test_a_study_with_other_directions_or_space_is_refused_untouched(postgres, tmp_path):
    optuna.create_study(study_name="dist", storage=postgres, directions=["minimize", "minimize"])
    study_file = write_study(tmp_path, n_trials=2)
    r = bad(study_file, postgres, tmp_path)
    assert_one_line(r, "has directions minimize, minimize", "127.0.0.1", "use another study name")
    assert load(postgres).trials == [] and load(postgres).user_attrs == {}

    optuna.delete_study(study_name="dist", storage=postgres)
    open_study(load_study_file(study_file, postgres))  # created with one space ...
    other = write_study(tmp_path, n_trials=2, space=SPACE.replace("[8, 32]", "[4, 32]"))
    r = bad(other, postgres, tmp_path)  # ... joined with another
    assert_one_line(r, "was created with another search space")
    assert load(postgres).trials == []


WIDE_SPACE = """\
params:
  arch: {value: resnet20}
  width: {value: 0.25}
  groups: {choices: [1, 2]}
  ps: {low: 0.0, high: 0.5}
  qw: {choices: [4, 8, 16, 32]}
  qa: {choices: [8, 32]}
  lr: {low: 0.02, high: 0.1, log: true}
  distillation: {value: DISTILL}
"""


def first_attempts(study):
    return [t for t in study.trials if t.system_attrs.get("failed_trial") is None]


def test_four_workers_never_draw_the_same_candidate(postgres, tmp_path):
    # TPE's start-up phase covers the whole study: every draw is random, and each worker seeds its sampler with
    # the study file's seed
    study_file = write_study(tmp_path, n_trials=12, epochs=1, size=96, space=WIDE_SPACE)
    study_file.write_text(study_file.read_text().replace("{name: random, seed: 0}",
                                                         "{name: tpe, seed: 0, n_startup_trials: 20}"))
    procs = [start_worker(study_file, postgres, tmp_path) for _ in range(4)]
    outputs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    study = load(postgres)
    assert_exactly(study, 12)
    attempts = first_attempts(study)
    assert len({t.user_attrs["worker"] for t in attempts}) >= 3, "the workers did not run side by side"
    drawn = [tuple(sorted(t.params.items())) for t in attempts]
    assert len(set(drawn)) == len(drawn), drawn
    assert not [t for t in attempts if "same parameters" in t.user_attrs.get("pruned_reason", "")]


def test_a_candidate_drawn_by_two_workers_at_once_is_trained_once(postgres, tmp_path):
    """A one-point space: every draw is the same candidate. Worker A is held (SIGSTOP) while it trains trial 0, so
    the moment is made, not hoped for: workers B and C start and draw that candidate while it is still running,
    and must refuse it as a twin instead of training it a second time."""
    one = (SPACE.replace("groups: {choices: [1, 2]}", "groups: {choices: [1]}")
           .replace("ps: {low: 0.0, high: 0.5}", "ps: {value: 0.0}")
           .replace("qw: {choices: [8, 32]}", "qw: {choices: [8]}")
           .replace("lr: {low: 0.02, high: 0.1, log: true}", "lr: {value: 0.05}"))
    # 4,096 images: trial 0 trains for seconds, not the half second 256 gave (CI's poll missed that window once)
    study_file = write_study(tmp_path, n_trials=5, epochs=3, size=4096, space=one,
                             heartbeat="{interval: 1, grace_period: 120}")  # A's held heartbeat is not a death
    a = start_worker(study_file, postgres, tmp_path)
    try:
        # its candidate is recorded after its own twin check, before training: A is held from there to its end
        (first,) = wait_for(lambda: [t for t in load(postgres).trials if t.state == TrialState.RUNNING
                                     and "candidate" in t.user_attrs], 120, "worker A training trial 0")
        a.send_signal(signal.SIGSTOP)
        others = [start_worker(study_file, postgres, tmp_path) for _ in range(2)]
        wait_for(lambda: len([t for t in load(postgres).trials if t.state == TrialState.PRUNED]) == 4, 180,
                 "workers B and C to draw the other 4 trials")
        held = load(postgres).trials[first.number]
        assert held.state == TrialState.RUNNING  # B and C drew them while trial 0 was still training
    finally:
        a.send_signal(signal.SIGCONT)
    outputs = finish(others + [a])  # B and C wait for trial 0 to finish: the study needs its 5 trials
    assert [p.returncode for p in others + [a]] == [0, 0, 0], outputs
    study = load(postgres)
    finished = assert_exactly(study, 5)
    trained = [t for t in finished if "epochs_run" in t.user_attrs]
    assert [t.number for t in trained] == [first.number], \
        [(t.number, t.state.name, t.user_attrs.get("pruned_reason")) for t in finished]
    assert trained[0].state == TrialState.COMPLETE
    refused = [t for t in finished if t.number != first.number]
    # drawn by B or C (whichever started first; a loaded machine may let one draw all four) while A was held
    assert trained[0].user_attrs["worker"] not in {t.user_attrs["worker"] for t in refused}
    for t in refused:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["pruned_reason"].startswith(f"same parameters as trial {first.number}"), \
            t.user_attrs["pruned_reason"]
