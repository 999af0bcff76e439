"""Workers on one machine share its cores without being told (``search.study.threads``)."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from search.machine import available_cores
from search.study.threads import FairThreads, HostWorkers

HOLD = """
import sys, time
from pathlib import Path
from search.study.threads import HostWorkers
with HostWorkers(Path(sys.argv[1])):
    print("registered", flush=True)
    time.sleep(600)
"""


def hold(folder, n):
    """``n`` real processes, each registered as a worker in ``folder`` until killed."""
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    for p in procs:
        assert p.stdout.readline().strip() == "registered"
    return procs


def kill(procs):
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()


def test_live_workers_are_counted_and_killed_ones_drop_out(tmp_path):
    procs = hold(tmp_path, 3)
    try:
        with HostWorkers(tmp_path) as me:
            assert me.live() == 4
            assert FairThreads(me, cores=8).share() == 2
            assert FairThreads(me, cores=8, fixed=3).share() == 3
            kill(procs[:2])  # SIGKILL: no clean-up ran, the lock went with the process
            assert me.live() == 2
            assert FairThreads(me, cores=8).share() == 4
            assert len(list(tmp_path.glob("*.worker"))) == 2  # the dead workers' files were removed
        assert not list(tmp_path.glob("*.worker")) or HostWorkers(tmp_path).live() == 1
    finally:
        kill(procs)


def test_share_is_at_least_one_thread(tmp_path):
    procs = hold(tmp_path, 3)
    try:
        with HostWorkers(tmp_path) as me:
            assert FairThreads(me, cores=2).share() == 1
    finally:
        kill(procs)


SPACE = """\
params:
  arch: {value: resnet20}
  width: {value: 0.25}
  ps: {low: 0.0, high: 0.5}
  lr: {low: 0.02, high: 0.1, log: true}
"""


@pytest.mark.skipif(available_cores() < 2, reason="needs 2 cores to tell a shared core count from the default")
def test_a_hand_started_worker_takes_its_share_and_more_when_the_others_leave(tmp_path):
    cores = available_cores()
    (tmp_path / "space.yaml").write_text(SPACE)
    study_file = tmp_path / "threads.yaml"
    study_file.write_text(f"""\
name: threads
space: {tmp_path / 'space.yaml'}
storage: sqlite:///{tmp_path / 'study.db'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: synthetic, synthetic_size: 64}}
sampler: {{name: random, seed: 0}}
train: {{epochs: 1, batch_size: 32}}
stopper: {{name: none}}
checkpoint_every: 0
n_trials: 6
""")
    registry = tmp_path / "workers"
    others = hold(registry, cores)  # the host already runs `cores` workers: this one's share is 1 thread
    env = {k: v for k, v in os.environ.items() if k not in ("MICRONET_THREADS", "MICRONET_STORAGE")}
    env.update(MICRONET_WORKER_DIR=str(registry), OMP_NUM_THREADS="")
    worker = subprocess.Popen([sys.executable, "-m", "search", "worker", str(study_file)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def completed():
        try:
            return optuna.load_study(study_name="threads", storage=storage).get_trials(states=(TrialState.COMPLETE,))
        except KeyError:
            return []

    try:
        deadline = time.monotonic() + 300
        while len(completed()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        kill(others)  # they leave: from the next trial on, this worker has the host to itself
        out, _ = worker.communicate(timeout=300)
    finally:
        kill(others)
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, out
    threads = [t.user_attrs["threads"] for t in sorted(completed(), key=lambda t: t.number)]
    assert threads[:2] == [1, 1], (threads, out)
    assert threads[-1] == cores, (threads, out)
    assert f"1 torch thread(s): {cores} cores shared by the workers on this host" in out


@pytest.mark.parametrize("flag, env, needle", [
    (["--threads", "0"], {}, "--threads must be an integer >= 1, got 0"),
    ([], {"MICRONET_THREADS": "many"}, "MICRONET_THREADS must be an integer >= 1 or 'auto', got 'many'"),
])
def test_bad_thread_counts_are_one_line(tmp_path, flag, env, needle):
    (tmp_path / "space.yaml").write_text(SPACE)
    study_file = tmp_path / "t.yaml"
    study_file.write_text(f"name: t\nspace: {tmp_path / 'space.yaml'}\nstorage: sqlite:///{tmp_path / 'db.db'}\n")
    r = subprocess.run([sys.executable, "-m", "search", "worker", str(study_file), *flag],
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "db.db").exists()


def test_workers_pinned_to_other_cores_do_not_count(tmp_path):
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores and CPU affinity (Linux)")
    cpus = sorted(os.sched_getaffinity(0))
    pinned = HOLD.replace("import sys, time", f"import os, sys, time\nos.sched_setaffinity(0, {{{cpus[0]}}})")
    other = subprocess.Popen([sys.executable, "-c", pinned, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "registered"
        with HostWorkers(tmp_path) as me:
            assert me.live() == 2  # this process may run on every core, the pinned one's included
            me.cpus = set(cpus[1:])  # as if this worker were pinned to the other cores
            assert me.live() == 1
    finally:
        kill([other])
