"""``micronet-search dashboard``: optuna-dashboard on a real finished study, checked in a real headless Chromium."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from tiny import write_tiny_study

from search.cli import main
from search.study.runner import run_study
from search.study.study_file import load_study_file

CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium package (no PyPI package ships a browser that runs here)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "test-artifacts"

SPACE = """\
params:
  arch: {value: resnet20}
  width: {value: 0.25}
  groups: {choices: [1, 2]}
  ps: {low: 0.0, high: 0.6}
  pu: {low: 0.0, high: 0.3}
  qw: {choices: [8, 32]}
  lr: {low: 0.05, high: 0.2, log: true}
"""


def finished_study(tmp_path, n_trials=4) -> tuple[optuna.Study, str]:
    """A real tiny study (digits, ResNet20 at width 0.25, 2 epochs) with checkpoints in tmp_path/artifacts."""
    path = write_tiny_study(tmp_path, space=SPACE, n_trials=n_trials)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is as fast, and far faster when another process holds a core
    try:
        return run_study(load_study_file(path)), f"sqlite:///{tmp_path / 'tiny.db'}"
    finally:
        torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the dashboard exited with {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"the dashboard did not answer on {url} within {timeout:.0f} s: {log.read_text()}")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


@pytest.mark.needs("chromium")  # tests/conftest.py: skips without it, fails under CI=true
def test_dashboard_shows_the_front_and_checkpoints_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    study, storage = finished_study(tmp_path)
    complete = sorted(t.number for t in study.get_trials(states=(TrialState.COMPLETE,)))
    front = sorted(t.number for t in study.best_trials)
    assert complete and front

    port = free_port()
    log = tmp_path / "dashboard.log"
    with open(log, "w") as out:
        # no --artifacts: the store comes from the study's artifact_dir attribute
        proc = subprocess.Popen([sys.executable, "-m", "search", "dashboard", "--storage", storage,
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/api/meta", proc, log)
        assert get_json(f"{base}/api/meta")["artifact_is_available"]
        sid = study._study_id
        detail = get_json(f"{base}/api/studies/{sid}")
        for t in detail["trials"]:
            if t["state"] != "Complete":
                continue
            # each checkpoint is attached to its trial and downloads byte for byte
            attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
            artifact = next(a for a in t["artifacts"] if a["artifact_id"] == attrs["checkpoint_artifact_id"])
            assert artifact["filename"] == f"trial-{t['number']}.pt"
            with urllib.request.urlopen(f"{base}/artifacts/{sid}/{t['trial_id']}/{artifact['artifact_id']}") as r:
                assert r.read() == (tmp_path / "artifacts" / artifact["artifact_id"]).read_bytes()

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                errors = []
                page.on("pageerror", lambda e: errors.append(str(e)))

                # The study page: optuna-dashboard draws the front with plotly.js into #graph-pareto-front, one SVG
                # path.point per complete trial; its "Best Trial" trace holds the non-dominated ones.
                page.goto(f"{base}/dashboard/studies/{sid}")
                points = page.locator("#graph-pareto-front .scatterlayer .trace path.point")
                page.wait_for_function(
                    "n => document.querySelectorAll('#graph-pareto-front .scatterlayer .trace path.point').length"
                    " === n", arg=len(complete), timeout=30_000)
                assert points.count() == len(complete)
                traces = page.evaluate("""() => document.getElementById('graph-pareto-front').data.map(t => ({
                    label: t.hovertemplate,
                    numbers: (t.text || []).map(s => JSON.parse(s.replace(/<br>/g, '')).number)}))""")
                best = [t for t in traces if t["label"].endswith("<extra>Best Trial</extra>")]
                assert len(best) == 1 and sorted(best[0]["numbers"]) == front, traces
                assert sorted(n for t in traces for n in t["numbers"]) == complete
                SCREENSHOTS.mkdir(exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / "dashboard.png"))

                # A trial's page: the validation accuracy per epoch and the checkpoint artifact.
                number = front[0]
                page.goto(f"{base}/dashboard/studies/{sid}/trials?numbers={number}")
                page.get_by_text(f"Trial {number} (trial_id=").wait_for(timeout=30_000)
                page.get_by_text("Intermediate Values").first.wait_for()
                page.get_by_role("heading", name="Artifacts").wait_for()
                checkpoint = page.get_by_text(f"trial-{number}.pt", exact=True)
                checkpoint.wait_for()
                checkpoint.scroll_into_view_if_needed()
                page.screenshot(path=str(SCREENSHOTS / "dashboard-trial.png"))
                assert not errors, errors
            finally:
                browser.close()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = log.read_text()
    assert rc == 0, output
    assert f"{base}/dashboard/" in output and "dashboard stopped" in output and "Traceback" not in output
    assert str(tmp_path / "artifacts") in output


def _empty_db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.storages.RDBStorage(url)
    return url


def _two_folders(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'two.db'}"
    for name in ("a", "b"):
        optuna.create_study(study_name=name, storage=url).set_user_attr("artifact_dir", str(tmp_path / name))
    return url


@pytest.mark.parametrize("make_args,fragment", [
    (lambda tmp: ["--storage", f"sqlite:///{tmp / 'none.db'}"], "does not exist"),
    (lambda tmp: ["--storage", "postgresql+psycopg2://u:secret@127.0.0.1:1/x"], "its driver cannot be loaded"),
    (lambda tmp: ["--storage", "postgresql://u:secret@127.0.0.1:1/x"], "cannot open storage"),
    (lambda tmp: ["--storage", _empty_db(tmp)], "no study in"),
    (lambda tmp: ["--storage", _two_folders(tmp)], "choose one with --artifacts"),
    (lambda tmp: ["--storage", _two_folders(tmp), "--artifacts", str(tmp / "missing")], "no such folder"),
    (lambda tmp: ["--storage", _two_folders(tmp), "--colour", "red"], "unrecognized arguments: --colour"),
])
def test_bad_input_is_one_line(tmp_path, capsys, make_args, fragment):
    args = make_args(tmp_path)
    try:
        rc = main(["dashboard", *args])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err, err
    assert "secret" not in err and "Traceback" not in err
    assert not (tmp_path / "none.db").exists()  # nothing created


def test_port_in_use_is_one_line(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'one.db'}"
    optuna.create_study(study_name="one", storage=url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        rc = main(["dashboard", "--storage", url, "--port", str(s.getsockname()[1])])
    err = capsys.readouterr().err
    assert rc == 2 and "is in use" in err and len(err.strip().splitlines()) == 1, err

