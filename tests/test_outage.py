"""Workers ride out a database outage: the real PostgreSQL of this machine behind a TCP proxy that can drop every
connection and refuse new ones (as a restarting server does), then accept again."""

import os
import re
import socket
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from search.study.locks import study_lock
from search.study.outage import EXIT_CODE, StorageOutage
from search.study.storage import open_storage

PG_PORT = 5432
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class Proxy:
    """127.0.0.1:<port> -> PostgreSQL. ``down()``: every connection dropped, new ones refused; ``up()``: back."""

    def __init__(self):
        self.port, self.listener, self.socks = 0, None, []
        self.lock = threading.Lock()
        self.cut_on: bytes | None = None  # lose the reply to the next client message holding these bytes ...
        self.cut_for = 0.0                # ... and stay down this long after it
        self.swallow = False
        self.up()

    def up(self):
        self.swallow = False
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.port, self.listener = s.getsockname()[1], s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self):
        if self.listener.fileno() >= 0:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone would keep listening
            self.listener.close()
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            _close(s)

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
                server = socket.create_connection(("127.0.0.1", PG_PORT))
            except OSError:
                return
            with self.lock:
                self.socks += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src, dst, to_server):
        try:
            while data := src.recv(65536):
                cut = to_server and self.cut_on is not None and self.cut_on in data
                if cut:
                    self.swallow = True
                if to_server or not self.swallow:
                    dst.sendall(data)
                if cut:  # the server gets the message and acts on it; the client never hears back
                    self.cut_on = None
                    time.sleep(0.5)
                    self.down()
                    threading.Timer(self.cut_for, self.up).start()
        except OSError:
            pass
        _close(src)
        _close(dst)

    def url(self, database):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def _close(s):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@pytest.fixture
def database(postgres):
    """The name of a new, empty database on the local PostgreSQL (conftest's ``postgres``)."""
    return postgres.rsplit("/", 1)[1]


@pytest.fixture
def proxy():
    p = Proxy()
    yield p
    p.down()


def direct(database):
    return f"postgresql://postgres@127.0.0.1:{PG_PORT}/{database}"


# -- one process: the storage wrapper and the locks --------------------------------------------------------------

def test_writes_are_buffered_during_an_outage_and_delivered_in_order(database, proxy):
    storage = open_storage(proxy.url(database), heartbeat_interval=1, grace_period=3, outage_s=60)
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    trial_id = storage.create_new_trial(study._study_id)
    storage.set_trial_intermediate_value(trial_id, 1, 0.1)
    assert len(storage.get_all_trials(study._study_id)) == 1

    proxy.down()
    t0 = time.monotonic()
    for step in (2, 3, 4):  # training goes on: nothing waits for the storage
        storage.set_trial_intermediate_value(trial_id, step, step / 10)
    storage.set_trial_user_attr(trial_id, "epochs_run", 4)
    seen = storage.get_all_trials(study._study_id)  # what was last read
    assert time.monotonic() - t0 < 2.0
    assert [t._trial_id for t in seen] == [trial_id]
    assert direct_intermediate(database, trial_id) == {1: 0.1}

    threading.Timer(3.0, proxy.up).start()
    storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.4, 1.0])  # waits, after the buffered writes
    assert time.monotonic() - t0 >= 3.0
    trial = optuna.load_study(study_name="s", storage=direct(database)).trials[0]
    assert trial.state == TrialState.COMPLETE and trial.values == [0.4, 1.0]
    assert trial.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}
    assert trial.user_attrs["epochs_run"] == 4


def direct_intermediate(database, trial_id):
    return optuna.storages.RDBStorage(direct(database)).get_trial(trial_id).intermediate_values


def test_real_errors_are_not_retried_and_a_long_outage_stops_in_one_line(database, proxy):
    storage = open_storage(proxy.url(database), heartbeat_interval=1, grace_period=3, outage_s=3)
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    t0 = time.monotonic()
    with pytest.raises(KeyError):
        storage.get_trial(10**9)  # no such trial: an answer, not an outage
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):
        optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    assert time.monotonic() - t0 < 2.0

    proxy.down()
    t0 = time.monotonic()
    with pytest.raises(StorageOutage) as e:
        study.get_trials()
    assert 3.0 <= time.monotonic() - t0 < 10.0
    message = str(e.value)
    assert "\n" not in message and f"127.0.0.1:{proxy.port}/{database}" in message
    assert re.search(r"unreachable for [34] s, longer than storage_outage_s \(3 s\): .*connection refused",
                     message, re.IGNORECASE), message


def test_a_lost_reply_does_not_leave_a_trial_nobody_runs(database, proxy):
    storage = open_storage(proxy.url(database), heartbeat_interval=1, grace_period=3, outage_s=60)
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])

    def cut_commit(down_s):  # the server commits the next transaction; the reply is lost with the connection
        proxy.cut_on, proxy.cut_for = b"COMMIT", down_s

    def stored():
        return [(t.number, t.state) for t in optuna.load_study(study_name="s", storage=direct(database)).trials]

    # down 12 s: Optuna's own retries (5, < 2 s apart) all fail; ours find the trial the first try made
    cut_commit(12)
    first = storage.create_new_trial(study._study_id)
    assert proxy.cut_on is None  # the cut happened
    assert stored() == [(0, TrialState.RUNNING)] and first == storage.get_all_trials(study._study_id)[0]._trial_id

    # back at once: Optuna's own retry makes a second trial; the copy is failed, not left RUNNING forever
    cut_commit(0)
    second = storage.create_new_trial(study._study_id)
    states = stored()
    assert states[0] == (0, TrialState.RUNNING) and len(states) == 3, states
    assert sorted(s for _, s in states[1:]) == [TrialState.RUNNING, TrialState.FAIL], states
    assert storage.get_trial(second).state == TrialState.RUNNING

    # finishing a trial: the retry finds it finished by its own first try
    cut_commit(0)
    storage.set_trial_state_values(first, TrialState.COMPLETE, [0.5, 1.0])
    assert proxy.cut_on is None
    trial = optuna.load_study(study_name="s", storage=direct(database)).trials[0]
    assert trial.state == TrialState.COMPLETE and trial.values == [0.5, 1.0]


def test_a_live_trial_another_worker_failed_ends_without_an_error(database, capsys):
    # what a worker sees when one that missed the outage took its trial's old heartbeat for a dead worker's
    storage = open_storage(direct(database), heartbeat_interval=1, grace_period=3, outage_s=60)
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    other = optuna.storages.RDBStorage(direct(database))

    def objective(trial):
        trial.storage.set_trial_intermediate_value(trial._trial_id, 1, 0.5)
        other.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        trial.storage.set_trial_intermediate_value(trial._trial_id, 2, 0.6)
        return 0.6, 1.0

    study.optimize(objective, n_trials=1)
    trial = optuna.load_study(study_name="s", storage=direct(database)).trials[0]
    assert trial.state == TrialState.FAIL and trial.intermediate_values == {1: 0.5}
    assert "was marked failed by another worker" in capsys.readouterr().err


def test_a_trial_whose_result_waits_out_the_outage_is_not_taken_for_dead(database, proxy, monkeypatch):
    # Worker B's trial ended during the outage: its heartbeat thread has stopped and its final write waits in the
    # retry backoff (up to MAX_DELAY_S between tries). Worker A comes back first and must not take B's old
    # heartbeat for a dead worker's before B's next try (seen in CI: the trial was failed and trained again)
    monkeypatch.setattr("search.study.outage.random.uniform", lambda a, b: b)  # no jitter: B's tries come late
    a = open_storage(proxy.url(database), heartbeat_interval=1, grace_period=3, outage_s=120)
    b = open_storage(proxy.url(database) + "?application_name=b", heartbeat_interval=1, grace_period=3,
                     outage_s=120)  # another URL: an outage state of its own, as in another process
    study = optuna.create_study(study_name="s", storage=a, directions=["maximize", "minimize"])
    a_trial, b_trial = a.create_new_trial(study._study_id), b.create_new_trial(study._study_id)
    b.record_heartbeat(b_trial)
    proxy.down()
    told = threading.Thread(target=b.set_trial_state_values, args=(b_trial, TrialState.COMPLETE, [0.5, 1.0]))
    told.start()  # tries at +0.25, 0.75, 1.75, 3.75, 7.75, 12.75, 17.75, 22.75 s: 4.75 s after the server is back
    for _ in range(18):  # A's heartbeat thread: A sees the outage
        a.record_heartbeat(a_trial)
        time.sleep(1)
    proxy.up()
    stale = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # A beats its own trial and looks for dead workers' trials, often
        a.record_heartbeat(a_trial)
        stale += a._get_stale_trial_ids(study._study_id)
        time.sleep(0.2)
    told.join(timeout=30)
    assert not stale
    trial = optuna.load_study(study_name="s", storage=direct(database)).trials[b_trial - a_trial]
    assert trial.state == TrialState.COMPLETE and trial.values == [0.5, 1.0]


def test_a_lock_is_taken_across_an_outage_and_released_after_its_session_died(database, proxy):
    url = proxy.url(database)
    open_storage(url, outage_s=30)  # the outage limit for this URL's locks
    proxy.down()
    threading.Timer(2.0, proxy.up).start()
    t0 = time.monotonic()
    lock = study_lock(url, "x")
    lock.acquire()  # waits for the server
    assert time.monotonic() - t0 >= 2.0
    proxy.down()  # the session holding it dies: the server released it
    proxy.up()
    other = study_lock(direct(database), "x")
    other.acquire()  # free, then
    other.release()
    lock.release()  # nothing to release, and no error


# -- workers: real processes -------------------------------------------------------------------------------------

SPACE = """\
params:
  arch: {value: resnet20}
  width: {value: 0.25}
  groups: {choices: [1, 2]}
  lr: {low: 0.02, high: 0.1, log: true}
"""


def write_study(tmp_path, n_trials, epochs, outage_s, size=256):
    (tmp_path / "space.yaml").write_text(SPACE)
    path = tmp_path / "outage.yaml"
    path.write_text(f"""\
name: outage
space: {tmp_path / 'space.yaml'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: synthetic, synthetic_size: {size}}}
sampler: {{name: random, seed: 0}}
train: {{epochs: {epochs}, batch_size: 32}}
stopper: {{name: none, skip_dominated: false}}
heartbeat: {{interval: 1, grace_period: 3}}
checkpoint_min_seconds: 0
n_trials: {n_trials}
storage_outage_s: {outage_s}
""")
    return path


STARTED = []


@pytest.fixture(autouse=True)
def no_stray_workers():
    yield
    while STARTED:
        p = STARTED.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


def worker_env(storage, tmp_path):
    return {**os.environ, "MICRONET_STORAGE": storage, "MICRONET_THREADS": "1", "OMP_NUM_THREADS": "1",
            "MICRONET_CACHE": str(tmp_path / "cache")}


def start(tmp_path, storage, *args):
    p = subprocess.Popen([sys.executable, "-m", "search", *args], env=worker_env(storage, tmp_path), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    STARTED.append(p)
    return p


def trials_of(database):
    try:
        return optuna.load_study(study_name="outage", storage=direct(database)).get_trials()
    except KeyError:
        return []


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_with_two_workers_rides_out_a_15_second_outage(database, proxy, tmp_path):
    study_file = write_study(tmp_path, n_trials=4, epochs=5, outage_s=120)
    run = start(tmp_path, proxy.url(database), "run", str(study_file), "--workers", "2")

    def training():  # both workers in the middle of a trial
        running = [t for t in trials_of(database) if t.state == TrialState.RUNNING and t.intermediate_values]
        return running if len(running) == 2 else None

    caught = wait_until(training, 180, "two trials in training")
    proxy.down()
    down_at = time.monotonic()
    time.sleep(15)
    proxy.up()
    up_at = time.monotonic()
    out, _ = run.communicate(timeout=240)
    logs = [(tmp_path / "studies" / "logs" / "outage" / f"worker-{i}.log").read_text() for i in range(2)]
    assert run.returncode == 0, (out, logs)
    assert "Pareto front of outage" in out
    log = "\n".join(logs)
    assert "Traceback" not in out + log, (out, logs)
    assert all("unreachable" in w and "back after" in w for w in logs), logs

    trials = trials_of(database)
    assert len(trials) == 4 and all(t.state in FINISHED for t in trials), ([(t.number, t.state) for t in trials], logs)
    for t in trials:  # every epoch's report arrived, those trained during the outage too
        assert set(t.intermediate_values) == set(range(1, t.user_attrs["epochs_run"] + 1)), t.intermediate_values
    for c in caught:  # the trials running when the storage went away finished in the same run
        assert trials[c.number].state == TrialState.COMPLETE
    delivered = [int(n) for n in re.findall(r"delivered (\d+) buffered write", log)]
    assert delivered and sum(delivered) > 0, log
    print(f"outage {up_at - down_at:.1f} s; buffered writes delivered: {delivered}; "
          f"caught running: {[(c.number, len(c.intermediate_values)) for c in caught]}")


def test_an_outage_past_the_limit_stops_the_worker_and_the_next_start_finishes(database, proxy, tmp_path):
    study_file = write_study(tmp_path, n_trials=2, epochs=5, outage_s=5)
    worker = start(tmp_path, proxy.url(database), "worker", str(study_file))

    def checkpointed():
        for t in trials_of(database):
            if t.state == TrialState.RUNNING and (t.user_attrs.get("resume") or {}).get("epoch", 0) >= 1:
                return t
        return None

    stopped = wait_until(checkpointed, 180, "a running trial with a checkpoint")
    proxy.down()
    t0 = time.monotonic()
    out, _ = worker.communicate(timeout=120)
    took = time.monotonic() - t0
    assert worker.returncode == EXIT_CODE, out
    assert "Traceback" not in out, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("micronet-search: error: storage ") and "longer than storage_outage_s (5 s)" in last, out
    assert "re-queued" in last, last
    assert 5 <= took < 60, took
    named = trials_of(database)[stopped.number]
    assert named.state == TrialState.RUNNING  # it could tell nobody
    # the worker may have stored one more checkpoint between the snapshot above and the proxy going down:
    # the checkpoint to resume from is the one the storage names now, after the outage
    named_epoch = named.user_attrs["resume"]["epoch"]
    assert named_epoch >= stopped.user_attrs["resume"]["epoch"]
    proxy.up()

    again = start(tmp_path, proxy.url(database), "worker", str(study_file))
    out2, _ = again.communicate(timeout=240)
    assert again.returncode == 0, out2
    trials = trials_of(database)
    assert trials[stopped.number].state == TrialState.FAIL  # stale: failed and re-queued by the next start
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == stopped.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    # it resumes from the checkpoint the storage names: the ones written during the outage did not replace it
    assert retry[0].params == stopped.params
    assert retry[0].user_attrs.get("resumed_from_epoch") == named_epoch, retry[0].user_attrs
    assert len([t for t in trials if t.state in FINISHED]) == 2
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    print(f"worker stopped {took:.1f} s after the storage went away")
